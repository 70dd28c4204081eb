"""Which ONNX Runtime execution providers and how many threads: pure functions, unit-tested."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cvdeploy.errors import ModelLoadError

__all__ = ["default_intra_op_threads", "select_providers", "usable_cores"]

CPU: Final = "CPUExecutionProvider"
# Fastest first. TensorRT builds an engine on first load (minutes for a big model); pass
# providers=["cuda"] to skip it.
_AUTO_ORDER: Final = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_ALIASES: Final = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "qnn": "QNNExecutionProvider",
}


def select_providers(requested: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The execution providers to ask ONNX Runtime for, in priority order.

    Args:
        requested: ``"auto"`` or None (TensorRT, then CUDA, when available, then CPU), one
            provider, or a list. Short names work: ``"cuda"``, ``"tensorrt"``, ``"cpu"``...
        available: what ``onnxruntime.get_available_providers()`` reports.

    Returns:
        Provider names, always ending with the CPU provider as the fallback for operators the
        accelerator does not implement.

    Raises:
        ModelLoadError: a requested provider is not available in this onnxruntime build.
    """
    if requested is None or (isinstance(requested, str) and requested.lower() == "auto"):
        chosen = [name for name in _AUTO_ORDER if name in available]
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        chosen = []
        for name in names:
            full = _ALIASES.get(name.lower(), name) if isinstance(name, str) else name
            if full not in available:
                raise ModelLoadError(
                    f"execution provider {name!r} is not available in this onnxruntime build; "
                    f"available: {', '.join(available) or 'none'}"
                    + (
                        " (install onnxruntime-gpu for CUDA/TensorRT)"
                        if full in _AUTO_ORDER
                        else ""
                    )
                )
            if full not in chosen:
                chosen.append(full)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def default_intra_op_threads(workers: int = 1, cores: int | None = None) -> int:
    """Threads per ONNX Runtime session so that ``workers`` sessions share the cores evenly.

    More threads than cores makes every inference slower (threads spin and preempt each other),
    which is the usual cause of a server being slower than a single benchmark process.
    """
    total = usable_cores() if cores is None else cores
    return max(1, total // max(1, workers))


def _cgroup_cpu_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    # A container limited to 2 CPUs on a 64-core host still sees 64 in its affinity mask.
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None
