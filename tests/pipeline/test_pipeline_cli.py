"""``cvdeploy pipeline run`` refusals that need no platform: they stop before deploying.

Each checks the exit code CI acts on (2 usage, 3 rejected) and that the message names the
problem; the platform-backed runs are in test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import make_external_weights_model, write_hostile_pickle
from typer.testing import CliRunner

from cvdeploy.cli.app import app
from cvdeploy.demo import CLASSIFIER, demo_file, eval_set
from cvdeploy.registry import Registry, RegistryNotFoundError

runner = CliRunner()
DIGITS_SET = str(eval_set("digits"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CVDEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CVDEPLOY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def _run(*args: str) -> tuple[int, str]:
    """Exit code and output; with ``--json`` the output is stdout alone (the JSON)."""
    result = runner.invoke(app, ["pipeline", "run", *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def _registered(home: Path) -> bool:
    try:
        Registry(home=home).versions("cv_model")
    except RegistryNotFoundError:
        return False
    return True


def test_a_pickle_file_is_refused_before_it_reaches_the_registry(home, tmp_path):
    hostile = write_hostile_pickle(tmp_path / "model.pt")
    code, output = _run("--model-file", str(hostile), "--eval-data", DIGITS_SET, "--json")
    assert code == 3
    result = json.loads(output)
    assert result["status"] == "rejected"
    assert any("pickle" in r for r in result["reasons"])
    assert not _registered(home)
    # The refusal is on record like any run: a report for CI and an MLflow run.
    assert (Path(result["report"]) / "report.md").is_file()
    run = Registry(home=home).client.get_run(result["run_id"])
    assert run.data.tags["cvdeploy.status"] == "rejected"


def test_an_onnx_whose_external_data_escapes_its_folder_is_refused(home, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "secret.bin"
    model = make_external_weights_model(folder, "../secret.bin", write_data_to=outside)
    code, output = _run("--model-file", str(model), "--eval-data", DIGITS_SET, "--json")
    assert code == 3
    result = json.loads(output)
    assert any("external_data" in r or "outside" in r for r in result["reasons"]), result
    assert not _registered(home)


def test_an_unknown_threshold_name_is_a_usage_error_listing_the_valid_names(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
    code, output = _run("--threshold", "mAP_typo=0.5")
    assert code == 2
    assert "valid names: accuracy, precision, recall, f1" in output


def test_a_malformed_threshold_is_a_usage_error(home):
    code, output = _run("--threshold", "accuracy=high")
    assert code == 2
    assert "METRIC=NUMBER" in output


def test_missing_evaluation_data_is_a_clear_error_before_any_stage_runs(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model")
    code, output = _run()
    assert code == 2
    assert "no evaluation data for cv_model version 1" in output
    assert "security" not in output


def test_malformed_labels_name_the_file_and_line(home, tmp_path):
    data = tmp_path / "shapes"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    source = eval_set("shapes").parent
    image = next((source / "images" / "val").glob("*.jpg"))
    (data / "images" / image.name).write_bytes(image.read_bytes())
    (data / "labels" / f"{image.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 oops 0.2 0.2\n")
    (data / "data.yaml").write_text("path: .\nval: images\nnames: [circle, square, triangle]\n")
    Registry(home=home).register(demo_file("shapes_detector.onnx"), "shapes")
    code, output = _run("--model", "shapes", "--eval-data", str(data))
    assert code == 2
    assert f"{image.stem}.txt:2" in output.replace("\n", "")


def test_a_bad_endpoint_name_is_a_usage_error_before_any_stage(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
    code, output = _run("--endpoint", "bad name!")
    assert code == 2
    assert "endpoint name 'bad name!' is not valid" in output
    assert "security" not in output


def test_a_missing_model_file_is_a_usage_error(home, tmp_path):
    code, output = _run("--model-file", str(tmp_path / "nothing.onnx"), "--eval-data", DIGITS_SET)
    assert code == 2
    assert "model file not found" in output


def test_a_model_file_without_evaluation_data_is_not_registered(home):
    code, output = _run("--model-file", str(demo_file(CLASSIFIER)))
    assert code == 2
    assert "no evaluation data for a new version" in output
    assert not _registered(home)


def test_a_threshold_above_one_is_refused_for_every_metric(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
    code, output = _run("--threshold", "f1_weighted=90")
    assert code == 2
    assert "fraction" in output


def test_the_same_file_submitted_twice_is_registered_once(home):
    from cvdeploy import DeploymentPipeline

    pipeline = DeploymentPipeline(
        None, None, "cv_model", "submit-test", eval_data=eval_set("digits")
    )
    first, _ = pipeline.submit(demo_file(CLASSIFIER))
    second, stage = pipeline.submit(demo_file(CLASSIFIER))
    assert first == second == "1"
    assert stage.passed
    registry = Registry(home=home)
    assert [v.version for v in registry.versions("cv_model")] == ["1"]
    assert registry.get_version("cv_model", "candidate").version == "1"
    assert registry.versions("cv_model")[0].aliases == ["candidate"]


def test_a_rollout_window_under_a_minute_is_refused_on_databricks(home, tmp_path):
    from cvdeploy import Config, DeploymentPipeline
    from cvdeploy.errors import ConfigError

    config = Config(
        deployment__ci_cd__rollout__window_s=10, deployment__ci_cd__rollout__step_timeout_s=30
    )
    pipeline = DeploymentPipeline(
        "http://127.0.0.1:9",
        "dapi-test",
        "cv_model",
        "window-test",
        config=config,
        platform="databricks",
        registry_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    with pytest.raises(ConfigError, match="Databricks reports endpoint figures per minute"):
        pipeline.run_pipeline({"accuracy": 0.9})
