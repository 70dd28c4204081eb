"""The examples in examples/ run as documented."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_seed_000_snippet_runs_with_the_seed_config_and_four_workers():
    # The YAML is the seed's, verbatim; only the port moves (by environment override) so the
    # test never collides with something already on 8000.
    env = {**os.environ, "CVDEPLOY_DEPLOYMENT__SERVER__PORT": str(free_port())}
    env.pop("CVDEPLOY_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "seed_000_deployment.py"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with 4 workers" in result.stdout
    assert "Detection(" in result.stdout


def _run_seed_001(
    env: dict[str, str], script: str = "seed_001_endpoints.py"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
def test_seed_001_snippet_starts_the_embedded_platform_and_leaves_it_serving(tmp_path):
    env = {**os.environ, "CVDEPLOY_HOME": str(tmp_path), "CVDEPLOY_PORT": str(free_port())}
    for key in ("CVDEPLOY_CONFIG", "CVDEPLOY_URL", "CVDEPLOY_WORKSPACE_URL", "CVDEPLOY_TOKEN"):
        env.pop(key, None)
    cli = [sys.executable, "-m", "cvdeploy.cli"]
    try:
        result = _run_seed_001(env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "'state': 'READY'" in result.stdout
        assert "'cv_model-1': 100" in result.stdout
        # The daemon outlived the script: the endpoint still answers.
        listed = subprocess.run(
            [*cli, "endpoints", "list", "--json"], env=env, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        assert '"cv_endpoint"' in listed.stdout
    finally:
        subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=60, check=False)


@pytest.mark.slow
def test_seed_001_snippet_runs_against_a_running_cvdeploy_up(tmp_path):
    from cvdeploy.platforms.local.server import PlatformServer, platform_options

    env = {**os.environ, "CVDEPLOY_HOME": str(tmp_path)}
    env.pop("CVDEPLOY_CONFIG", None)
    patch = pytest.MonkeyPatch()
    patch.setenv("CVDEPLOY_HOME", str(tmp_path))
    try:
        with PlatformServer(platform_options(home=tmp_path)) as platform:
            result = _run_seed_001({**env, "CVDEPLOY_WORKSPACE_URL": platform.url})
            assert result.returncode == 0, result.stderr[-3000:]
            assert "'state': 'READY'" in result.stdout
            assert platform.platform.runtime("cv_endpoint") is not None
    finally:
        patch.undo()


@pytest.mark.slow
def test_seed_000_monitoring_snippet_reports_live_figures_for_a_busy_server(tmp_path):
    import json

    env = {
        **os.environ,
        "CVDEPLOY_DEPLOYMENT__SERVER__PORT": str(free_port()),
        "CVDEPLOY_HOME": str(tmp_path),
    }
    env.pop("CVDEPLOY_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "seed_000_monitoring.py"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["status"] == "ok"
    assert metrics["workers"] == 4  # the seed's config: figures merged over every worker
    assert metrics["requests"] > 0
    assert metrics["throughput_rps"] > 0
    assert metrics["latency_ms"]["p95"] > 0
    assert set(metrics["metrics"]) == {"latency", "throughput", "error_rate"}


@pytest.mark.slow
def test_seed_001_pipeline_snippet_deploys_the_demo_model_and_rejects_a_degraded_copy(tmp_path):
    from pipeline_support import degraded_classifier

    from cvdeploy.demo import eval_set
    from cvdeploy.registry import Registry

    env = {**os.environ, "CVDEPLOY_HOME": str(tmp_path), "CVDEPLOY_PORT": str(free_port())}
    for key in ("CVDEPLOY_CONFIG", "CVDEPLOY_URL", "CVDEPLOY_WORKSPACE_URL", "CVDEPLOY_TOKEN"):
        env.pop(key, None)
    cli = [sys.executable, "-m", "cvdeploy.cli"]
    try:
        first = _run_seed_001(env, "seed_001_pipeline.py")
        assert first.returncode == 0, first.stderr[-3000:]
        assert "deployed: cv_model version 1 -> cv_model-endpoint" in first.stdout
        assert "threshold:f1: f1 0.99" in first.stdout

        degraded = degraded_classifier(tmp_path / "degraded.onnx")
        Registry(home=tmp_path).register(degraded, "cv_model", eval_data=eval_set("digits"))
        second = _run_seed_001(env, "seed_001_pipeline.py")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "rejected: cv_model version 2" in second.stdout
        assert "reason: gates: accuracy 0.6000 < threshold 0.9000" in second.stdout
        registry = Registry(home=tmp_path)
        assert registry.get_version("cv_model", "champion").version == "1"
        listed = subprocess.run(
            [*cli, "endpoints", "get", "cv_model-endpoint", "--json"], env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert '"entity_version": "1"' in listed.stdout
        assert '"entity_version": "2"' not in listed.stdout
    finally:
        subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=60, check=False)
