"""CPU, memory and GPU use of the serving processes and of the machine.

Units follow DESIGN's "Decisions": percent for cpu and memory. ``cpu_percent`` is the watched
processes' CPU as a share of the whole machine (0-100, so a seed's ``cpu: 80`` means 80 % of the
machine whatever its core count), ``memory_percent`` the machine's memory in use, as node
exporters report it; the processes' own resident memory is ``rss_bytes``. GPU figures come
from NVML (``nvidia-ml-py``) when it and a GPU are present, else they are None, never 0.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

__all__ = ["ResourceSampler", "gpu_sample"]

logger = logging.getLogger("cvdeploy.monitoring")


class ResourceSampler:
    """Samples the processes ``pids()`` returns (default: this process and its children).

    CPU is measured between two calls, as ``top`` does; a process seen for the first time is
    measured since it started, so the first reading is an average rather than a useless 0.
    """

    def __init__(self, pids: Callable[[], Sequence[int]] | None = None) -> None:
        self._pids = pids
        self._procs: dict[int, psutil.Process] = {}
        # pid -> (wall time, CPU seconds) at the previous reading
        self._last: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._cores = psutil.cpu_count() or os.cpu_count() or 1
        psutil.cpu_percent(None)  # primes the machine-wide reading

    def _watched(self) -> list[psutil.Process]:
        if self._pids is not None:
            wanted = list(self._pids())
        else:
            me = psutil.Process()
            wanted = [me.pid, *(c.pid for c in me.children(recursive=True))]
        alive: dict[int, psutil.Process] = {}
        for pid in wanted:
            proc = self._procs.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:
                    continue
            alive[pid] = proc
        self._procs = alive
        self._last = {pid: v for pid, v in self._last.items() if pid in alive}
        return list(alive.values())

    def _cpu_seconds_per_second(self, proc: psutil.Process, now: float) -> float:
        times = proc.cpu_times()
        used = times.user + times.system
        before = self._last.get(proc.pid)
        if before is None:
            before = (proc.create_time(), 0.0)
        self._last[proc.pid] = (now, used)
        elapsed = now - before[0]
        return max(0.0, used - before[1]) / elapsed if elapsed > 0 else 0.0

    def sample(self) -> dict[str, Any]:
        """``cpu_percent``, ``system_cpu_percent``, ``memory_percent``, ``rss_bytes`` and the
        GPU figures (``gpu_utilization``, ``gpu_memory_percent``, ``gpu_memory_bytes``)."""
        with self._lock:
            now = time.time()
            busy = 0.0
            rss = 0
            for proc in self._watched():
                try:
                    with proc.oneshot():
                        busy += self._cpu_seconds_per_second(proc, now)
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
        memory = psutil.virtual_memory()
        return {
            "cpu_percent": round(min(100.0, 100.0 * busy / self._cores), 2),
            "system_cpu_percent": round(psutil.cpu_percent(None), 2),
            "memory_percent": round(float(memory.percent), 2),
            "rss_bytes": rss,
            "cores": self._cores,
            **gpu_sample(),
        }


class _Nvml:
    """NVML, loaded once; after one failure (no package, driver or GPU) it is not retried."""

    module: Any = None
    failed = False


def gpu_sample() -> dict[str, float | int | None]:
    """Utilisation and memory of GPU 0, or Nones without NVML or a GPU."""
    empty: dict[str, float | int | None] = {
        "gpu_utilization": None,
        "gpu_memory_percent": None,
        "gpu_memory_bytes": None,
    }
    if _Nvml.failed:
        return empty
    try:
        if _Nvml.module is None:
            nvml = importlib.import_module("pynvml")  # nvidia-ml-py, optional
            nvml.nvmlInit()
            _Nvml.module = nvml
        nvml = _Nvml.module
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as exc:  # no package, no driver, no device: all mean "no GPU figures"
        _Nvml.failed = True
        logger.debug("no GPU figures: %s", exc)
        return empty
    return {
        "gpu_utilization": float(util.gpu),
        "gpu_memory_percent": round(100.0 * memory.used / max(1, memory.total), 2),
        "gpu_memory_bytes": int(memory.used),
    }
