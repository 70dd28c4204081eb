"""The cvdeploy command line, in-process (Typer's runner) and as a real subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import model_factory
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from typer.testing import CliRunner

from cvdeploy import __version__
from cvdeploy.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    return model_factory.make_classifier_model(
        folder / "colors.onnx",
        num_classes=3,
        metadata={"task": "classify", "names": "{0: 'red', 1: 'green', 2: 'blue'}"},
    )


@pytest.fixture(scope="module")
def red_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[..., 0] = 255
    Image.fromarray(image).save(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_predict_prints_json(classifier, red_png):
    args = ["predict", str(classifier), str(red_png), "--json", "--top-k", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload[0]["classes"][0]["label"] == "red"
    assert payload[0]["image"] == str(red_png)


def test_predict_prints_a_table(classifier, red_png):
    result = runner.invoke(app, ["predict", str(classifier), str(red_png)])
    assert result.exit_code == 0
    assert "red" in result.output


def test_predict_with_a_missing_model_is_a_clear_error(tmp_path, red_png):
    result = runner.invoke(app, ["predict", str(tmp_path / "nope.onnx"), str(red_png)])
    assert result.exit_code == 2
    assert "model file not found" in result.output


def test_predict_on_a_corrupt_model_names_the_file(tmp_path, red_png):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x01garbage that is not a protobuf")
    result = runner.invoke(app, ["predict", str(bad), str(red_png)])
    assert result.exit_code == 2
    assert "corrupt.onnx" in result.output


def test_serve_with_an_invalid_config_names_the_key(tmp_path, classifier):
    config = tmp_path / "cvdeploy.yaml"
    config.write_text("deployment:\n  server:\n    prot: 9000\n")
    result = runner.invoke(app, ["serve", str(classifier), "--config", str(config)])
    assert result.exit_code == 2
    assert "did you mean 'port'" in result.output


@pytest.mark.slow
def test_serve_subprocess_answers_and_drains_on_sigterm(classifier, red_png):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cvdeploy.cli", "serve", str(classifier), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CVDEPLOY_CONFIG": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        response = httpx.post(
            f"{url}/v1/models/colors/predict",
            content=red_png.read_bytes(),
            headers={"content-type": "image/png", "x-request-id": "cli-test-1"},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "cli-test-1"
        # The official Triton client and an MLflow-format request against the same process.
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([red_png.read_bytes()], dtype=object))
        assert client.infer("colors", [tensor]).as_numpy("labels")[0][0] == b"red"
        client.close()
        body = {"instances": [base64.b64encode(red_png.read_bytes()).decode()]}
        mlflow = httpx.post(f"{url}/invocations", json=body).json()
        assert mlflow["predictions"][0]["classes"][0]["label"] == "red"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status says "SIGTERM".
    assert process.returncode in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("logger") == "cvdeploy.access"]
    assert any(r["request_id"] == "cli-test-1" and r["status"] == 200 for r in access)
    assert not any("traceback" in r for r in records)
    assert any("shutdown complete" in r["message"] for r in records)


@pytest.mark.slow
def test_demo_serves_the_bundled_models_and_prints_results():
    result = subprocess.run(
        [sys.executable, "-m", "cvdeploy.cli", "demo", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert "10/10 digits classified correctly" in result.stdout
    assert "shapes_1.jpg" in result.stdout
    assert "detection(s)" in result.stdout


@pytest.mark.slow
def test_serve_with_a_config_file_and_a_bad_model_exits_with_the_reason(tmp_path):
    (tmp_path / "cvdeploy.yaml").write_text("deployment:\n  server:\n    workers: 1\n")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file at all")
    result = subprocess.run(
        [sys.executable, "-m", "cvdeploy.cli", "serve", str(bad), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "broken.onnx" in result.stderr


def test_serve_settings_from_a_config_file_keep_model_defaults(tmp_path, classifier):
    from cvdeploy.cli.settings import settings_for_serve

    config = tmp_path / "cvdeploy.yaml"
    config.write_text("deployment:\n  server:\n    workers: 1\n    port: 9123\n")
    settings, host, port = settings_for_serve(
        classifier,
        task=None,
        name=None,
        host=None,
        port=None,
        workers=None,
        config_path=config,
        max_batch_size=None,
        max_queue_delay_ms=None,
        batching_enabled=None,
        timeout=None,
        cache_size=None,
        token=None,
    )
    assert (host, port) == ("0.0.0.0", 9123)
    from cvdeploy.serving.engine import InferenceEngine

    InferenceEngine(settings).load()  # the config's unset normalization must not break loading


def test_brackets_in_a_path_are_printed_not_parsed_as_markup(tmp_path, red_png):
    result = runner.invoke(app, ["predict", str(tmp_path / "x[/b].onnx"), str(red_png)])
    assert result.exit_code == 2
    assert "x[/b].onnx" in result.output
