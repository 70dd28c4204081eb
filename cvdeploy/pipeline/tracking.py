"""One MLflow run per pipeline run: parameters, every stage's figures and verdicts, the report.

The run lives in the experiment the user named (seed 001's ``experiment_name``) in the same
tracking store as the registry, so MLflow's UI shows it beside the versions it judged. MLflow is
imported by the registry client, never at ``import cvdeploy``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.pipeline.stages import StageResult

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["PipelineRun"]

_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM = 6000  # MLflow's limit on a parameter value


class PipelineRun:
    """An open MLflow run; :meth:`finish` closes it with the pipeline's status."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, str]
    ) -> None:
        self._client = client
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id: str = run.info.run_id
        self.experiment_id = experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            if value is None:
                continue
            self._client.log_param(self.run_id, _key(key), str(value)[:_MAX_PARAM])

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """Log the finite numbers of ``metrics`` (nested dicts become dotted keys)."""
        for key, value in _flatten(metrics, prefix).items():
            self._client.log_metric(self.run_id, _key(key), value)

    def log_stage(self, stage: StageResult) -> None:
        """A stage's figures as metrics, its status and each verdict as tags."""
        self.log_metrics(stage.figures, f"{stage.name}.")
        self._client.log_metric(self.run_id, _key(f"{stage.name}.seconds"), stage.seconds)
        self.set_tag(f"stage.{stage.name}", stage.status)
        for check in stage.checks:
            verdict = {True: "pass", False: "fail", None: "n/a"}[check.passed]
            self.set_tag(f"check.{stage.name}.{check.name}", verdict)

    def set_tag(self, key: str, value: str) -> None:
        self._client.set_tag(self.run_id, _key(key), value[:5000])

    def log_files(self, files: Sequence[Path], artifact_path: str = "report") -> None:
        """Upload exactly ``files`` (never a whole folder a user may have pointed us at)."""
        for file in files:
            self._client.log_artifact(self.run_id, str(file), artifact_path)

    def finish(self, status: str) -> None:
        """Close the run; MLflow's FINISHED for a decision reached, FAILED for an error."""
        self.set_tag("cvdeploy.status", status)
        self._client.set_terminated(self.run_id, "FAILED" if status == "failed" else "FINISHED")


def _key(name: str) -> str:
    # "threshold:accuracy" -> "threshold.accuracy": MLflow keys allow no colon.
    return _KEY.sub("_", name.replace(":", "."))[:250]


def _flatten(data: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[f"{prefix}{key}"] = float(value)
    return out
