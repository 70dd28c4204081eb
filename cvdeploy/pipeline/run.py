"""One pipeline run: the stages in order, the result dict, the MLflow run and the report.

Kept apart from :class:`~cvdeploy.pipeline.pipeline.DeploymentPipeline` (the public API and its
building blocks) so each reads on its own: this module is the sequence and the bookkeeping.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.errors import CVDeployError
from cvdeploy.pipeline.gates import check_gates, gated_metrics, normalise_thresholds
from cvdeploy.pipeline.pipeline import EVAL_HASH_TAG
from cvdeploy.pipeline.stages import StageResult
from cvdeploy.pipeline.tracking import PipelineRun

if TYPE_CHECKING:
    from cvdeploy.pipeline.pipeline import DeploymentPipeline

__all__ = ["PipelineRunner"]


class PipelineRunner:
    """Runs the stages for one candidate and assembles the result."""

    def __init__(
        self,
        pipeline: DeploymentPipeline,
        thresholds: dict[str, float],
        from_defaults: bool,
        endpoint: str,
    ) -> None:
        self.p = pipeline
        self.thresholds = thresholds
        self.from_defaults = from_defaults
        self.endpoint = endpoint
        self.stages: list[StageResult] = []
        self.result: dict[str, Any] = {}
        self._started_at = datetime.now(timezone.utc)
        self.full_metrics: dict[str, Any] = {}
        self.champion_metrics: dict[str, float] | None = None
        self.dataset: Any = None

    def run(self) -> dict[str, Any]:
        p = self.p
        started = time.perf_counter()
        version = p.resolve_candidate()
        card = p.registry.card(p.model_name, version)
        thresholds, notes = normalise_thresholds(
            self.thresholds, card.task, from_defaults=self.from_defaults
        )
        champion = p.champion_version()
        # Loaded before anything runs: a missing set or a malformed label is a usage error
        # (raised, naming the file and line), not something to find after the slow stages.
        self.dataset = p.load_eval_data(version)
        self._started_at = datetime.now(timezone.utc)
        # Updated in place: the pipeline holds this dict (last_result) while the run goes on.
        self.result.update({
            "status": "failed",
            "model_name": p.model_name,
            "model_version": version,
            "task": card.task,
            "champion_version": champion,
            "endpoint": None,
            "metrics": {},
            "champion_metrics": None,
            "thresholds": thresholds,
            "gates": [],
            "stages": [],
            "rollout": None,
            "timings": {},
            "reasons": [],
            "notes": notes,
            "eval_data": None,
            "experiment_name": p.experiment_name,
            "run_id": None,
            "report": None,
            "started_at": self._started_at.isoformat(timespec="seconds"),
        })  # fmt: skip
        run = PipelineRun(
            p.registry.client,
            p.registry.experiment_id(p.experiment_name),
            run_name=f"{p.model_name}-v{version}",
            tags={"cvdeploy.model": p.model_name, "cvdeploy.version": version},
        )
        self.result["run_id"] = run.run_id
        try:
            run.log_params(
                {
                    "model_name": p.model_name,
                    "model_version": version,
                    "champion_version": champion,
                    "endpoint": self.endpoint,
                    "task": card.task,
                    "thresholds": json.dumps(thresholds),
                    "max_regression": p.ci_cd.max_regression,
                    "rollout_steps": json.dumps(p.ci_cd.rollout_steps),
                }
            )
            self.result["status"] = self._stages(version, card, champion, thresholds)
        except CVDeployError as exc:
            self.result["status"] = "failed"
            self.result["reasons"].append(f"{type(exc).__name__}: {exc}")
            p.emit("pipeline", "failed", str(exc))
        except BaseException as exc:
            # A bug or an interrupt: record what is known, then let it propagate.
            self.result["reasons"].append(f"interrupted by {type(exc).__name__}: {exc}")
            self._finish(run, started)
            raise
        self._finish(run, started)
        return self.result

    # -- the stages ---------------------------------------------------------------------------

    def _stages(
        self, version: str, card: Any, champion: str | None, thresholds: dict[str, float]
    ) -> str:
        from cvdeploy.pipeline.compatibility import check_compatibility
        from cvdeploy.pipeline.performance import performance_test
        from cvdeploy.pipeline.resources import ResourceLimits, measure_resources
        from cvdeploy.pipeline.security import assess_security

        p, ci_cd = self.p, self.p.ci_cd
        config = p.config
        providers = None if config.model.providers == "auto" else list(config.model.providers)
        max_mb = ci_cd.resources.max_model_mb
        with p.stage("security") as stage:
            stage_result = assess_security(
                p.registry.model_folder(p.model_name, version),
                expected_sha256=card.sha256,
                allow_pickle=ci_cd.security.allow_pickle,
                max_model_bytes=None if max_mb is None else int(max_mb * 1e6),
                allowed_op_domains=ci_cd.security.allowed_op_domains,
            )
            _adopt(stage, stage_result)
        if not self._keep(stage):
            return "rejected"
        # The security stage vouched for the folder; from here on the verified ONNX is used.
        onnx_path = p.registry.model_path(p.model_name, version)
        with p.stage("compatibility") as stage:
            _adopt(
                stage,
                check_compatibility(
                    onnx_path,
                    task=card.task,
                    labels=card.labels,
                    input_size=card.input_size,
                    providers=providers,
                    max_batch_size=config.deployment.batching.max_batch_size,
                ),
            )
        if not self._keep(stage):
            return "rejected"
        with p.stage("resources") as stage:
            limits = ResourceLimits(
                max_model_mb=max_mb,
                max_load_s=ci_cd.resources.max_load_s,
                max_memory_mb=ci_cd.resources.max_memory_mb,
            )
            _adopt(
                stage,
                measure_resources(onnx_path, task=card.task, limits=limits, providers=providers),
            )
        if not self._keep(stage):
            return "rejected"
        perf = ci_cd.performance
        with p.stage("performance") as stage:
            _adopt(
                stage,
                performance_test(
                    onnx_path,
                    task=card.task,
                    batch_sizes=perf.batch_sizes,
                    duration_s=perf.duration_s,
                    max_latency_p95_ms=perf.max_latency_p95_ms,
                    min_images_per_s=perf.min_images_per_s,
                    providers=providers,
                ),
            )
        if not self._keep(stage):
            return "rejected"
        with p.stage("evaluation") as stage:
            self._evaluate(stage, version, champion)
        self._keep(stage)
        with p.stage("gates") as stage:
            _adopt(
                stage,
                check_gates(
                    gated_metrics(self.full_metrics),
                    thresholds,
                    champion=self.champion_metrics,
                    champion_version=champion,
                    max_regression=ci_cd.max_regression,
                    no_champion=(
                        f"the candidate v{version} is the champion: nothing to compare with"
                        if champion == version
                        else None
                    ),
                ),
            )
        self.result["gates"] = [c.to_dict() for c in stage.checks]
        if not self._keep(stage):
            self._restore_split_endpoint()
            return "rejected"
        return self._deploy(version)

    def _evaluate(self, stage: StageResult, version: str, champion: str | None) -> None:
        p = self.p
        dataset = self.dataset
        self.result["eval_data"] = {
            "source": str(dataset.source),
            "format": dataset.format,
            "images": len(dataset),
            "sha256": dataset.sha256,
            "description": dataset.describe(),
        }
        stage.check("eval_data", True, dataset.describe(), dataset.sha256[:16])
        self.full_metrics = p.evaluate_on(version, dataset)
        gated = gated_metrics(self.full_metrics)
        self.result["metrics"] = gated
        stage.figures.update(gated)
        if champion is None or champion == version:
            return
        cached = p.registry.get_version(p.model_name, champion)
        known = p.registry.metrics(p.model_name, champion)
        if cached.tags.get(EVAL_HASH_TAG) == dataset.sha256 and all(k in known for k in gated):
            self.champion_metrics = {k: known[k] for k in gated}
            detail = f"champion v{champion}: metrics recorded on the same data reused"
        else:
            self.champion_metrics = gated_metrics(p.evaluate_on(champion, dataset))
            detail = f"champion v{champion} evaluated on the same data"
        self.result["champion_metrics"] = self.champion_metrics
        stage.check("champion", None, detail)

    def _deploy(self, version: str) -> str:
        p = self.p
        self.result["endpoint"] = self.endpoint
        stage = StageResult("deploy")
        try:
            with p.stage("deploy") as stage:
                try:
                    report = self._deploy_steps(stage, version)
                except CVDeployError as exc:
                    stage.check("platform", False, f"{type(exc).__name__}: {exc}")
                    raise
        finally:
            self._keep(stage)  # also when the platform failed mid-deploy
        if report["status"] != "deployed":
            return "rolled_back"
        p.registry.set_alias(p.model_name, "champion", version)
        self._clear_candidate_alias(version)
        p.emit("registry", "passed", f"champion -> v{version}")
        return "deployed"

    def _deploy_steps(self, stage: StageResult, version: str) -> dict[str, Any]:
        from cvdeploy.pipeline.deploy import deploy

        p = self.p
        report = deploy(p, version, self.endpoint)
        self.result["rollout"] = report
        for step in report.get("steps", []):
            verdict = step.get("verdict")
            stage.check(
                f"step:{step.get('percent')}%",
                None if verdict in ("final",) else verdict in ("passed", "idle_promoted"),
                step.get("detail", ""),
                step.get("error_rate"),
            )
        if report.get("resumed"):
            stage.check("resumed", None, report["resumed"])
        if report["status"] == "rolled_back":
            stage.check("rollout", False, report.get("reason") or "rolled back")
        stage.figures["failed_requests"] = float(report.get("failed_requests", 0))
        return report

    # -- bookkeeping ----------------------------------------------------------------------------

    def _keep(self, stage: StageResult) -> bool:
        self.stages.append(stage)
        self.result["stages"].append(stage.to_dict())
        self.result["timings"][stage.name] = round(stage.seconds, 3)
        self.result["reasons"].extend(stage.reasons)
        return stage.passed

    def _restore_split_endpoint(self) -> None:
        from cvdeploy.pipeline.deploy import restore_if_split

        note = restore_if_split(self.p, self.endpoint)
        if note:
            self.result["notes"].append(note)

    def _clear_candidate_alias(self, version: str) -> None:
        from cvdeploy.registry import RegistryNotFoundError

        p = self.p
        try:
            if p.registry.get_version(p.model_name, "candidate").version == version:
                p.registry.delete_alias(p.model_name, "candidate")
        except RegistryNotFoundError:
            pass

    def _finish(self, run: PipelineRun, started: float) -> None:
        from cvdeploy.pipeline.report import write_report

        self.result["timings"]["total"] = round(time.perf_counter() - started, 3)
        folder = self._report_folder()
        try:
            self.result["report"] = str(folder)
            written = write_report(self.result, self.full_metrics, folder)
            for stage in self.stages:
                run.log_stage(stage)
            run.log_metrics(self.result["metrics"], "eval.")
            if self.champion_metrics:
                run.log_metrics(self.champion_metrics, "champion.")
            for gate in self.result["gates"]:
                run.set_tag(f"gate.{gate['name']}", _verdict(gate["passed"]))
            if self.result["eval_data"]:
                run.log_params(
                    {
                        "eval_data": self.result["eval_data"]["source"],
                        "eval_data_sha256": self.result["eval_data"]["sha256"],
                    }
                )
            run.log_files(written)
        finally:
            run.finish(self.result["status"])

    def _report_folder(self) -> Path:
        if self.p.report_dir is not None:
            return self.p.report_dir
        stamp = self._started_at.strftime("%Y%m%dT%H%M%SZ")
        name = f"{self.p.model_name}-v{self.result['model_version']}-{stamp}"
        return self.p.registry.home / "pipeline" / name


def _adopt(stage: StageResult, produced: StageResult) -> None:
    """Copy a stage function's verdicts into the announced stage (its timing is the outer)."""
    stage.checks.extend(produced.checks)
    stage.figures.update(produced.figures)
    stage.skipped = produced.skipped


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "fail", None: "n/a"}[passed]


def record_refusal(pipeline: DeploymentPipeline, path: Path, stage: StageResult) -> dict[str, Any]:
    """The result, report and MLflow run of a model file refused before registration.

    Like any run, it leaves a report a CI job can keep and a run in ``experiment_name``, so a
    refusal is on record beside the runs that judged registered versions.
    """
    from cvdeploy.pipeline.report import write_report

    started = datetime.now(timezone.utc)
    result: dict[str, Any] = {
        "status": "rejected",
        "model_name": pipeline.model_name,
        "model_version": None,
        "model_file": str(path),
        "task": None,
        "champion_version": pipeline.champion_version(),
        "endpoint": None,
        "metrics": {},
        "gates": [],
        "stages": [stage.to_dict()],
        "rollout": None,
        "timings": {stage.name: round(stage.seconds, 3), "total": round(stage.seconds, 3)},
        "reasons": stage.reasons,
        "notes": [f"{path.name} was not registered"],
        "eval_data": None,
        "experiment_name": pipeline.experiment_name,
        "run_id": None,
        "report": None,
        "started_at": started.isoformat(timespec="seconds"),
    }
    run = PipelineRun(
        pipeline.registry.client,
        pipeline.registry.experiment_id(pipeline.experiment_name),
        run_name=f"{pipeline.model_name}-{path.name}",
        tags={"cvdeploy.model": pipeline.model_name, "cvdeploy.model_file": str(path)},
    )
    result["run_id"] = run.run_id
    folder = pipeline.report_dir or (
        pipeline.registry.home
        / "pipeline"
        / f"{pipeline.model_name}-{path.stem}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    )
    result["report"] = str(folder)
    try:
        run.log_stage(stage)
        run.log_files(write_report(result, {}, folder))
    finally:
        run.finish("rejected")
    pipeline.last_result = result
    return result
