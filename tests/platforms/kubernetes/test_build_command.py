"""``cvdeploy build`` on the command line: a file or a registry version in, a context out."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from kubernetes_support import DIGITS, load_yaml, validate_k8s, validate_kserve
from typer.testing import CliRunner

from cvdeploy.cli.build import build
from cvdeploy.registry import Registry

# The lead registers the command in cvdeploy/cli/app.py; until then a one-command app runs it.
app = typer.Typer()
app.command()(build)
app.command("version")(lambda: None)  # two commands, so Typer keeps `build` as a subcommand
runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["build", *args])
    # Rich wraps long lines at the terminal width; the tests read words, not layout.
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_build_a_file_writes_the_context(tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    code, stdout, _ = _run(str(DIGITS), "--out", str(out), "--image", "reg.example/digits:1.0")
    assert code == 0, stdout
    assert "docker build -t reg.example/digits:1.0" in stdout
    for relative in ("Dockerfile", "requirements.txt", "k8s/deployment.yaml", "k8s/hpa.yaml"):
        assert (out / relative).is_file(), relative
    deployment = load_yaml(out / "k8s" / "deployment.yaml")
    validate_k8s(deployment)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "reg.example/digits:1.0"
    )


def test_build_a_registry_version(tmp_path: Path, platform_home: Path) -> None:
    out = tmp_path / "ctx"
    config = tmp_path / "cvdeploy.yaml"
    config.write_text(yaml.safe_dump({"deployment": {"scaling": {"max_replicas": 3}}}))
    code, stdout, stderr = _run(
        "registry:cv_model/2", "--config", str(config), "--out", str(out), "--canary-percent", "20"
    )
    assert code == 0, stdout + stderr
    expected = Registry(home=platform_home).model_path("cv_model", "2")
    baked = out / "model" / expected.name
    assert baked.read_bytes() == expected.read_bytes()
    isvc = load_yaml(out / "kserve" / "inferenceservice.yaml")
    validate_kserve(isvc)
    assert isvc["metadata"]["name"] == "cv-model"
    assert isvc["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert isvc["spec"]["predictor"]["maxReplicas"] == 3
    args = isvc["spec"]["predictor"]["containers"][0]["args"]
    assert args[:4] == ["serve", f"/models/cv_model/{expected.name}", "--name", "cv_model"]


def test_an_unknown_registry_version_is_a_clear_error(tmp_path: Path, platform_home: Path) -> None:
    code, _, stderr = _run("registry:cv_model/99", "--out", str(tmp_path / "ctx"))
    assert code == 2
    assert "99" in stderr
    assert not (tmp_path / "ctx").exists()


def test_a_registry_reference_without_version_is_refused(tmp_path: Path) -> None:
    code, _, stderr = _run("registry:cv_model", "--out", str(tmp_path / "ctx"))
    assert code == 2
    assert "registry:NAME/VERSION" in stderr


def test_no_model_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = _run("--out", str(tmp_path / "ctx"))
    assert code == 2
    assert "give MODEL" in stderr
    code, _, stderr = _run(str(DIGITS), "--endpoint", "shop", "--out", str(tmp_path / "ctx"))
    assert code == 2
    assert "not both" in stderr


def test_gpu_instance_prints_a_note(tmp_path: Path) -> None:
    config = tmp_path / "cvdeploy.yaml"
    config.write_text(yaml.safe_dump({"deployment": {"endpoint": {"instance_type": "gpu-1"}}}))
    code, _, stderr = _run(str(DIGITS), "--config", str(config), "--out", str(tmp_path / "o"))
    assert code == 0
    assert "note:" in stderr
    assert "onnxruntime-gpu" in stderr
