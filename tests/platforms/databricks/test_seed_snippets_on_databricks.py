"""Acceptance: seed 001's snippets run unchanged against Databricks Model Serving (the fake).

The scripts in ``examples/`` are the seed's snippets with only the import changed; the explicit
platform choice comes from the environment (``CVDEPLOY_PLATFORM=databricks``), which points
them at the fake workspace on ``http://127.0.0.1:PORT``. The models live in a real MLflow
tracking server (``CVDEPLOY_REGISTRY_URI``), from which the fake workspace serves the registered
pyfunc artifact, as Databricks does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.databricks_workspace import FakeWorkspace
from fakes.mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture(scope="module")
def workspace(mlflow_server: MlflowServer) -> Iterator[FakeWorkspace]:  # noqa: F811
    with FakeWorkspace(token="dapi-seed", registry_uri=mlflow_server.url) as ws:
        yield ws


@pytest.fixture
def env(workspace: FakeWorkspace, mlflow_server: MlflowServer, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    env = {
        **os.environ,
        "CVDEPLOY_HOME": str(tmp_path),
        "CVDEPLOY_PLATFORM": "databricks",
        "CVDEPLOY_WORKSPACE_URL": workspace.url,
        "CVDEPLOY_TOKEN": workspace.token,
        "CVDEPLOY_REGISTRY_URI": mlflow_server.url,
    }
    env.pop("CVDEPLOY_CONFIG", None)
    return env


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script], cwd=EXAMPLES, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def test_seed_001_endpoint_management_runs_on_databricks(env, workspace):
    result = _run("seed_001_endpoints.py", env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Endpoint metrics:" in result.stdout
    assert "'state': 'READY'" in result.stdout
    created = [
        r for r in workspace.requests if r[0] == "POST" and r[1].endswith("/serving-endpoints")
    ]
    assert created, workspace.requests


def test_seed_001_basic_deployment_runs_on_databricks(env, workspace):
    result = _run("seed_001_pipeline.py", env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployed: cv_model version 1 -> cv_model-endpoint" in result.stdout
    # The fake served the registered artifact: the endpoint answers with the real model.
    from databricks.sdk import WorkspaceClient

    client = WorkspaceClient(host=workspace.url, token=workspace.token)
    info = client.serving_endpoints.get("cv_model-endpoint")
    assert info.state is not None
    assert str(info.state.ready.value if info.state.ready else "") == "READY"
