"""Replica processes of the local platform: readiness, load errors, crash restarts, draining."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import model_factory  # type: ignore[import-not-found, unused-ignore]
import psutil
import pytest

from cvdeploy.errors import ModelLoadError
from cvdeploy.platforms.local.replicas import (
    Replica,
    ReplicaSet,
    ReplicaSpec,
    free_loopback_port,
)
from cvdeploy.serving.settings import ServeSettings


def _serving_children() -> list[psutil.Process]:
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "serve-settings" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                children.append(child)
        except psutil.Error:
            continue
    return children


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Kill any replica a failing test left behind, then fail if there was one."""
    yield
    leftovers = _serving_children()
    for child in leftovers:
        child.kill()
    psutil.wait_procs(leftovers, timeout=5)
    assert not leftovers, f"replica processes left running: {leftovers}"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "colors.onnx"
    made: Path = model_factory.make_classifier_model(path, num_classes=3)
    return made


def _spec(
    model: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    memory_limit_mb: int | None = None,
) -> ReplicaSpec:
    settings = ServeSettings.create(
        model_path=str(model),
        name="ep",
        version="1",
        batching={"tune_batch_size": False},  # start-up timing would only slow the tests
        intra_op_threads=1,
    )
    return ReplicaSpec("ep", "main", settings, log_dir, env or {}, memory_limit_mb)


def _state(replica: Replica) -> str:
    # Read through a function: mypy would otherwise keep the state narrowed across awaits.
    return replica.state


def test_free_loopback_port_can_be_bound() -> None:
    port = free_loopback_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_replica_becomes_ready_with_its_env_and_memory_limit(
    model_path: Path, tmp_path: Path
) -> None:
    spec = _spec(model_path, tmp_path / "logs", env={"OMP_NUM_THREADS": "1"}, memory_limit_mb=8192)
    replica = Replica(spec, 0)

    async def scenario() -> None:
        replica.start()
        assert replica.state == "starting"
        try:
            await replica.wait_ready(30)
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.get(f"{replica.url}/v2/health/ready")
            assert response.status_code == 200
            assert _state(replica) == "ready"
            process = psutil.Process(replica.pid)
            assert process.environ()["OMP_NUM_THREADS"] == "1"
            assert process.rlimit(psutil.RLIMIT_AS) == (8192 << 20, 8192 << 20)
            assert replica.rss_bytes() is not None
            assert replica.cpu_percent() is not None
        finally:
            await replica.stop(drain_timeout=0)
        await replica.stop()  # idempotent

    asyncio.run(scenario())
    assert replica.state == "stopped"
    assert not replica.alive()
    assert replica.cpu_percent() is None
    header = replica.log_path.read_text().splitlines()[0]
    assert header.startswith(f"=== replica 0 of ep/main starting (pid {replica.pid}, port ")


def test_unloadable_model_raises_load_error_with_log_tail(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00not an onnx model\xff" * 50)
    events: list[str] = []
    replicas = ReplicaSet(_spec(bad, tmp_path / "logs"), on_event=events.append)

    async def scenario() -> None:
        await replicas.scale_to(1)
        with pytest.raises(ModelLoadError) as info:
            await replicas.wait_ready(1, timeout=30)
        assert "exited with code 1" in str(info.value)
        assert "cannot load ONNX model" in str(info.value)  # the child's own error, from its log
        await replicas.stop_all()

    asyncio.run(scenario())
    assert replicas.failures == 1
    assert replicas.count == 0
    crash = next(e for e in events if "failed to become ready" in e)
    assert crash.startswith("replica 0 of ep/main failed to become ready (exited with code 1): ")
    assert "cannot load ONNX model" in crash
    assert crash.endswith("; restarting in 1.0 s")
    assert "\n" not in crash


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _crash(replicas: ReplicaSet, replica: Replica) -> None:
    replica.kill()
    while replica.alive():
        await asyncio.sleep(0.01)
    replicas.check()


def test_killed_replica_is_restarted_with_doubling_backoff(
    model_path: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    events: list[str] = []
    replicas = ReplicaSet(
        _spec(model_path, tmp_path / "logs"),
        backoff_initial_s=0.1,
        stable_after_s=60,
        clock=clock,
        on_event=events.append,
    )

    async def scenario() -> None:
        try:
            await replicas.scale_to(1)
            await replicas.wait_ready(1, timeout=30)
            await _crash(replicas, replicas.replicas[0])
            assert replicas.count == 0
            assert "replica 0 of ep/main exited with code -9; restarting in 0.1 s" in events
            await replicas.scale_to(1)  # the autoscaler's next tick must not skip the backoff
            clock.now += 0.09
            replicas.check()
            assert replicas.count == 0
            clock.now += 0.01
            replicas.check()
            assert replicas.count == 1
            second = replicas.replicas[0]
            assert (second.index, second.restarts) == (1, 1)
            await replicas.wait_ready(1, timeout=30)

            await _crash(replicas, second)  # a second crash soon after the first doubles the delay
            assert events[-1] == "replica 1 of ep/main exited with code -9; restarting in 0.2 s"
            clock.now += 0.2
            replicas.check()
            third = replicas.replicas[0]
            assert (third.index, third.restarts) == (2, 2)
            await replicas.wait_ready(1, timeout=30)

            clock.now += 60  # up long enough: the next crash starts the backoff over
            await _crash(replicas, third)
            assert events[-1] == "replica 2 of ep/main exited with code -9; restarting in 0.1 s"
            assert replicas.failures == 3
            assert "exited with code -9" in (replicas.last_error or "")
        finally:
            await replicas.stop_all(drain_timeout=0)

    asyncio.run(scenario())


def test_replica_not_ready_in_time_is_stopped(model_path: Path, tmp_path: Path) -> None:
    replica = Replica(_spec(model_path, tmp_path / "logs"), 3)

    async def scenario() -> None:
        replica.start()
        with pytest.raises(ModelLoadError, match=r"replica 3 of ep/main not ready after 0\.01 s"):
            await replica.wait_ready(0.01)

    asyncio.run(scenario())
    assert replica.state == "failed"
    assert not replica.alive()


def test_scale_down_drains_in_flight_requests_before_stopping(
    model_path: Path, tmp_path: Path
) -> None:
    replicas = ReplicaSet(_spec(model_path, tmp_path / "logs"))

    async def scenario() -> None:
        try:
            await replicas.scale_to(2)
            assert replicas.count == 2
            await replicas.wait_ready(2, timeout=30)
            older, newer = replicas.replicas
            newer.in_flight = 1
            await replicas.scale_to(1)
            assert replicas.replicas == [older]  # the newest ready replica goes first
            started = time.monotonic()
            await asyncio.sleep(0.2)
            assert _state(newer) == "draining"
            assert newer.alive()
            newer.in_flight = 0
            while _state(newer) != "stopped":
                await asyncio.sleep(0.01)
            assert time.monotonic() - started >= 0.2
            assert not newer.alive()
            assert [row["index"] for row in replicas.describe()] == [0]
        finally:
            await replicas.stop_all(drain_timeout=0)
        assert replicas.count == 0
        assert not older.alive()

    asyncio.run(scenario())
    assert _serving_children() == []


def test_scale_down_prefers_starting_replicas(model_path: Path, tmp_path: Path) -> None:
    replicas = ReplicaSet(_spec(model_path, tmp_path / "logs"))

    async def scenario() -> None:
        try:
            await replicas.scale_to(1)
            await replicas.wait_ready(1, timeout=30)
            await replicas.scale_to(3)
            assert [r.state for r in replicas.replicas] == ["ready", "starting", "starting"]
            await replicas.scale_to(1)
            assert [r.index for r in replicas.replicas] == [0]
            assert [row["state"] for row in replicas.describe()][1:] == ["draining", "draining"]
        finally:
            await replicas.stop_all(drain_timeout=0)
        assert replicas.describe() == []

    asyncio.run(scenario())
