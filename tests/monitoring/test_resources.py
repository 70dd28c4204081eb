"""Resource figures: the watched processes' CPU as a share of the machine, memory, no fake GPU."""

from __future__ import annotations

import subprocess
import sys
import time

from cvdeploy.monitoring import resources
from cvdeploy.monitoring.resources import ResourceSampler, gpu_sample


def test_a_busy_child_shows_up_as_cpu_of_the_machine():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = ResourceSampler(pids=lambda: [child.pid])
        time.sleep(0.3)
        assert sampler.sample()["cpu_percent"] > 0  # since the child started: not a blank 0
        time.sleep(0.5)
        sample = sampler.sample()
    finally:
        child.kill()
        child.wait()
    cores = sample["cores"]
    # One spinning core is 100 / cores percent of the machine (give or take scheduling).
    assert 0.5 * 100 / cores <= sample["cpu_percent"] <= 100
    assert sample["rss_bytes"] > 1_000_000
    assert 0 < sample["memory_percent"] <= 100


def test_gone_processes_are_skipped():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    sample = ResourceSampler(pids=lambda: [child.pid]).sample()
    assert sample["cpu_percent"] == 0
    assert sample["rss_bytes"] == 0


def test_no_gpu_means_none_not_zero(monkeypatch):
    monkeypatch.setattr(resources._Nvml, "module", None)
    monkeypatch.setattr(resources._Nvml, "failed", False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as without the package
    assert gpu_sample() == {
        "gpu_utilization": None,
        "gpu_memory_percent": None,
        "gpu_memory_bytes": None,
    }


def test_gpu_figures_come_from_nvml_when_it_is_there(monkeypatch):
    import types

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=37),
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=4 << 30, total=16 << 30),
    )
    monkeypatch.setattr(resources._Nvml, "module", None)
    monkeypatch.setattr(resources._Nvml, "failed", False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_sample() == {
        "gpu_utilization": 37.0,
        "gpu_memory_percent": 25.0,
        "gpu_memory_bytes": 4 << 30,
    }
