"""deploy/ci/github-actions.yml stays true: valid YAML, and the command it runs exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cvdeploy.cli.app import app
from cvdeploy.cli.pipeline import EXIT_CODES

WORKFLOW = Path(__file__).resolve().parents[2] / "deploy" / "ci" / "github-actions.yml"


def _pipeline_step() -> str:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    steps = workflow["jobs"]["pipeline"]["steps"]
    return next(s["run"] for s in steps if "cvdeploy pipeline run" in s.get("run", ""))


def test_the_workflow_runs_only_options_the_cli_has():
    words = shlex.split(_pipeline_step().replace("\\\n", " "))
    used = {w for w in words if w.startswith("--")}
    help_text = CliRunner().invoke(app, ["pipeline", "run", "--help"], env={"COLUMNS": "200"})
    assert help_text.exit_code == 0
    known = set(re.findall(r"--[a-z][a-z-]+", help_text.output))
    assert used
    assert used <= known, used - known


def test_the_workflow_documents_the_exit_codes_the_cli_uses():
    header = WORKFLOW.read_text(encoding="utf-8")
    for status, code in EXIT_CODES.items():
        assert f"{code} {status.replace('_', ' ')}" in header
