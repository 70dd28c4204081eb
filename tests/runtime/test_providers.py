from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.errors import ModelLoadError
from cvdeploy.runtime import default_intra_op_threads, select_providers
from cvdeploy.runtime import providers as providers_module

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
GPU_BUILD = [TRT, CUDA, CPU]


@pytest.mark.parametrize("requested", [None, "auto", "AUTO"])
def test_auto_prefers_tensorrt_then_cuda_then_cpu(requested: str | None) -> None:
    assert select_providers(requested, GPU_BUILD) == [TRT, CUDA, CPU]


def test_auto_on_a_cpu_build_is_cpu() -> None:
    assert select_providers("auto", [CPU]) == [CPU]
    assert select_providers("auto", ["AzureExecutionProvider", CPU]) == [CPU]


def test_auto_with_cuda_but_no_tensorrt() -> None:
    assert select_providers(None, [CUDA, CPU]) == [CUDA, CPU]


def test_short_names_and_cpu_fallback() -> None:
    assert select_providers("cuda", GPU_BUILD) == [CUDA, CPU]
    assert select_providers(["trt", "cuda"], GPU_BUILD) == [TRT, CUDA, CPU]
    assert select_providers(["cpu"], GPU_BUILD) == [CPU]


def test_full_names_and_duplicates() -> None:
    assert select_providers([CUDA, "cuda", CPU], GPU_BUILD) == [CUDA, CPU]


def test_unavailable_provider_names_it_and_the_available_ones() -> None:
    with pytest.raises(ModelLoadError) as info:
        select_providers(["cuda"], ["AzureExecutionProvider", CPU])
    message = str(info.value)
    assert "'cuda'" in message
    assert "AzureExecutionProvider, CPUExecutionProvider" in message
    assert "onnxruntime-gpu" in message


def test_default_threads_split_cores_between_workers() -> None:
    assert default_intra_op_threads(workers=1, cores=8) == 8
    assert default_intra_op_threads(workers=3, cores=8) == 2
    assert default_intra_op_threads(workers=16, cores=8) == 1
    assert default_intra_op_threads(workers=0, cores=4) == 4


def test_default_threads_use_the_usable_cores() -> None:
    assert default_intra_op_threads() == providers_module.usable_cores() >= 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("max 100000\n", None), ("garbage", None)],
)
def test_cgroup_quota_is_rounded_up_to_whole_cores(
    tmp_path: Path, content: str, expected: int | None
) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(content)
    assert providers_module._cgroup_cpu_quota(cpu_max) == expected


def test_missing_cgroup_file_means_no_quota(tmp_path: Path) -> None:
    assert providers_module._cgroup_cpu_quota(tmp_path / "absent") is None
