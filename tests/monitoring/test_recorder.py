"""``GET /monitoring`` on a real server: exact request figures, errors by type, resources."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cvdeploy import ModelServer
from cvdeploy.demo import CLASSIFIER, demo_file, sample_images
from cvdeploy.monitoring.recorder import ServingRecorder


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False) as s:
        yield s


def test_snapshot_counts_inference_requests_errors_and_resources(server: ModelServer) -> None:
    png = sample_images("digit_*")[0].read_bytes()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(20):
            ok = http.post(f"/v1/models/{server.name}/predict", content=png,
                           headers={"content-type": "image/png"})  # fmt: skip
            assert ok.status_code == 200, ok.text
        bad = http.post(f"/v1/models/{server.name}/predict", content=b"not an image",
                        headers={"content-type": "image/png"})  # fmt: skip
        assert bad.status_code == 400
        http.get("/v2/health/ready")  # probes are not inference requests
        figures = http.get("/monitoring", params={"window_s": 60}).json()
        refused = http.get("/monitoring", params={"window_s": 100000})
    assert figures["model"] == server.name
    assert figures["requests"] == 21
    assert figures["client_error_rate"] == pytest.approx(1 / 21, abs=1e-3)
    assert figures["error_rate"] == 0
    assert 0 < figures["latency_ms"]["p50"] <= figures["latency_ms"]["p95"]
    assert figures["errors"]["by_type"] == {"InvalidImageError": 1}
    assert figures["errors"]["recent"][0]["status"] == 400
    assert "request_id" in figures["errors"]["recent"][0]
    assert figures["batch"]["batches"] >= 1
    assert figures["resources"]["rss_bytes"] > 0
    assert figures["drift"]["status"] in {"off", "insufficient_data", "collecting_reference"}
    assert refused.status_code == 400


def test_windows_drop_old_requests_with_a_fake_clock() -> None:
    now = [1000.0]
    recorder = ServingRecorder("m", "1", horizon_s=300, clock=lambda: now[0])
    recorder.observe_request("/v2/models/{name}/infer", 200, 0.010)
    recorder.observe_request("/v2/models/{name}/infer", 500, 0.030)
    recorder.observe_request("/metrics", 200, 0.001)
    recorder.observe_batch(4, [0.001, 0.002, 0.003, 0.004])
    first = recorder.snapshot(60)
    assert first["requests"] == 2
    assert first["error_rate"] == 0.5
    assert first["batch"]["mean_size"] == 4
    now[0] += 120
    later = recorder.snapshot(60)
    assert later["requests"] == 0
    assert later["latency_ms"] is None
    assert later["batch"]["batches"] == 0


def _darkened(png: bytes) -> bytes:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    dark = image.point(lambda v: int(v * 0.3))
    out = io.BytesIO()
    dark.save(out, format="PNG")
    return out.getvalue()


def test_a_darkened_stream_is_flagged_by_the_servers_drift_sampler() -> None:
    drift = {
        "sample_rate": 1.0,
        "max_samples_per_s": 10_000,
        "reference_requests": 40,
        "window": 60,
        "min_window": 40,
    }
    digits = [p.read_bytes() for p in sample_images("digit_*")]
    server = ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False,
                         drift=drift)  # fmt: skip
    with server, httpx.Client(base_url=server.url, timeout=30) as http:

        def send(images: list[bytes]) -> None:
            for png in images:
                answer = http.post(f"/v1/models/{server.name}/predict", content=png,
                                   headers={"content-type": "image/png"})  # fmt: skip
                assert answer.status_code == 200

        def drift_report() -> dict:
            import time

            for _ in range(100):  # the sampler works behind the requests
                report = http.get("/monitoring").json()["drift"]
                if report.get("observed", 0) >= report.get("sampled", 0) > 0:
                    return report
                time.sleep(0.05)
            return report

        send(digits * 4)  # 40 requests: the reference
        send(digits * 5)  # in distribution
        quiet = drift_report()
        send([_darkened(png) for png in digits] * 6)
        flagged = drift_report()
    assert quiet["status"] == "ok", quiet
    assert quiet["reference"] == "first requests"
    assert flagged["status"] == "drift", flagged
    assert "brightness" in flagged["drifted"]
    assert flagged["failed"] == 0
