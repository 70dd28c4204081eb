"""Resource requirements: how big the model is, how long it takes to load, how much memory it takes.

The model is loaded in a fresh child process (``python -m cvdeploy.pipeline.resources``), so the
peak resident memory is the model's own: not that of the pipeline process, which may already hold
other models, an MLflow client and test data. The child measures its resident memory after the
imports (the baseline), loads and warms the model up, runs one image through ``predict`` and
reports the peak; the difference is what each replica pays for this model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.stages import StageResult, timed_stage

__all__ = ["ResourceLimits", "measure_resources"]

_MB = 2**20
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class ResourceLimits:
    """Upper bounds for one replica; None means no limit (the check reports the value only).

    Attributes:
        max_model_mb: the ONNX file plus its external data, in MiB.
        max_load_s: seconds from ``load_model`` to a warmed-up model.
        max_memory_mb: peak resident memory of a process that serves only this model, in MiB
            (what a container memory limit applies to).
    """

    max_model_mb: float | None = None
    max_load_s: float | None = None
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_model_mb", "max_load_s", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"ResourceLimits.{name} must be > 0 or None, got {value!r}")


def measure_resources(
    onnx_path: Path,
    *,
    task: str | None = None,
    limits: ResourceLimits = ResourceLimits(),
    providers: Sequence[str] | None = None,
    timeout_s: float = 300,
) -> StageResult:
    """Measure load time and memory in a child process and compare them with ``limits``.

    Returns:
        The ``resources`` stage: checks ``measure``, ``model_size``, ``load_time``, ``memory``;
        figures ``model_mb``, ``load_s``, ``infer_ms``, ``baseline_rss_mb``, ``peak_rss_mb``,
        ``model_rss_mb``.
    """
    with timed_stage("resources") as stage:
        path = Path(onnx_path)
        if not path.is_file():
            stage.check("measure", False, f"{path} is not a file; pass the .onnx model file")
            return stage
        # Imported here: the child runs this module and should not pay for onnx.
        from cvdeploy.pipeline.security import onnx_footprint

        try:
            model_mb = onnx_footprint(path)[0] / _MB
        except Exception:  # not a readable ONNX file: the child says why
            model_mb = path.stat().st_size / _MB
        stage.figures["model_mb"] = round(model_mb, 3)
        measured = _run_child(stage, path, task, providers, timeout_s)
        _limit_check(stage, "model_size", model_mb, limits.max_model_mb, "MiB", _SIZE_FIX)
        if measured is None:
            for name in ("load_time", "memory"):
                stage.check(name, None, "not measured: the child process failed")
            return stage
        _limit_check(stage, "load_time", measured["load_s"], limits.max_load_s, "s", _LOAD_FIX)
        _limit_check(
            stage, "memory", measured["peak_rss_mb"], limits.max_memory_mb, "MiB", _MEMORY_FIX
        )
    return stage


_SIZE_FIX = "shrink the model (quantise, prune, a smaller architecture) or raise max_model_mb"
_LOAD_FIX = "simplify the graph (onnxsim), use a smaller model or raise max_load_s"
_MEMORY_FIX = "use a smaller model or input size, or raise max_memory_mb (and the replica's memory)"


def _limit_check(
    stage: StageResult, name: str, value: float, limit: float | None, unit: str, fix: str
) -> None:
    shown = f"{value:.3g} {unit}" if unit == "s" else f"{value:.1f} {unit}"
    if limit is None:
        stage.check(name, None, f"no limit set; measured {shown}", value=round(value, 3))
    elif value > limit:
        stage.check(
            name,
            False,
            f"{name.replace('_', ' ')} {shown} is over the limit of {limit} {unit}; {fix}",
            value=round(value, 3),
            threshold=limit,
        )
    else:
        stage.check(name, True, f"{shown} (limit {limit} {unit})", round(value, 3), limit)


def _run_child(
    stage: StageResult,
    path: Path,
    task: str | None,
    providers: Sequence[str] | None,
    timeout_s: float,
) -> dict[str, float] | None:
    request = json.dumps(
        {
            "path": str(path),
            "task": task,
            "providers": None if providers is None else list(providers),
        }
    )
    env = dict(os.environ)
    # The child must import this very cvdeploy, installed or not.
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "cvdeploy.pipeline.resources", request]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stage.check(
            "measure",
            False,
            f"loading {path.name} took over {timeout_s} s (timeout_s) and was stopped; "
            f"stderr: {_tail(exc.stderr)}",
        )
        return None
    report = _last_json_line(done.stdout)
    if done.returncode != 0 or report is None or "error" in report:
        why = report.get("error") if report else None
        stage.check(
            "measure",
            False,
            f"the child process loading {path.name} failed (exit code {done.returncode}): "
            + (str(why) if why else f"stderr: {_tail(done.stderr)}"),
            value=done.returncode,
        )
        return None
    figures = {k: float(v) for k, v in report.items()}
    figures["model_rss_mb"] = max(0.0, figures["peak_rss_mb"] - figures["baseline_rss_mb"])
    for key, value in figures.items():
        stage.figures[key] = round(value, 3)
    stage.check(
        "measure",
        True,
        f"loaded in {figures['load_s']:.3g} s; peak RSS {figures['peak_rss_mb']:.1f} MiB, of "
        f"which the model {figures['model_rss_mb']:.1f} MiB",
    )
    return figures


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return "(none)"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-_TAIL_CHARS:] if text else "(empty)"


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


# --- the child ---------------------------------------------------------------------------------


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / _MB


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows: the peak working set
        import psutil

        return float(getattr(psutil.Process().memory_info(), "peak_wset", 0)) / _MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return float(peak) / _MB if sys.platform == "darwin" else float(peak) / 1024


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Load, warm up and run one image; everything heavy is imported before the baseline."""
    import numpy as np

    from cvdeploy.errors import CVDeployError
    from cvdeploy.runtime.loader import load_model

    baseline = _rss_mb()
    try:
        started = time.perf_counter()
        model = load_model(
            request["path"], request["task"], providers=request["providers"], warmup=True
        )
        load_s = time.perf_counter() - started
        height, width = model.input_size
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        started = time.perf_counter()
        model.predict([image])
        infer_ms = (time.perf_counter() - started) * 1000
    except CVDeployError as exc:
        return {"error": exc.message}
    return {
        "load_s": load_s,
        "infer_ms": infer_ms,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child: one JSON request in ``argv``, one JSON line on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cvdeploy.pipeline.resources REQUEST_JSON", file=sys.stderr)
        return 2
    report = _child(json.loads(args[0]))
    print(json.dumps(report), flush=True)
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
