"""The Dockerfile and build context: pinned, non-root, baked or mounted, deterministic."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_support import DIGITS, build

from cvdeploy.cli.settings import settings_for_serve
from cvdeploy.errors import ConfigError, ModelLoadError, NotAvailableError
from cvdeploy.platforms.kubernetes.dockerfile import healthcheck_command
from cvdeploy.serving.app import create_app


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    found = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, rest.strip()))
    return found


def _json_instruction(dockerfile: str, keyword: str) -> list[str]:
    (value,) = [rest for kw, rest in _instructions(dockerfile) if kw == keyword]
    if keyword == "HEALTHCHECK":
        value = value.split(" CMD ", 1)[1]
    parsed: list[str] = json.loads(value)
    return parsed


def test_dockerfile_is_slim_pinned_and_non_root(tmp_path: Path) -> None:
    out = build(tmp_path).out
    steps = _instructions((out / "Dockerfile").read_text())
    keywords = [kw for kw, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [rest for kw, rest in steps if kw == "RUN"]
    assert any("pip install --no-cache-dir -r /tmp/requirements.txt" in r for r in runs)
    assert all("--no-cache-dir" in r for r in runs if "pip install" in r)
    # Everything that needs root happens before USER; the server runs as uid 10001.
    assert ("USER", "10001") in steps
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")
    assert ("EXPOSE", "8000") in steps
    assert ("COPY", "--chown=root:root model/ /models/digits_classifier/") in steps


def test_requirements_pin_the_installed_runtime_closure(tmp_path: Path) -> None:
    lines = [
        line
        for line in (build(tmp_path).out / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines), "every line is name==version"
    # Direct dependencies and a transitive one, at the versions installed here.
    for name in ("onnxruntime", "fastapi", "uvicorn", "pydantic", "starlette"):
        key = next(k for k in pins if k.lower() == name)
        assert pins[key] == metadata.version(name)
    assert "uvloop" in pins  # uvicorn[standard]'s extra is followed
    assert "cvdeploy" not in {k.lower() for k in pins}
    assert "pytest" not in {k.lower() for k in pins}  # dev extras are not runtime
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert names == sorted(names)


def test_cmd_serves_the_baked_model_on_the_config_port(tmp_path: Path) -> None:
    config = {"deployment": {"server": {"port": 8500, "workers": 3}}}
    dockerfile = (build(tmp_path, config).out / "Dockerfile").read_text()
    assert _json_instruction(dockerfile, "CMD") == [
        "cvdeploy",
        "serve",
        "/models/digits_classifier/digits_classifier.onnx",
        "--name",
        "digits_classifier",
        "--config",
        "/etc/cvdeploy/cvdeploy.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        "8500",
        "--workers",
        "3",
    ]
    assert ("EXPOSE", "8500") in _instructions(dockerfile)
    health = _json_instruction(dockerfile, "HEALTHCHECK")
    assert health[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8500/v2/health/ready" in health[2]


def test_environment_and_resource_labels_come_from_the_config(tmp_path: Path) -> None:
    config = {"deployment": {"endpoint": {"instance_type": "cpu-8"}, "server": {"workers": 2}}}
    dockerfile = (build(tmp_path, config).out / "Dockerfile").read_text()
    assert 'CVDEPLOY_DEPLOYMENT__SERVER__INTRA_OP_THREADS="4"' in dockerfile
    assert 'OMP_NUM_THREADS="4"' in dockerfile
    assert 'io.cvdeploy.resources.cpu="8"' in dockerfile
    assert 'io.cvdeploy.resources.memory="16384Mi"' in dockerfile
    assert 'CVDEPLOY_HOME="/tmp/cvdeploy"' in dockerfile


def test_mount_mode_bakes_no_model(tmp_path: Path) -> None:
    out = build(tmp_path, bake=False).out
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY --chown=root:root model/" not in dockerfile
    assert "mkdir -p /models/digits_classifier" in dockerfile
    assert not (out / "model").exists()


def test_a_wheel_is_copied_and_installed_without_deps(tmp_path: Path) -> None:
    wheel = tmp_path / "cvdeploy-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel; only copied here")
    out = build(tmp_path, wheel=wheel).out
    dockerfile = (out / "Dockerfile").read_text()
    assert f"COPY wheels/{wheel.name} /tmp/wheels/{wheel.name}" in dockerfile
    assert f"pip install --no-cache-dir --no-deps /tmp/wheels/{wheel.name}" in (dockerfile)
    assert (out / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()


def test_building_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = build(tmp_path / "a").out
    second = build(tmp_path / "b").out
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_a_rebuild_replaces_a_stale_model(tmp_path: Path) -> None:
    build(tmp_path)
    out = build(tmp_path, model=DIGITS.parent / "shapes_detector.onnx").out
    assert sorted(p.name for p in (out / "model").iterdir()) == ["shapes_detector.onnx"]


def test_a_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by cvdeploy build"):
        build(tmp_path)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_missing_or_non_onnx_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        build(tmp_path, model=tmp_path / "nope.onnx")
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not an ONNX file"):
        build(tmp_path, model=other)


def test_host_paths_and_secrets_are_rewritten_for_the_image(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)) + "\n")
    config = {
        "model": {"weights_path": str(DIGITS), "labels": str(labels)},
        "deployment": {"monitoring": {"payload_log": {"path": str(tmp_path / "p.db")}}},
    }
    result = build(tmp_path, config)
    baked = yaml.safe_load((result.out / "config" / "cvdeploy.yaml").read_text())
    assert "weights_path" not in baked["model"]
    assert baked["model"]["labels"] == "/etc/cvdeploy/labels.txt"
    assert (result.out / "config" / "labels.txt").read_text() == labels.read_text()
    assert baked["deployment"]["monitoring"]["payload_log"]["path"] is None
    assert any("payload_log.path" in note for note in result.notes)
    assert "COPY config/labels.txt /etc/cvdeploy/labels.txt" in (
        (result.out / "Dockerfile").read_text()
    )


def test_the_baked_config_and_cmd_serve_the_probe_routes(tmp_path: Path) -> None:
    """The CMD's arguments, read the way `cvdeploy serve` reads them, give a server whose
    readiness and liveness routes (the probes and the HEALTHCHECK) answer 200."""
    out = build(tmp_path, {"deployment": {"server": {"workers": 1}}}).out
    cmd = _json_instruction((out / "Dockerfile").read_text(), "CMD")
    args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    settings, host, port = settings_for_serve(
        out / "model" / Path(cmd[2]).name,
        task=None,
        name=args["--name"],
        host=args["--host"],
        port=int(args["--port"]),
        workers=int(args["--workers"]),
        config_path=out / "config" / "cvdeploy.yaml",
        max_batch_size=None,
        max_queue_delay_ms=None,
        batching_enabled=None,
        timeout=None,
        cache_size=None,
        token=None,
    )
    assert (host, port) == ("0.0.0.0", 8000)
    assert settings.model_name == "digits_classifier"
    app = create_app(settings, access_log=False, load_in_background=False)

    async def probe() -> dict[str, int]:
        # The app's own lifespan loads and warms the model, as uvicorn would run it.
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
                paths = [
                    "/v2/health/ready",
                    "/v2/health/live",
                    "/v2/models/digits_classifier/ready",
                ]
                return {path: (await client.get(path)).status_code for path in paths}

    assert asyncio.run(probe()) == {
        "/v2/health/ready": 200,
        "/v2/health/live": 200,
        "/v2/models/digits_classifier/ready": 200,
    }


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        command = healthcheck_command(port)
        command[0] = sys.executable
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert done.returncode != 0


def test_a_model_with_external_data_is_refused(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        initializer=[weight],
    )
    path = tmp_path / "split.onnx"
    onnx.save(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        location="split.onnx.data",
        size_threshold=0,
    )
    with pytest.raises(NotAvailableError, match="external data"):
        build(tmp_path, model=path)


def test_a_corrupt_onnx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        build(tmp_path, model=path)
