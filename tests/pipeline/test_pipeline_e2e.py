"""``DeploymentPipeline`` end to end on a real local platform, as a CI job would run it.

One platform and one registry serve the module; the tests run in file order and each leaves
the endpoint in the state the next expects:

1. version 1 (the demo classifier) is deployed: the endpoint is created, ``champion`` moves;
2. version 2, a degraded copy, is rejected with reasons and nothing changes;
3. version 3, correct but slow, passes every gate and is rolled back automatically under load;
4. version 4 (a copy of 1) is killed mid-rollout, and the next run resumes and deploys it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pipeline_support import degraded_classifier
from platform_support import DIGITS, digit_b64, fast_options
from rollout_models import make_slow_classifier

from cvdeploy import DeploymentPipeline
from cvdeploy.demo import eval_set
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.platforms.local.server import PlatformServer
from cvdeploy.registry import Registry

pytestmark = pytest.mark.slow

ENDPOINT = "cv_model-endpoint"  # run_pipeline's default for model "cv_model"
SEED_THRESHOLDS = {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9}
CONFIG = """
deployment:
  ci_cd:
    eval_data: {eval_data}
    rollout_steps: [10, 100]
    performance: {{batch_sizes: [1, 4], duration_s: 0.2}}
    evaluation: {{max_images: {max_images}}}
    rollout:
      window_s: {window_s}
      min_requests: 10
      step_timeout_s: {timeout_s}
      max_latency_ms: 25
"""


def _config(
    folder: Path, name: str, window_s: float = 2, timeout_s: float = 30, max_images: str = "null"
) -> Path:
    path = folder / name
    text = CONFIG.format(
        eval_data=eval_set("digits"), window_s=window_s, timeout_s=timeout_s, max_images=max_images
    )
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cvdeploy-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("CVDEPLOY_HOME", str(home))
    patch.delenv("CVDEPLOY_CONFIG", raising=False)
    models = tmp_path_factory.mktemp("models")
    registry = Registry(home=home)
    registry.register(DIGITS, "cv_model")  # 1
    registry.register(degraded_classifier(models / "degraded.onnx"), "cv_model")  # 2
    registry.register(make_slow_classifier(models / "slow.onnx"), "cv_model")  # 3
    registry.register(DIGITS, "cv_model")  # 4
    yield home
    patch.undo()


@pytest.fixture(scope="module")
def platform(home: Path) -> Iterator[PlatformServer]:
    with PlatformServer(fast_options(home)) as server:
        yield server


def _pipeline(platform: PlatformServer, home: Path, version: str, **kwargs) -> DeploymentPipeline:
    return DeploymentPipeline(
        workspace_url=platform.url,
        token=None,
        model_name="cv_model",
        experiment_name="cv_experiment",
        config=kwargs.pop("config", _config(home, "fast.yaml")),
        model_version=version,
        timeout=120,
        **kwargs,
    )


def _serving(platform: PlatformServer) -> dict[str, int]:
    with PlatformClient(platform.url) as client:
        info = client.get_endpoint(ENDPOINT)
    assert info.config is not None
    versions = {e.name: e.entity_version for e in info.config.served_entities}
    return {versions[r.served_model_name]: r.traffic_percentage for r in info.config.routes}


class Load:
    """Requests back to back on the endpoint from a thread, as users would send them."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/serving-endpoints/{ENDPOINT}/invocations"
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        images = [digit_b64(n) for n in range(10)]
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                answer = http.post(self.url, json={"inputs": [images[i % 10]]})
                self.statuses.append(answer.status_code)
                i += 1


def test_first_run_creates_the_endpoint_and_records_everything_in_mlflow(platform, home):
    result = _pipeline(platform, home, "1").run_pipeline(SEED_THRESHOLDS)

    assert result["status"] == "deployed", result["reasons"]
    assert result["endpoint"] == ENDPOINT
    assert _serving(platform) == {"1": 100}
    assert Registry(home=home).get_version("cv_model", "champion").version == "1"
    assert [s["name"] for s in result["stages"]] == [
        "security", "compatibility", "resources", "performance", "evaluation", "gates", "deploy",
    ]  # fmt: skip
    assert result["metrics"]["accuracy"] > 0.99
    assert {g["name"] for g in result["gates"]} >= {f"threshold:{k}" for k in SEED_THRESHOLDS}
    assert result["eval_data"]["images"] == 360
    report = Path(result["report"])
    assert (report / "report.md").is_file()
    assert (report / "confusion_matrix.svg").is_file()

    # The MLflow run holds the metrics, the gates and the report.
    client = Registry(home=home).client
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    # Artifacts live in $CVDEPLOY_HOME, never in a ./mlruns of whatever folder CI runs from.
    assert run.info.artifact_uri.startswith((home / "artifacts").as_uri())
    assert run.data.tags["cvdeploy.status"] == "deployed"
    assert run.data.metrics["eval.accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert run.data.tags["gate.threshold.accuracy"] == "pass"
    assert run.data.params["eval_data_sha256"] == result["eval_data"]["sha256"]
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/result.json"} <= artifacts
    # The version carries its evaluation too, with the data's hash (data versioning).
    version = Registry(home=home).get_version("cv_model", "1")
    assert version.tags["eval_data_sha256"] == result["eval_data"]["sha256"]


def test_a_degraded_copy_is_rejected_with_reasons_and_nothing_is_deployed(platform, home):
    result = _pipeline(platform, home, "2").run_pipeline(SEED_THRESHOLDS)

    assert result["status"] == "rejected"
    assert any("accuracy 0.6" in r and "< threshold 0.9" in r for r in result["reasons"])
    assert any(r.startswith("gates: accuracy") and "champion v1" in r for r in result["reasons"])
    assert result["rollout"] is None
    assert result["endpoint"] is None
    assert "deploy" not in [s["name"] for s in result["stages"]]
    assert _serving(platform) == {"1": 100}
    assert Registry(home=home).get_version("cv_model", "champion").version == "1"
    # The champion's figures on the same data were reused, not recomputed.
    assert result["champion_metrics"]["accuracy"] > 0.99


def test_a_slow_canary_is_rolled_back_automatically_under_load(platform, home):
    with Load(platform.url) as load:
        time.sleep(1.0)
        # 60 images: the slow model takes ~0.1 s each, and every class is still in.
        config = _config(home, "subset.yaml", max_images="60")
        result = _pipeline(platform, home, "3", config=config).run_pipeline(SEED_THRESHOLDS)

    assert result["status"] == "rolled_back", result["reasons"]
    rollout = result["rollout"]
    assert rollout["champion"] == "1"
    assert [(s["percent"], s["verdict"]) for s in rollout["steps"]] == [(10, "breached")]
    assert "p95 latency" in rollout["reason"]
    assert rollout["failed_requests"] == 0  # slow, not failing: users got answers
    assert any("p95 latency" in r for r in result["reasons"])
    assert _serving(platform) == {"1": 100}
    assert Registry(home=home).get_version("cv_model", "champion").version == "1"
    assert load.statuses
    assert set(load.statuses) == {200}
    run = Registry(home=home).client.get_run(result["run_id"])
    assert run.data.tags["cvdeploy.status"] == "rolled_back"


def test_a_pipeline_killed_mid_rollout_is_resumed_by_the_next_run(platform, home):
    slow_steps = _config(home, "slow.yaml", window_s=120, timeout_s=300)
    env = {**os.environ, "CVDEPLOY_HOME": str(home)}
    command = [
        sys.executable, "-m", "cvdeploy.cli", "pipeline", "run", "--model", "cv_model",
        "--version", "4", "--config", str(slow_steps), "--workspace-url", platform.url,
    ]  # fmt: skip
    log = home / "killed-pipeline.log"
    with Load(platform.url) as load, log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while _serving(platform) != {"1": 90, "4": 10}:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the rollout never reached its 10% step"
                time.sleep(0.3)
            process.send_signal(signal.SIGKILL)  # no chance to clean up
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        assert _serving(platform) == {"1": 90, "4": 10}  # left split half-way

        result = _pipeline(platform, home, "4").run_pipeline(SEED_THRESHOLDS)

    assert result["status"] == "deployed", result["reasons"]
    assert "10%" in result["rollout"]["resumed"]
    assert _serving(platform) == {"4": 100}
    assert Registry(home=home).get_version("cv_model", "champion").version == "4"
    assert set(load.statuses) == {200}
