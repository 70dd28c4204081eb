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
