"""The local platform's controller: endpoints in SQLite become replica processes that serve them.

:class:`LocalPlatform` owns, per endpoint, an :class:`EndpointRuntime` (the served entities of
the config being served, each with its :class:`ReplicaSet`, autoscaling state and request
window) and one control loop that, every tick, restarts crashed replicas and applies the
autoscaler's decision. Config changes follow Databricks' two steps: the revision is stored as
pending (``config_update`` IN_PROGRESS), the new replicas start, and only when they are ready
does the runtime switch (atomically, between two requests) and the old replicas drain. A version
that fails to load leaves the old runtime serving and the endpoint UPDATE_FAILED with the
replica's own error.

Everything runs on the event loop of the server that hosts the platform (uvicorn's); SQLite and
MLflow calls that may take milliseconds go to a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.config import DriftConfig, ScalingConfig
from cvdeploy.errors import CVDeployError
from cvdeploy.monitoring.window import RequestWindow, summarize
from cvdeploy.platforms.base import (
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    ServedEntity,
)
from cvdeploy.platforms.concurrency import CONCURRENCY_PER_REPLICA
from cvdeploy.platforms.instance_types import lookup, replica_resources
from cvdeploy.platforms.local.autoscaler import (
    AutoscalingPolicy,
    Decision,
    ScalingSnapshot,
    ScalingState,
    decide,
)
from cvdeploy.platforms.local.records import EndpointRecord
from cvdeploy.platforms.local.replicas import Replica, ReplicaSet, ReplicaSpec
from cvdeploy.platforms.local.routing import CircuitBreaker, TokenBucket, WeightedRouter
from cvdeploy.platforms.local.state import PlatformState
from cvdeploy.platforms.local.telemetry import PlatformMetrics
from cvdeploy.registry import Registry
from cvdeploy.runtime.providers import default_intra_op_threads
from cvdeploy.serving.settings import ServeSettings

__all__ = ["EndpointRuntime", "EntityRuntime", "LocalPlatform", "PlatformOptions"]

logger = logging.getLogger("cvdeploy.platform")

#: In-flight requests per replica the autoscaler aims at, by Databricks workload size.


@dataclass(frozen=True)
class PlatformOptions:
    """How the platform runs replicas; defaults suit a laptop."""

    home: Path
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tick_s: float = 0.5
    ready_timeout_s: float = 180.0
    drain_timeout_s: float = 30.0
    #: How long a request waits at the gateway for a first replica (scale from zero, restarts).
    cold_start_timeout_s: float = 60.0
    request_timeout_s: float = 60.0
    max_body_bytes: int = 64 * 1024 * 1024
    registry_uri: str | None = None
    #: Drift sampling in every replica (the config's ``deployment.monitoring.drift``).
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass
class EntityRuntime:
    """One served entity of the config being served."""

    entity: ServedEntity
    replicas: ReplicaSet
    policy: AutoscalingPolicy
    key: str
    scaling: ScalingState = field(default_factory=ScalingState)
    decision: Decision | None = None
    queued: int = 0
    last_request_at: float | None = None
    breakers: dict[int, CircuitBreaker] = field(default_factory=dict)
    window: RequestWindow = field(default_factory=RequestWindow)
    #: Replica-seconds run (starting, ready or draining) since the platform started: cost.
    replica_seconds: float = 0.0
    counted_at: float | None = None

    @property
    def name(self) -> str:
        return self.entity.name

    def breaker(self, replica: Replica) -> CircuitBreaker:
        found = self.breakers.get(replica.index)
        if found is None:
            found = self.breakers[replica.index] = CircuitBreaker()
        return found

    def candidates(self) -> list[Replica]:
        """Ready replicas whose circuit breaker is not open (half-open ones may take a trial)."""
        return [r for r in self.replicas.ready() if self.breaker(r).state != "open"]


@dataclass
class EndpointRuntime:
    """What the gateway routes on: swapped whole when a config switch completes."""

    name: str
    revision: int
    config: EndpointCoreConfig
    entities: dict[str, EntityRuntime]
    router: WeightedRouter
    limiter: TokenBucket | None = None

    @property
    def fallback(self) -> EntityRuntime | None:
        name = self.config.fallback_served_entity
        return self.entities.get(name) if name else None

    def by_version(self, version: str) -> EntityRuntime | None:
        """The served entity named ``version`` or serving that model version (a pin)."""
        if version in self.entities:
            return self.entities[version]
        for runtime in self.entities.values():
            if runtime.entity.entity_version == version:
                return runtime
        return None


def _entity_key(entity: ServedEntity) -> str:
    # Replicas are reused across revisions only when they would run exactly the same thing.
    return entity.model_dump_json(
        include={"entity_name", "entity_version", "workload_type", "batching", "instance_type"}
    )


class LocalPlatform:
    """Endpoints on this machine: the state, the replicas and the control loop.

    Args:
        state: The endpoints, revisions, tokens and audit log.
        registry: Where served entities' model versions come from.
        options: Timeouts, default scaling and the folder for replica logs.
    """

    def __init__(
        self,
        state: PlatformState,
        registry: Registry,
        options: PlatformOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.registry = registry
        self.options = options
        self.metrics = PlatformMetrics()
        self._clock = clock
        self._runtimes: dict[str, EndpointRuntime] = {}
        self._updates: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Future[Any]] = set()
        #: Why an endpoint that exists has no runtime (its restore failed), for the gateway.
        self.unavailable: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring back every stored endpoint (in the background), then run the control loop.

        The server answers at once: an endpoint being restored is NOT_READY and its requests
        get a 503 with Retry-After until its replicas are ready.
        """
        records = await asyncio.to_thread(self.state.list_endpoints)
        for record in records:
            self._track(record.name, self._restore(record))
        self._loop_task = asyncio.create_task(self._control_loop(), name="cvdeploy-control-loop")

    async def _restore(self, record: EndpointRecord) -> None:
        name = record.name
        if record.config is not None and record.current_revision is not None:
            try:
                runtime = await self._build(name, record.current_revision, record.config)
            except CVDeployError as exc:
                logger.error("endpoint %s: cannot restore its revision: %s", name, exc)
                self.unavailable[name] = (
                    f"endpoint '{name}' could not be restored after the platform restarted: "
                    f"{exc}; fix it or roll it back (`cvdeploy endpoints rollback {name}`)"
                )
            else:
                self._runtimes[name] = runtime
                logger.info("endpoint %s: restored revision %s", name, runtime.revision)
        if record.config_update == "IN_PROGRESS":
            self._schedule_update(name)

    async def close(self) -> None:
        """Stop the loop and every replica (draining in-flight requests)."""
        self._closing = True
        tasks = [t for t in (self._loop_task, *self._updates.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Replicas already being drained (a delete, an old revision) finish stopping first.
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        runtimes = list(self._runtimes.values())
        self._runtimes.clear()
        await asyncio.gather(
            *(e.replicas.stop_all(self.options.drain_timeout_s) for r in runtimes
              for e in r.entities.values()),
            return_exceptions=True,
        )  # fmt: skip

    def wake(self) -> None:
        """Run the control loop now (a request is waiting for a replica)."""
        self._wake.set()

    # -- control plane ------------------------------------------------------------------------

    async def create(self, spec: EndpointSpec, author: str) -> EndpointInfo:
        await self._check_models(spec.config)
        record = await asyncio.to_thread(self.state.create_endpoint, spec, author=author)
        self._schedule_update(spec.name)
        return self._info(record)

    async def update(self, name: str, config: EndpointCoreConfig, author: str) -> EndpointInfo:
        await asyncio.to_thread(self.state.get_endpoint, name)  # 404 before checking models
        await self._check_models(config)
        await asyncio.to_thread(self.state.update_config, name, config, author=author)
        self._schedule_update(name)
        return await self.get(name)

    async def rollback(self, name: str, to_revision: int | None, author: str) -> EndpointInfo:
        await asyncio.to_thread(self.state.rollback, name, to_revision, author=author)
        self._schedule_update(name)
        return await self.get(name)

    async def delete(self, name: str, author: str) -> None:
        await asyncio.to_thread(self.state.delete_endpoint, name, author=author)
        task = self._updates.pop(name, None)
        if task is not None:
            task.cancel()
        runtime = self._runtimes.pop(name, None)
        self.unavailable.pop(name, None)
        self.metrics.forget(name)
        if runtime is not None:
            for entity in runtime.entities.values():
                self._background(entity.replicas.stop_all(self.options.drain_timeout_s))

    async def get(self, name: str) -> EndpointInfo:
        record = await asyncio.to_thread(self.state.get_endpoint, name)
        return self._info(record)

    async def list(self) -> list[EndpointInfo]:
        records = await asyncio.to_thread(self.state.list_endpoints)
        return [self._info(r) for r in records]

    def _info(self, record: EndpointRecord) -> EndpointInfo:
        return record.to_info(ready=self._ready(record.name))

    def _ready(self, name: str) -> bool:
        # Databricks reports a scaled-to-zero endpoint as READY: it serves on the next request.
        runtime = self._runtimes.get(name)
        if runtime is None:
            return False
        for route in runtime.config.routes:
            entity = runtime.entities[route.served_model_name]
            if route.traffic_percentage == 0 or entity.replicas.ready():
                continue
            if not (entity.policy.scale_to_zero and entity.replicas.count == 0):
                return False
        return True

    def runtime(self, name: str) -> EndpointRuntime | None:
        """What the gateway routes ``name`` on; None while it has never served."""
        return self._runtimes.get(name)

    async def stats(self, name: str, window_s: float = 60.0) -> dict[str, Any]:
        """State, traffic, replicas and request figures per served entity (``monitor``)."""
        info = await self.get(name)
        runtime = self._runtimes.get(name)
        entities: dict[str, Any] = {}
        if runtime is not None:
            for route in runtime.config.routes:
                entity = runtime.entities[route.served_model_name]
                entities[entity.name] = {
                    "model": entity.entity.entity_name,
                    "version": entity.entity.entity_version,
                    "traffic_percentage": route.traffic_percentage,
                    "replicas": entity.replicas.describe(),
                    "ready_replicas": len(entity.replicas.ready()),
                    "queued": entity.queued,
                    "autoscaler": entity.decision.reason if entity.decision else None,
                    "restarts": entity.replicas.failures,
                    "instance_type": entity.entity.instance_type,
                    "replica_hours": round(entity.replica_seconds / 3600.0, 6),
                    "last_error": entity.replicas.last_error,
                    "last_minute": entity.window.summary(window_s),
                    "requests_total": entity.window.total,
                    "errors_total": entity.window.errors,
                }
        recent = [
            item for entity in (runtime.entities.values() if runtime else ()) for item in
            entity.window.recent(window_s)
        ]  # fmt: skip
        return {
            "name": name,
            "state": info.state.model_dump(),
            "overall": summarize(recent, window_s),
            "revision": runtime.revision if runtime else None,
            "served_entities": entities,
        }

    def logs(self, name: str, served_entity: str) -> str:
        """The newest replica log of a served entity (its load errors included)."""
        self.state.get_endpoint(name)
        folder = self._log_dir(name, served_entity)
        logs = sorted(folder.glob("replica-*.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            raise EndpointNotFoundError(
                f"endpoint '{name}' has no logs for served entity '{served_entity}'"
            )
        data = logs[-1].read_bytes()[-256_000:]
        return data.decode("utf-8", errors="replace")

    # -- applying configs ---------------------------------------------------------------------

    async def _check_models(self, config: EndpointCoreConfig) -> None:
        """Refuse (404/400) a config naming a model version or instance type that is unknown."""
        for entity in config.served_entities:
            if entity.instance_type is not None:
                lookup(entity.instance_type)
            await asyncio.to_thread(
                self.registry.get_version, entity.entity_name, entity.entity_version
            )

    def _schedule_update(self, name: str) -> None:
        self._track(name, self._apply_pending(name))

    def _track(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run the endpoint's restore or update; ``delete`` and ``close`` cancel it."""
        task = asyncio.create_task(coro, name=f"cvdeploy-endpoint-{name}")
        self._updates[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._updates.get(name) is done:
                del self._updates[name]

        task.add_done_callback(forget)

    async def _apply_pending(self, name: str) -> None:
        record = await asyncio.to_thread(self.state.get_endpoint, name)
        config, revision = record.pending_config, record.pending_revision
        if record.config_update != "IN_PROGRESS" or config is None or revision is None:
            return
        old = self._runtimes.get(name)
        logger.info("endpoint %s: switching to revision %s", name, revision)
        try:
            new = await self._build(name, revision, config, reuse=old)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, CVDeployError) else repr(exc)
            logger.error("endpoint %s: revision %s failed: %s", name, revision, message)
            await asyncio.to_thread(self.state.finish_update, name, ok=False, message=message)
            return
        self._runtimes[name] = new
        self.unavailable.pop(name, None)
        await asyncio.to_thread(self.state.finish_update, name, ok=True)
        logger.info("endpoint %s: serving revision %s", name, revision)
        if old is not None:
            kept = {id(e) for e in new.entities.values()}
            for entity in old.entities.values():
                if id(entity) not in kept:
                    self._background(entity.replicas.stop_all(self.options.drain_timeout_s))

    async def _build(
        self,
        name: str,
        revision: int,
        config: EndpointCoreConfig,
        reuse: EndpointRuntime | None = None,
    ) -> EndpointRuntime:
        """A runtime for ``config`` whose every served entity has its first replicas ready."""
        entities: dict[str, EntityRuntime] = {}
        started: list[EntityRuntime] = []
        try:
            for entity in config.served_entities:
                key = _entity_key(entity)
                previous = reuse.entities.get(entity.name) if reuse else None
                policy = self._policy(entity)
                if previous is not None and previous.key == key:
                    previous.entity, previous.policy = entity, policy
                    entities[entity.name] = previous
                    continue
                spec = await asyncio.to_thread(self._replica_spec, name, entity)
                replicas = ReplicaSet(spec, ready_timeout=self.options.ready_timeout_s)
                runtime = EntityRuntime(entity=entity, replicas=replicas, policy=policy, key=key)
                entities[entity.name] = runtime
                started.append(runtime)
                # One replica even with scale-to-zero: it proves the version loads.
                await replicas.scale_to(max(1, policy.min_replicas))
            for runtime in started:
                await runtime.replicas.wait_ready(
                    max(1, runtime.policy.min_replicas), self.options.ready_timeout_s
                )
        except BaseException:
            for runtime in started:
                self._background(runtime.replicas.stop_all(0))
            raise
        weights = {r.served_model_name: r.traffic_percentage for r in config.routes}
        limits = config.rate_limits
        limiter = TokenBucket(limits[0].calls, limits[0].period_s) if limits else None
        return EndpointRuntime(name, revision, config, entities, WeightedRouter(weights), limiter)

    def _policy(self, entity: ServedEntity) -> AutoscalingPolicy:
        defaults = self.options.scaling
        low, high = entity.replica_bounds
        return AutoscalingPolicy(
            min_replicas=low,
            max_replicas=high,
            target_concurrency=CONCURRENCY_PER_REPLICA.get(entity.workload_size, 4),
            target_cpu=defaults.target_cpu,
            upscale_delay_s=defaults.upscale_delay_s,
            downscale_delay_s=defaults.downscale_delay_s,
            scale_to_zero=entity.scale_to_zero_enabled,
            idle_timeout_s=defaults.idle_timeout_s,
        )

    def _log_dir(self, endpoint: str, entity: str) -> Path:
        return self.options.home / "logs" / "endpoints" / endpoint / entity

    def _replica_spec(self, endpoint: str, entity: ServedEntity) -> ReplicaSpec:
        version = self.registry.get_version(entity.entity_name, entity.entity_version)
        path = self.registry.model_path(entity.entity_name, entity.entity_version)
        card = self.registry.card(entity.entity_name, entity.entity_version)
        references = self.registry.reference_images(entity.entity_name, entity.entity_version)
        threads = default_intra_op_threads(1)
        memory_mb: int | None = None
        if entity.instance_type is not None:
            resources = replica_resources(lookup(entity.instance_type))
            threads = int(resources["intra_op_threads"])
            memory_mb = int(resources["memory_limit_mb"])
        # No spinning ORT threads behind the gateway: a spinning replica burns the cores the
        # gateway and the other replicas need (measured: 2.5x the replica's CPU per request).
        model_options: dict[str, Any] = {"intra_op_spinning": False}
        if card.labels:
            model_options["labels"] = list(card.labels)
        settings = ServeSettings.create(
            model_path=str(path),
            task=version.task,
            # Behind the gateway the v2 model name is the endpoint's (DESIGN "Decisions").
            name=endpoint,
            version=entity.entity_version,
            timeout=self.options.request_timeout_s,
            batching=entity.batching,
            limits={"max_body_bytes": self.options.max_body_bytes},
            intra_op_threads=threads,
            model_options=model_options,
            drift=self.options.drift,
            reference_images=[str(p) for p in references],
        )
        env = {"OMP_NUM_THREADS": str(threads)}
        return ReplicaSpec(
            endpoint=endpoint,
            entity=entity.name,
            settings=settings,
            log_dir=self._log_dir(endpoint, entity.name),
            env=env,
            memory_limit_mb=memory_mb,
        )

    # -- the control loop ---------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.tick_s)
            self._wake.clear()
            for runtime in list(self._runtimes.values()):
                for entity in runtime.entities.values():
                    try:
                        await self._tick(runtime, entity)
                    except Exception:  # one bad entity must not stop the loop for the others
                        logger.exception("endpoint %s: control tick failed", runtime.name)

    async def _tick(self, runtime: EndpointRuntime, entity: EntityRuntime) -> None:
        replicas = entity.replicas
        replicas.check()
        now = self._clock()
        if entity.counted_at is not None:
            entity.replica_seconds += len(replicas.replicas) * max(0.0, now - entity.counted_at)
        entity.counted_at = now
        live = replicas.replicas
        cpu = tuple(c for r in live if r.state == "ready" and (c := r.cpu_percent()) is not None)
        snapshot = ScalingSnapshot(
            current_replicas=replicas.count,
            in_flight=sum(r.in_flight for r in live),
            queued=entity.queued,
            cpu_percent=cpu,
            last_request_at=entity.last_request_at,
        )
        decision = decide(entity.policy, snapshot, entity.scaling, self._clock())
        entity.scaling, entity.decision = decision.state, decision
        if decision.desired != replicas.count:
            logger.info("endpoint %s/%s: %s", runtime.name, entity.name, decision.reason)
            await replicas.scale_to(decision.desired, drain_timeout=self.options.drain_timeout_s)
        self._export(runtime, entity, cpu)

    def _export(
        self, runtime: EndpointRuntime, entity: EntityRuntime, cpu: tuple[float, ...]
    ) -> None:
        labels = (
            runtime.name,
            entity.name,
            entity.entity.entity_name,
            entity.entity.entity_version,
        )
        m = self.metrics
        for state in ("starting", "ready", "draining"):
            count = sum(1 for r in entity.replicas.replicas if r.state == state)
            m.replicas.labels(*labels, state).set(count)
        m.in_flight.labels(*labels).set(sum(r.in_flight for r in entity.replicas.replicas))
        m.queued.labels(*labels).set(entity.queued)
        m.cpu.labels(*labels).set(sum(cpu))
        m.memory.labels(*labels).set(
            sum(b for r in entity.replicas.replicas if (b := r.rss_bytes()) is not None)
        )

    def _background(self, coro: Any) -> None:
        # Keep a reference: the loop holds tasks weakly, and a drained stop must finish.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
