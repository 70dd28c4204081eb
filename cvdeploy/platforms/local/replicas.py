"""Replica processes: each replica of a served entity is one serving process on a loopback port.

A :class:`Replica` is one ``cvdeploy serve-settings`` child (the ordinary serving core, which
loads the model before it binds) with its output appended to a log file. A :class:`ReplicaSet`
keeps the replicas of one served entity at the count the autoscaler asks for: it starts new ones
without waiting for them, drains surplus ones before stopping them, and replaces a replica whose
process died after an exponential backoff.

Everything here runs on the platform's event loop (uvicorn's, possibly uvloop), so nothing uses
the asyncio subprocess API, which depends on the loop's child watcher: processes are started with
:class:`subprocess.Popen` (fast) and every wait is an ``asyncio.sleep`` poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

from cvdeploy.errors import ModelLoadError
from cvdeploy.serving.settings import SETTINGS_ENV, ServeSettings

__all__ = ["Replica", "ReplicaSet", "ReplicaSpec", "ReplicaState", "free_loopback_port"]

logger = logging.getLogger("cvdeploy.platform")

ReplicaState = Literal["starting", "ready", "draining", "stopped", "failed"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_TERM_GRACE_S = 10.0
_LOG_LINES = 20


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica of one served entity runs.

    Attributes:
        endpoint: Endpoint name.
        entity: Served entity name.
        settings: How to serve the model; paths already resolved by the caller.
        log_dir: Folder for this entity's replica logs (created if missing).
        env: Extra environment variables for the replicas (e.g. ``OMP_NUM_THREADS``).
        memory_limit_mb: ``RLIMIT_AS`` of each replica, or None for no limit. This caps
            *address space*, not resident memory: onnxruntime and its thread pools reserve far
            more virtual memory than they touch, so allow several GiB beyond the model's size.
    """

    endpoint: str
    entity: str
    settings: ServeSettings
    log_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    memory_limit_mb: int | None = None


@functools.cache
def _load_prctl() -> Callable[..., int] | None:
    # Resolved in the parent: loading a library between fork and exec is not safe.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _child_setup(memory_limit_mb: int | None) -> Callable[[], None] | None:
    """The ``preexec_fn`` that ties a replica's life to ours and applies its memory limit."""
    prctl = _load_prctl()
    if prctl is None and memory_limit_mb is None:
        return None
    parent = os.getpid()

    def setup() -> None:
        if prctl is not None:
            # The child gets SIGTERM (a graceful drain) when the thread that started it exits,
            # so replicas never outlive a crashed platform.
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        if memory_limit_mb is not None:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return setup


class Replica:
    """One serving process of one served entity, on a free loopback port."""

    def __init__(
        self, spec: ReplicaSpec, index: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.spec = spec
        self.index = index
        self.port = 0
        self.state: ReplicaState = "starting"
        self.started_at: float | None = None
        self.restarts = 0
        #: Requests the gateway has sent to this replica and not yet seen answered.
        self.in_flight = 0
        self.last_cpu_percent: float | None = None
        self.log_path = spec.log_dir / f"replica-{index}.log"
        self._clock = clock
        self._process: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._stopping = False

    @property
    def name(self) -> str:
        return f"replica {self.index} of {self.spec.endpoint}/{self.spec.entity}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the serving process; it is ``starting`` until :meth:`wait_ready` sees it ready.

        On Linux the child gets SIGTERM when the *thread* that called this exits, so call it
        from the event loop's thread, never from a short-lived worker thread.
        """
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        env = dict(os.environ)
        env.update(self.spec.env)
        env[SETTINGS_ENV] = self.spec.settings.to_json()
        env.setdefault("PYTHONUNBUFFERED", "1")  # a load error must reach the log before exit
        command = [sys.executable, "-m", "cvdeploy.cli", "serve-settings"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        # Append mode on both sides: our header and the child's output never overwrite each other.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_child_setup(self.spec.memory_limit_mb),  # noqa: PLW1509
            )
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            header = f"=== {self.name} starting (pid {self.pid}, port {self.port}) at {now} ===\n"
            log.write(header.encode())
        self.state = "starting"
        self.started_at = self._clock()

    async def wait_ready(self, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        """Poll ``/v2/health/ready`` every 50 ms until it answers 200.

        Raises:
            ModelLoadError: The process exited first (the model's error is in the log tail), it
                was stopped, or it was not ready after ``timeout`` seconds (it is then stopped).
        """
        if client is None:
            # trust_env=False: an HTTP(S)_PROXY in the environment must not catch loopback calls.
            async with httpx.AsyncClient(timeout=2.0, trust_env=False) as own:
                return await self.wait_ready(timeout, own)
        deadline = time.monotonic() + timeout
        while True:
            if self.state in ("draining", "stopped"):
                raise ModelLoadError(f"{self.name} was stopped before it was ready")
            code = self.exit_code()
            if code is not None:
                self.state = "failed"
                raise ModelLoadError(
                    f"{self.name} exited with code {code} during start-up; "
                    f"last log lines:\n{self.last_lines()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/v2/health/ready")).status_code == 200:
                    self.state = "ready"
                    return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        await self._terminate()
        self.state = "failed"
        raise ModelLoadError(
            f"{self.name} not ready after {timeout:g} s; last log lines:\n{self.last_lines()}"
        )

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running."""
        return None if self._process is None else self._process.poll()

    def _sample(self, read: Callable[[psutil.Process], Any]) -> Any:
        # One cached Process: cpu_percent(None) measures since the previous call on the same one.
        if not self.alive() or self.pid is None:
            return None
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            return read(self._ps)
        except psutil.Error:
            return None

    def cpu_percent(self) -> float | None:
        """CPU use since the previous call (the first call primes it and may say 0.0).

        The control loop calls this once per tick; others read :attr:`last_cpu_percent`, as
        a second caller would shorten the interval the loop's reading covers.
        """
        value = self._sample(lambda p: p.cpu_percent(None))
        self.last_cpu_percent = None if value is None else float(value)
        return self.last_cpu_percent

    def rss_bytes(self) -> int | None:
        value = self._sample(lambda p: p.memory_info().rss)
        return None if value is None else int(value)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Drain (wait for ``in_flight`` to reach 0), then SIGTERM, then SIGKILL after 10 s."""
        if self._stopping:
            while self.state != "stopped":  # a second caller waits for the first
                await asyncio.sleep(0.02)
            return
        self._stopping = True
        self.state = "draining"
        deadline = time.monotonic() + drain_timeout
        while self.in_flight > 0 and self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._terminate()
        self.state = "stopped"

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # uvicorn drains what the server still holds
        deadline = time.monotonic() + _TERM_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            logger.warning("%s ignored SIGTERM for %g s; killing it", self.name, _TERM_GRACE_S)
            process.kill()
            while process.poll() is None:  # SIGKILL cannot be ignored; this reaps it
                await asyncio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the process now (no drain)."""
        if self.alive() and self._process is not None:
            self._process.kill()

    def log_tail(self, max_bytes: int = 64_000) -> str:
        """The end of this replica's log (whole lines), or "" when there is none."""
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - max_bytes))
                data = log.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        if len(data) < size:
            text = text.partition("\n")[2]  # drop the cut first line
        return text

    def last_lines(self, n: int = _LOG_LINES) -> str:
        return "\n".join(self.log_tail(16_000).splitlines()[-n:])


class ReplicaSet:
    """The replicas of one served entity, with crash restarts and exponential backoff.

    ``check()`` is called every control tick: it replaces replicas whose process died, after a
    delay that doubles with each consecutive crash up to ``backoff_max_s`` and starts again at
    ``backoff_initial_s`` once a replica had stayed up ``stable_after_s`` before it crashed.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        *,
        ready_timeout: float = 120.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.ready_timeout = ready_timeout
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self._clock = clock
        self._on_event = on_event
        #: Live replicas (starting or ready); draining ones have left this list.
        self.replicas: list[Replica] = []
        self.failures = 0
        self.last_error: str | None = None
        self._target = 0
        self._next_index = 0
        self._next_delay = backoff_initial_s
        self._restarts_due: list[tuple[float, int]] = []  # (when, restart count) per crash
        self._draining: set[Replica] = set()
        self._tasks: dict[Replica, asyncio.Task[None]] = {}
        self._stop_tasks: set[asyncio.Task[None]] = set()
        # Set when a replica fails to become ready, cleared when one does: wait_ready() fails
        # fast on a model that cannot load instead of waiting out its timeout.
        self._load_error: ModelLoadError | None = None

    @property
    def count(self) -> int:
        """Starting plus ready replicas: what the autoscaler counts."""
        return len(self.replicas)

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "ready"]

    def _event(self, message: str, level: int = logging.INFO) -> None:
        logger.log(level, "%s", message)
        if self._on_event is not None:
            try:
                self._on_event(message)
            except Exception:  # a broken listener must not stop the control loop
                logger.exception("on_event callback failed")

    async def scale_to(self, n: int, *, drain_timeout: float = 30.0) -> None:
        """Aim at ``n`` replicas: start missing ones, or drain and stop surplus ones.

        Neither waits: new replicas become ready in background tasks (see :meth:`wait_ready`)
        and surplus ones stop in background tasks after ``drain_timeout`` at most. Replicas
        waiting out a crash backoff count towards ``n``, so calling this every tick does not
        bypass the backoff.
        """
        if n < 0:
            raise ValueError(f"replica count must be >= 0, got {n}")
        self._target = n
        live = len(self.replicas)
        keep = max(0, n - live)
        self._restarts_due = sorted(self._restarts_due)[:keep]
        for _ in range(keep - len(self._restarts_due)):
            self._spawn(restarts=0)
        if live > n:
            # Starting ones serve nobody yet; then the newest, which are the least warm.
            order = sorted(self.replicas, key=lambda r: (r.state == "ready", -r.index))
            for replica in order[: live - n]:
                self._retire(replica, drain_timeout)
        await asyncio.sleep(0)  # let the new tasks begin

    def _spawn(self, restarts: int) -> None:
        loop = asyncio.get_running_loop()  # fail before a process exists, not after
        replica = Replica(self.spec, self._next_index, clock=self._clock)
        replica.restarts = restarts
        self._next_index += 1
        self.replicas.append(replica)
        try:
            replica.start()
        except (OSError, subprocess.SubprocessError) as exc:
            replica.state = "failed"
            self._crashed(replica, f"could not start: {exc}")
            return
        self._event(f"{replica.name} started (pid {replica.pid}, port {replica.port})")
        self._tasks[replica] = loop.create_task(self._watch_start(replica))

    async def _watch_start(self, replica: Replica) -> None:
        try:
            await replica.wait_ready(self.ready_timeout)
        except ModelLoadError as exc:
            if replica in self.replicas:  # not already handled by check() or scale-down
                self._load_error = exc
                # The event keeps to one line; the full log tail travels in the exception.
                code = replica.exit_code()
                why = f"not ready after {self.ready_timeout:g} s"
                if code is not None and code != -signal.SIGTERM:
                    why = f"exited with code {code}"
                self._crashed(replica, f"failed to become ready ({why}): {replica.last_lines(1)}")
        else:
            self._load_error = None
            self._event(f"{replica.name} is ready at {replica.url}")
        finally:
            self._tasks.pop(replica, None)

    def _crashed(self, replica: Replica, reason: str) -> None:
        """Forget a dead replica and schedule its replacement."""
        self.replicas.remove(replica)
        self.failures += 1
        self.last_error = f"{replica.name} {reason}"
        now = self._clock()
        started = replica.started_at if replica.started_at is not None else now
        if now - started >= self.stable_after_s:
            self._next_delay = self.backoff_initial_s
        delay = self._next_delay
        if len(self.replicas) + len(self._restarts_due) < self._target:
            self._next_delay = min(delay * 2, self.backoff_max_s)
            self._restarts_due.append((now + delay, replica.restarts + 1))
            plan = f"restarting in {delay:.1f} s"
        else:
            plan = f"not restarting (target is {self._target})"
        self._event(f"{replica.name} {reason}; {plan}", logging.WARNING)

    def check(self) -> None:
        """Replace replicas that died; call every control tick (within the event loop)."""
        for replica in list(self.replicas):
            if replica.state in ("starting", "ready") and not replica.alive():
                task = self._tasks.pop(replica, None)
                if task is not None:
                    task.cancel()
                reason = f"exited with code {replica.exit_code()}"
                if replica.state == "starting":
                    self._load_error = ModelLoadError(
                        f"{replica.name} {reason} during start-up; "
                        f"last log lines:\n{replica.last_lines()}"
                    )
                    reason += f" during start-up: {replica.last_lines(1)}"
                replica.state = "failed"
                self._crashed(replica, reason)
        now = self._clock()
        due = [entry for entry in self._restarts_due if entry[0] <= now]
        self._restarts_due = [entry for entry in self._restarts_due if entry[0] > now]
        for _, restarts in sorted(due):
            if len(self.replicas) < self._target:
                self._spawn(restarts)

    def _retire(self, replica: Replica, drain_timeout: float) -> None:
        self.replicas.remove(replica)
        task = self._tasks.pop(replica, None)
        if task is not None:
            task.cancel()
        self._draining.add(replica)
        self._event(f"{replica.name} stopping ({replica.in_flight} requests in flight)")
        stop = asyncio.create_task(self._stop(replica, drain_timeout))
        self._stop_tasks.add(stop)
        stop.add_done_callback(self._stop_tasks.discard)

    async def _stop(self, replica: Replica, drain_timeout: float) -> None:
        try:
            await replica.stop(drain_timeout)
        finally:
            self._draining.discard(replica)
        self._event(f"{replica.name} stopped")

    async def wait_any_ready(self, timeout: float) -> bool:
        """True as soon as one replica is ready; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def wait_ready(self, n: int, timeout: float) -> None:
        """Wait until ``n`` replicas are ready.

        Raises:
            ModelLoadError: A replica failed to become ready (its log tail says why, usually a
                model that cannot load), or fewer than ``n`` were ready after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while len(self.ready()) < n:
            if self._load_error is not None:
                raise self._load_error
            if time.monotonic() >= deadline:
                raise ModelLoadError(
                    f"{len(self.ready())} of {n} replicas of {self.spec.endpoint}/"
                    f"{self.spec.entity} ready after {timeout:g} s; last error: {self.last_error}"
                )
            await asyncio.sleep(0.02)

    async def stop_all(self, drain_timeout: float = 30.0) -> None:
        """Drain and stop every replica, including ones already draining; no restarts follow."""
        self._target = 0
        self._restarts_due.clear()
        for replica in list(self.replicas):
            self._retire(replica, drain_timeout)
        if self._stop_tasks:
            await asyncio.gather(*list(self._stop_tasks))

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-ready row per live or draining replica."""
        now = self._clock()
        rows = []
        for r in sorted([*self.replicas, *self._draining], key=lambda r: r.index):
            rows.append(
                {
                    "index": r.index,
                    "state": r.state,
                    "pid": r.pid,
                    "port": r.port,
                    "url": r.url,
                    "restarts": r.restarts,
                    "in_flight": r.in_flight,
                    "uptime_s": None if r.started_at is None else round(now - r.started_at, 3),
                    "cpu_percent": r.last_cpu_percent,
                    "rss_bytes": r.rss_bytes(),
                    "log_path": str(r.log_path),
                }
            )
        return rows
