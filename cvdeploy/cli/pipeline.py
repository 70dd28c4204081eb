"""``cvdeploy pipeline run``: the deployment pipeline for CI, with exit codes CI can act on.

Exit codes: 0 deployed; 2 a usage or configuration error (nothing ran); 3 rejected by a
stage (nothing deployed); 4 rolled back during the rollout (the champion serves); 5 failed
(a fault such as an unreachable platform; see the reasons). 1 is left to crashes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from cvdeploy.cli.output import console, err_console, fail, print_json
from cvdeploy.errors import ConfigError, CVDeployError

__all__ = ["EXIT_CODES", "pipeline_app"]

#: The exit code of each final status.
EXIT_CODES = {"deployed": 0, "rejected": 3, "rolled_back": 4, "failed": 5}

pipeline_app = typer.Typer(
    help="Validate, evaluate, gate and roll out model versions (CI/CD).", no_args_is_help=True
)

_MARK = {
    "passed": "[green]✓[/]",
    "failed": "[red]✗[/]",
    "skipped": "[yellow]-[/]",
    "progress": "[cyan]·[/]",
}


class _Progress:
    """Prints one line per finished stage and a spinner while a stage runs."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._status: Status | None = None
        self._started: dict[str, float] = {}

    def __call__(self, stage: str, status: str, detail: str) -> None:
        if self._quiet:
            return
        target = err_console
        if status == "start":
            self._started[stage] = time.perf_counter()
            self._stop()
            if target.is_terminal:
                self._status = target.status(f"{stage}...")
                self._status.start()
            return
        if status == "progress":
            target.print(f"  {_MARK['progress']} {escape(stage)}: {escape(detail)}")
            return
        self._stop()
        mark = _MARK.get(status, "[red]✗[/]")
        target.print(f"{mark} [bold]{escape(stage)}[/] {escape(status)}: {escape(detail)}")

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        self._stop()


def _thresholds(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--threshold {item!r} is not METRIC=NUMBER (e.g. accuracy=0.9)")
    return out


@pipeline_app.command("run")
def run(
    model: Annotated[str, typer.Option(help="Registered model name.")] = "cv_model",
    version: Annotated[
        str | None,
        typer.Option(help="Candidate version or alias [the 'candidate' alias, else latest]."),
    ] = None,
    model_file: Annotated[
        Path | None,
        typer.Option(help="Security-check this file, register it and make it the candidate."),
    ] = None,
    model_type: Annotated[
        str | None, typer.Option("--type", help="Task of --model-file [from its metadata].")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Class names of --model-file.")] = None,
    source_commit: Annotated[
        str | None, typer.Option(help="Commit --model-file was built from (recorded).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Config YAML [discovered].")] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Labelled images [ci_cd.eval_data, else the version's].")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Endpoint [ci_cd.endpoint_name, else MODEL-endpoint].")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="METRIC=MIN, repeatable [ci_cd.metrics_threshold]."),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "cvdeploy-pipeline",
    report_dir: Annotated[
        Path | None, typer.Option(help="Report folder [$CVDEPLOY_HOME/pipeline/...].")
    ] = None,
    workspace_url: Annotated[
        str | None,
        typer.Option(envvar="CVDEPLOY_URL", help="Platform URL [the embedded local platform]."),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="CVDEPLOY_TOKEN", help="Platform token.")
    ] = None,
    registry_uri: Annotated[
        str | None,
        typer.Option(envvar="CVDEPLOY_REGISTRY_URI", help="MLflow registry URI [local]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the pipeline on a candidate: security, compatibility, resources, performance,
    evaluation, gates, then a gradual rollout with automatic rollback."""
    from cvdeploy.pipeline import DeploymentPipeline

    progress = _Progress(quiet=as_json)
    pipeline: DeploymentPipeline | None = None
    try:
        pipeline = DeploymentPipeline(
            workspace_url,
            token,
            model,
            experiment,
            config=config,
            eval_data=eval_data,
            model_version=version,
            registry_uri=registry_uri,
            report_dir=report_dir,
            on_event=progress,
        )
        thresholds = _thresholds(threshold)
        if model_file is not None:
            submitted, stage = pipeline.submit(
                model_file, task=model_type, labels=labels, source_commit=source_commit
            )
            if submitted is None:
                from cvdeploy.pipeline.run import record_refusal

                result = record_refusal(pipeline, model_file, stage)
                progress.close()
                _finish(result, as_json)
                return
        result = pipeline.run_pipeline(thresholds, endpoint)
    except CVDeployError as exc:
        progress.close()
        raise fail(exc) from None
    except KeyboardInterrupt:
        progress.close()
        _interrupted(pipeline.last_result if pipeline is not None else {})
        raise typer.Exit(code=130) from None
    finally:
        progress.close()
    _finish(result, as_json)


def _interrupted(result: dict[str, Any]) -> None:
    err_console.print("[bold red]interrupted[/]: the run stopped before it finished")
    if result.get("run_id"):
        err_console.print(f"  MLflow run {escape(str(result['run_id']))} ended FAILED")
    if result.get("report"):
        err_console.print(f"  report: {escape(str(result['report']))}/report.html")
    err_console.print("  nothing was promoted; a rollout in progress was put back on its champion")


def _finish(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(json.loads(json.dumps(result, default=str)))
    else:
        _print_result(result)
    code = EXIT_CODES.get(str(result.get("status")), 5)
    if code:
        raise typer.Exit(code=code)


def _print_result(result: dict[str, Any]) -> None:
    status = str(result.get("status"))
    colour = "green" if status == "deployed" else "red"
    version = result.get("model_version")
    what = f"{result.get('model_name')} " + (
        f"version {version}" if version else f"file {result.get('model_file')}"
    )
    if result.get("endpoint"):
        what += f" at endpoint {result['endpoint']}"
    console.print(f"[bold {colour}]{escape(status.upper().replace('_', ' '))}[/] {escape(what)}")
    gates = result.get("gates") or []
    if gates:
        table = Table(title="gates", title_justify="left")
        for column in ("gate", "value", "threshold", "verdict"):
            table.add_column(column)
        for gate in gates:
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "n/a"}[gate["passed"]]
            table.add_row(
                escape(gate["name"]), _fmt(gate.get("value")), _fmt(gate.get("threshold")), verdict
            )
        console.print(table)
    for reason in result.get("reasons") or []:
        console.print(f"  [red]•[/] {escape(reason)}")
    for note in result.get("notes") or []:
        console.print(f"  [yellow]•[/] {escape(note)}")
    if result.get("report"):
        console.print(f"report: {escape(str(result['report']))}/report.html")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
