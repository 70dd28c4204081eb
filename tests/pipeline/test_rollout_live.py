"""The rollout on the real local platform: replica processes, the gateway, live traffic.

One platform and one endpoint serve the module; the tests run in file order, each starting from
the endpoint serving ``cv_model`` version 1 alone. A thread sends requests to the endpoint's
invocations URL the whole time, as users would, and records who answered what.

Registered versions: 1 the demo classifier (the champion), 2 the same made slow (~100 ms more
per image on one core), 3 the same failing on bright images, 4 a plain copy of 1.
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from platform_support import DEMO, DIGITS, digit_b64, fast_options
from rollout_models import make_bright_failing_classifier, make_slow_classifier

from cvdeploy.pipeline.rollout import RolloutPolicy, RolloutReport, roll_out
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.registry import Registry

pytestmark = pytest.mark.slow

ENDPOINT = "rollout"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cvdeploy-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("CVDEPLOY_HOME", str(home))
    registry = Registry(home=home)
    models = tmp_path_factory.mktemp("models")
    registry.register(DIGITS, "cv_model")  # 1
    registry.register(make_slow_classifier(models / "slow.onnx"), "cv_model")  # 2
    registry.register(make_bright_failing_classifier(models / "bright.onnx"), "cv_model")  # 3
    registry.register(DIGITS, "cv_model")  # 4
    yield home
    patch.undo()


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[PlatformClient]:
    with PlatformServer(fast_options(home)) as server, PlatformClient(server.url) as c:
        c.create_endpoint(
            {
                "name": ENDPOINT,
                "config": {
                    "served_entities": [
                        {"entity_name": "cv_model", "entity_version": "1", "min_replicas": 1}
                    ]
                },
            }
        )
        c.wait_not_updating(ENDPOINT, timeout=90)
        yield c


def _bright_b64(n: int) -> str:
    """A demo digit inverted: black strokes on white, mean brightness ~0.7."""
    image = Image.open(DEMO / "images" / f"digit_{n}.png").convert("RGB")
    inverted = Image.fromarray(255 - np.asarray(image))
    buffer = io.BytesIO()
    inverted.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Load:
    """Requests sent back to back from a thread; ``answers`` holds (status, served by, ms)."""

    def __init__(self, url: str, images: list[str]) -> None:
        self.url = f"{url}/serving-endpoints/{ENDPOINT}/invocations"
        self.images = images
        self.answers: list[tuple[int, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            # Random, not in turn: the gateway's weighted round robin would otherwise send the
            # candidate the same few images every time.
            rng = random.Random(0)
            while not self._stop.is_set():
                body = {"inputs": [rng.choice(self.images)]}
                started = time.perf_counter()
                answer = http.post(self.url, json=body)
                ms = (time.perf_counter() - started) * 1e3
                self.answers.append(
                    (answer.status_code, answer.headers.get("served-model-name", ""), ms)
                )

    def by(self, entity: str) -> list[tuple[int, str, float]]:
        return [a for a in self.answers if a[1] == entity]


def _serving(client: PlatformClient) -> dict[str, int]:
    info = client.get_endpoint(ENDPOINT)
    assert info.config is not None
    names = {e.name: e.entity_version for e in info.config.served_entities}
    return {names[r.served_model_name]: r.traffic_percentage for r in info.config.routes}


def _p95(answers: list[tuple[int, str, float]]) -> float:
    return float(np.percentile([ms for _, _, ms in answers], 95)) if answers else float("nan")


def _roll_out(client: PlatformClient, candidate: str, policy: RolloutPolicy) -> RolloutReport:
    events: list[str] = []
    started = time.perf_counter()
    report = roll_out(client, ENDPOINT, "cv_model", candidate, policy, on_event=events.append,
                      update_timeout_s=90)  # fmt: skip
    print(f"\nrollout of version {candidate}: {report.status} in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    for event in events:
        print("  ", event)
    return report


DIGIT_IMAGES = [digit_b64(n) for n in range(10)]


def test_slow_candidate_is_rolled_back_at_the_first_step(client: PlatformClient) -> None:
    assert _serving(client) == {"1": 100}
    url = client.url
    with Load(url, DIGIT_IMAGES) as load:
        time.sleep(1.5)
        champion = client.stats(ENDPOINT, window_s=1.5)["served_entities"]["cv_model-1"]
        champion_p95 = champion["last_minute"]["latency_ms"]["p95"]
        # Between the champion's p95 and the slow candidate's (50-100 ms of model time more).
        limit = max(25.0, champion_p95 + 20.0)
        policy = RolloutPolicy(steps=(10, 50, 100), window_s=2, min_requests=10,
                               step_timeout_s=20, poll_s=0.2, max_latency_ms=limit)  # fmt: skip
        report = _roll_out(client, "2", policy)
    print(f"   champion p95 {champion_p95:.1f} ms (gateway), limit {limit:.1f} ms; "
          f"client-side p95: v1 {_p95(load.by('cv_model-1')):.1f} ms, "
          f"v2 {_p95(load.by('cv_model-2')):.1f} ms over {len(load.answers)} requests")  # fmt: skip
    assert report.status == "rolled_back", report.to_dict()
    assert [(s.percent, s.verdict) for s in report.steps] == [(10, "breached")]
    assert report.reason is not None
    assert "p95 latency" in report.reason
    assert "10% step" in report.reason
    assert report.failed_requests == 0
    assert _serving(client) == {"1": 100}
    assert load.by("cv_model-2"), "the candidate got no traffic"
    assert all(status == 200 for status, _, _ in load.answers)


def test_candidate_failing_on_live_images_is_rolled_back(client: PlatformClient) -> None:
    assert _serving(client) == {"1": 100}
    images = [x for n in range(10) for x in (digit_b64(n), _bright_b64(n))]
    policy = RolloutPolicy(steps=(10, 50, 100), window_s=2, min_requests=10, step_timeout_s=20,
                           poll_s=0.2)  # fmt: skip
    with Load(client.url, images) as load:
        time.sleep(0.5)
        report = _roll_out(client, "3", policy)
    failed = [a for a in load.answers if a[0] != 200]
    served_by = sorted({a[1] for a in failed})
    print(f"   {len(load.answers)} requests, {len(failed)} failed (all by {served_by}); "
          f"the report counted {report.failed_requests}")  # fmt: skip
    assert report.status == "rolled_back", report.to_dict()
    assert [(s.percent, s.verdict) for s in report.steps] == [(10, "breached")]
    assert report.reason is not None
    assert "error rate" in report.reason
    assert _serving(client) == {"1": 100}
    # The champion served every request it got; the failures were the candidate's.
    assert load.by("cv_model-1")
    assert all(status == 200 for status, _, _ in load.by("cv_model-1"))
    assert {a[1] for a in failed} == {"cv_model-3"}
    assert all(status == 500 for status, _, _ in failed)
    # The report counts the failures it saw before rolling back; a few more may reach the
    # candidate while the switch back is applied.
    assert 0 < report.failed_requests <= len(failed)


def test_interrupted_rollout_puts_the_champion_back(client: PlatformClient) -> None:
    assert _serving(client) == {"1": 100}
    seen: list[str] = []

    def interrupt_once(message: str) -> None:
        seen.append(message)
        if "watching" in message and not any("interrupted" in m for m in seen):
            assert _serving(client) == {"1": 95, "4": 5}
            raise KeyboardInterrupt  # Ctrl-C while the split is live

    policy = RolloutPolicy(steps=(5, 100), window_s=2, min_requests=10, step_timeout_s=20,
                           poll_s=0.2)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        roll_out(client, ENDPOINT, "cv_model", "4", policy, on_event=interrupt_once,
                 update_timeout_s=90)  # fmt: skip
    assert any("interrupted by KeyboardInterrupt" in m for m in seen)
    assert _serving(client) == {"1": 100}


def test_healthy_candidate_is_promoted_through_the_steps(client: PlatformClient) -> None:
    assert _serving(client) == {"1": 100}
    policy = RolloutPolicy(steps=(5, 100), window_s=2, min_requests=10, step_timeout_s=20,
                           poll_s=0.2, max_latency_ms=1000)  # fmt: skip
    with Load(client.url, DIGIT_IMAGES) as load:
        time.sleep(0.5)
        report = _roll_out(client, "4", policy)
        time.sleep(0.5)
    print(f"   {len(load.answers)} requests; step 5%: {report.steps[0].requests} candidate "
          f"requests, p95 {report.steps[0].latency_p95_ms} ms")  # fmt: skip
    assert report.status == "deployed", report.to_dict()
    assert [(s.percent, s.verdict) for s in report.steps] == [(5, "passed"), (100, "final")]
    assert report.steps[0].requests >= 10
    assert report.failed_requests == 0
    assert _serving(client) == {"4": 100}
    assert all(status == 200 for status, _, _ in load.answers)
    assert load.answers[-1][1] == "cv_model-4"
