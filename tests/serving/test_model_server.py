"""ModelServer as the seeds use it: file mode over HTTP and in-process predict."""

from __future__ import annotations

import textwrap
import time

import httpx
import numpy as np
import pytest
from conftest import encode, solid
from PIL import Image

from cvdeploy import (
    ClassificationResult,
    Config,
    ConfigError,
    DetectionResult,
    InputError,
    ModelLoadError,
    ModelServer,
)


def test_seed_000_model_deployment_snippet_runs_as_written(tmp_path, monkeypatch, detector_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deployment_config.yaml").write_text(
        textwrap.dedent(
            f"""
            model:
              weights_path: {detector_path}
              model_type: yolo
            deployment:
              server:
                host: "127.0.0.1"
                port: 0
                workers: 1
                timeout: 60
              monitoring:
                metrics_interval: 60
                alert_thresholds:
                  cpu: 80
                  memory: 80
                  latency: 1000
              scaling:
                min_replicas: 1
                max_replicas: 10
                target_cpu: 70
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    image_tensor = solid((0, 0, 0), size=(64, 64))

    # --- the seed's snippet, with only the import changed ---
    config = Config()
    server = ModelServer(
        model_type="yolo",
        model_path=config.get_model_config()["weights_path"],
        **config.get_deployment_config(),
    )
    server.start()
    response = server.predict(image_tensor)
    # ---
    try:
        assert isinstance(response, DetectionResult)
        assert response.labels == ["circle", "triangle"]
        assert response.boxes.shape == (2, 4)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    finally:
        server.stop()


def test_seed_config_with_four_workers_is_accepted(tmp_path, detector_path):
    config = Config(
        deployment={"server": {"host": "0.0.0.0", "port": 8000, "workers": 4, "timeout": 60}}
    )
    server = ModelServer("yolo", detector_path, **config.get_deployment_config())
    assert server.workers == 4
    assert server.url == "http://127.0.0.1:8000"


def test_predict_accepts_every_input_kind(tmp_path, classifier_path):
    server = ModelServer("classification", classifier_path)
    red = solid((255, 0, 0))
    path = tmp_path / "red.png"
    Image.fromarray(red).save(path)
    chw = np.zeros((3, 32, 32), dtype=np.float32)
    chw[2] = 1.0
    for item in (red, Image.fromarray(red), path, str(path), encode(red, "PNG")):
        result = server.predict(item)
        assert isinstance(result, ClassificationResult)
        assert result.label == "red"
    assert server.predict(chw).label == "blue"
    batch = server.predict([red, solid((0, 255, 0))])
    assert [r.label for r in batch] == ["red", "green"]
    nhwc = np.stack([red, red])
    assert [r.label for r in server.predict(nhwc)] == ["red", "red"]
    assert len(server.predict(chw[None].repeat(3, axis=0))) == 3
    assert len(server.predict(red, top_k=1).class_ids) == 1


def test_predict_rejects_what_it_cannot_read(classifier_path, tmp_path):
    server = ModelServer("classification", classifier_path)
    with pytest.raises(InputError, match=r"cannot predict on a dict"):
        server.predict({"a": 1})
    with pytest.raises(InputError, match="shape"):
        server.predict(np.zeros((5,), dtype=np.int16))
    with pytest.raises(InputError, match="not found"):
        server.predict(tmp_path / "missing.jpg")


def test_exactly_one_source_is_required(classifier_path):
    with pytest.raises(ConfigError, match="neither"):
        ModelServer()
    with pytest.raises(ConfigError, match="both"):
        ModelServer(model_path=classifier_path, model_name="cv_model")


def test_registry_mode_is_lazy_and_keeps_the_modes_apart(classifier_path):
    # Construction contacts nothing: the platform is reached on the first endpoint call.
    server = ModelServer(workspace_url="http://127.0.0.1:9", token="t", model_name="cv_model")
    assert server.name == "cv_model"
    assert server.model_version == "1"
    with pytest.raises(ConfigError, match="registry mode"):
        server.start()
    with pytest.raises(ConfigError, match="apply to serving a file"):
        ModelServer(model_name="cv_model", conf=0.5)
    with pytest.raises(ConfigError, match="registry mode"):
        ModelServer("classification", classifier_path).create_endpoint("e")


def test_the_workspace_url_or_platform_picks_where_endpoints_run():
    def platform(**kwargs):
        return ModelServer(model_name="cv_model", **kwargs).endpoints.platform

    assert platform(workspace_url="https://your-workspace.cloud.databricks.com") == "databricks"
    assert platform(workspace_url="http://127.0.0.1:9") == "local"
    assert platform() == "local"
    assert platform(workspace_url="http://127.0.0.1:9", platform="databricks") == "databricks"
    with pytest.raises(ConfigError, match="unknown platform 'k8s'"):
        platform(platform="k8s")
    assert platform(workspace_url="ray://head:10001") == "ray"


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"missing\.onnx"):
        ModelServer("yolo", tmp_path / "missing.onnx")


def test_bad_options_are_config_errors_naming_the_key(classifier_path):
    with pytest.raises(ConfigError, match="max_batch_size"):
        ModelServer("classification", classifier_path, batching={"max_batch_size": 0})
    with pytest.raises(ConfigError, match="colour"):
        ModelServer("classification", classifier_path, colour="red")


def test_result_cache_counts_hits(classifier_path):
    image = encode(solid((255, 0, 0)))
    with ModelServer("classification", classifier_path, port=0, cache_size=8) as server:
        url = f"{server.url}/v1/models/{server.name}/predict"
        headers = {"content-type": "image/jpeg"}
        first = httpx.post(url, content=image, headers=headers).json()
        second = httpx.post(url, content=image, headers=headers).json()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert first["predictions"] == second["predictions"]
    assert 'cvdeploy_cache_total{model="colors",outcome="hit",version="1"} 1.0' in metrics
    assert 'cvdeploy_cache_total{model="colors",outcome="miss",version="1"} 1.0' in metrics


def test_query_token_guards_predictions_but_not_probes(classifier_path):
    image = encode(solid((255, 0, 0)))
    with ModelServer("classification", classifier_path, port=0, token="s3cret") as server:
        url = f"{server.url}/v1/models/{server.name}/predict"
        headers = {"content-type": "image/jpeg"}
        assert httpx.post(url, content=image, headers=headers).status_code == 401
        assert httpx.post(url + "?token=wrong", content=image, headers=headers).status_code == 401
        assert httpx.post(url + "?token=s3cret", content=image, headers=headers).status_code == 200
        bearer = {**headers, "authorization": "Bearer s3cret"}
        assert httpx.post(url, content=image, headers=bearer).status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


@pytest.mark.slow
def test_several_workers_share_the_port(classifier_path):
    image = encode(solid((0, 0, 255)))
    with ModelServer("classification", classifier_path, port=0, workers=2) as server:
        url = f"{server.url}/v1/models/{server.name}/predict"
        for _ in range(6):
            response = httpx.post(url, content=image, headers={"content-type": "image/jpeg"})
            assert response.json()["predictions"][0]["classes"][0]["label"] == "blue"
        metrics = httpx.get(f"{server.url}/metrics").text
    # Multiprocess metrics: any worker reports the requests of all of them.
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("cvdeploy_requests_total")
        and 'status="200"' in line
        and "predict" in line
    )
    assert float(line.rsplit(" ", 1)[1]) == 6.0


def test_stop_drains_in_flight_requests(slow_path):
    import concurrent.futures

    image = encode(solid((255, 0, 0), size=(32, 32)))
    server = ModelServer("classification", slow_path, port=0, access_log=False).start()
    url = f"{server.url}/v1/models/{server.name}/predict"

    def call():
        return httpx.post(url, content=image, headers={"content-type": "image/jpeg"}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call) for _ in range(4)]
        # Wait until every request is queued or running, then stop the server.
        engine_stats = server._server.engine.batcher.stats  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while engine_stats.submitted < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop()
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200, 200, 200, 200]
