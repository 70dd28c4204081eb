"""Acceptance: seed 001's snippets run unchanged on Ray Serve (a local cluster they start).

The scripts are the ones in ``examples/``; the platform choice comes from the environment
(``CVDEPLOY_PLATFORM=ray``), so the snippet text is the seed's. Each script starts a one-node
Ray cluster in its own process, which ends with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the Ray backend needs ray[serve] (extra 'ray')")
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CVDEPLOY_HOME": str(tmp_path), "CVDEPLOY_PLATFORM": "ray"}
    for key in ("CVDEPLOY_CONFIG", "CVDEPLOY_WORKSPACE_URL", "CVDEPLOY_REGISTRY_URI"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, script], cwd=EXAMPLES, env=env, capture_output=True, text=True,
        timeout=400, check=False,
    )  # fmt: skip


def test_seed_001_endpoint_management_runs_on_ray_serve(tmp_path):
    result = _run("seed_001_endpoints.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Endpoint metrics:" in result.stdout
    assert "'state': 'READY'" in result.stdout


def test_seed_001_basic_deployment_runs_on_ray_serve(tmp_path):
    result = _run("seed_001_pipeline.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployed: cv_model version 1 -> cv_model-endpoint" in result.stdout
