"""The instance-type table and what it gives a replica."""

from __future__ import annotations

import pytest

from cvdeploy.errors import ConfigError
from cvdeploy.platforms.instance_types import (
    INSTANCE_TYPES,
    InstanceType,
    as_markdown_table,
    lookup,
    replica_resources,
)

REQUIRED = [
    "Standard_DS3_v2",
    "Standard_DS4_v2",
    "Standard_DS5_v2",
    "Standard_D4s_v3",
    "Standard_D8s_v3",
    "Standard_F4s_v2",
    "Standard_F8s_v2",
    "Standard_NC6s_v3",
    "Standard_NC4as_T4_v3",
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "c5.xlarge",
    "c5.2xlarge",
    "g4dn.xlarge",
    "g5.xlarge",
    "n2-standard-4",
    "n2-standard-8",
    "Small",
    "Medium",
    "Large",
    "GPU_SMALL",
    "GPU_MEDIUM",
    "GPU_LARGE",
    "cpu-2",
    "cpu-4",
    "cpu-8",
    "gpu-1",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_every_documented_name_resolves(name: str) -> None:
    assert lookup(name).name == name


def test_names_are_unique_ignoring_case() -> None:
    names = [t.name.lower() for t in INSTANCE_TYPES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "vcpus", "memory_gb"),
    [
        ("Standard_DS3_v2", 4, 14),
        ("Standard_DS4_v2", 8, 28),
        ("Standard_DS5_v2", 16, 56),
        ("Standard_D4s_v3", 4, 16),
        ("Standard_F8s_v2", 8, 16),
        ("Standard_NC6s_v3", 6, 112),
        ("Standard_NC4as_T4_v3", 4, 28),
        ("m5.large", 2, 8),
        ("c5.2xlarge", 8, 16),
        ("g4dn.xlarge", 4, 16),
        ("n2-standard-8", 8, 32),
    ],
)
def test_published_cloud_figures(name: str, vcpus: int, memory_gb: float) -> None:
    instance = lookup(name)
    assert (instance.vcpus, instance.memory_gb) == (vcpus, memory_gb)


def test_lookup_ignores_case_and_spaces() -> None:
    assert lookup(" standard_ds3_V2 ") is lookup("Standard_DS3_v2")
    assert lookup("gpu_small").name == "GPU_SMALL"


def test_gpu_instances_carry_gpu_workload_types() -> None:
    assert lookup("Standard_NC6s_v3").gpu
    assert lookup("g4dn.xlarge").workload_type == "GPU_SMALL"
    assert lookup("g5.xlarge").workload_type == "GPU_MEDIUM"
    assert lookup("GPU_LARGE").workload_type == "GPU_LARGE"
    assert "T4" in lookup("Standard_NC4as_T4_v3").accelerator
    assert "V100" in lookup("Standard_NC6s_v3").accelerator


def test_cpu_instances_are_cpu_workloads_sized_by_vcpus() -> None:
    assert all(t.workload_type == "CPU" for t in INSTANCE_TYPES if not t.gpu)
    assert all(t.workload_type != "CPU" for t in INSTANCE_TYPES if t.gpu)
    assert lookup("m5.large").workload_size == "Small"
    assert lookup("Standard_DS4_v2").workload_size == "Medium"
    assert lookup("Standard_DS5_v2").workload_size == "Large"
    assert [lookup(n).workload_size for n in ("Small", "Medium", "Large")] == [
        "Small",
        "Medium",
        "Large",
    ]


def test_any_cpu_n_is_parsed() -> None:
    assert lookup("cpu-16") == InstanceType("cpu-16", 16, 32, workload_size="Large")
    assert lookup("CPU-3").vcpus == 3


@pytest.mark.parametrize("name", ["cpu-0", "cpu-", "cpu-x", "p4d.24xlarge", ""])
def test_unknown_name_lists_known_names_and_cpu_n(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        lookup(name)
    assert "Standard_DS3_v2" in info.value.message
    assert "g4dn.xlarge" in info.value.message
    assert "cpu-N" in info.value.message


def test_replica_threads_are_capped_by_host_cpus() -> None:
    big = lookup("Standard_DS5_v2")
    assert replica_resources(big, host_cpus=4) == {
        "intra_op_threads": 4,
        "memory_limit_mb": 56 * 1024,
    }
    assert replica_resources(lookup("cpu-2"), host_cpus=64)["intra_op_threads"] == 2


def test_replica_gets_at_least_one_thread() -> None:
    assert replica_resources(lookup("m5.large"), host_cpus=0)["intra_op_threads"] == 1


def test_replica_resources_default_to_this_host() -> None:
    threads = replica_resources(lookup("cpu-1024"))["intra_op_threads"]
    assert 1 <= threads <= 1024


def test_markdown_table_has_a_row_per_instance() -> None:
    table = as_markdown_table()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Name |")
    assert len(lines) == 2 + len(INSTANCE_TYPES)
    assert "| `Standard_DS3_v2` | azure | 4 | 14 | - | CPU | Small |" in lines
    assert "| `g5.xlarge` | aws | 4 | 16 | NVIDIA A10G 24 GB | GPU_MEDIUM | Small |" in lines
