"""Where alert events go: the log, a JSON webhook, or a Prometheus Alertmanager.

Every sink has the :class:`Sink` shape (``send(event)``, ``close(timeout)``) and ``send`` never
blocks: the HTTP sinks put the event on a bounded queue that one background thread delivers,
with retries and exponential backoff on connection errors, timeouts, 408, 429 and 5xx. A webhook
that is down or slow therefore costs the serving path nothing; when the queue is full the oldest
event is dropped (and counted), because the newest state is the one worth delivering.
:func:`sink_from_url` picks a sink by URL for the config and the CLI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

import httpx

from cvdeploy.errors import ConfigError
from cvdeploy.monitoring.alerts import AlertEvent

__all__ = ["AlertmanagerSink", "LogSink", "Sink", "WebhookSink", "sink_from_url"]

logger = logging.getLogger("cvdeploy.alerts")

#: Longest pause between two attempts, however many retries are configured.
_MAX_BACKOFF_S = 30.0
_RETRY_STATUS = frozenset({408, 429})


@runtime_checkable
class Sink(Protocol):
    """Receives alert events; ``send`` must return at once."""

    def send(self, event: AlertEvent) -> None:
        """Deliver (or queue) one event; never raises for delivery problems."""

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds and stop."""


class LogSink:
    """Logs events to ``cvdeploy.alerts``: firing as a warning, resolved as info."""

    def __init__(self, logger_: logging.Logger | None = None) -> None:
        self._logger = logger_ or logger

    def send(self, event: AlertEvent) -> None:
        """Log one event, with its labels and fingerprint as ``extra`` fields."""
        level = logging.WARNING if event.status == "firing" else logging.INFO
        self._logger.log(
            level,
            "alert %s %s: %s",
            event.rule.name,
            event.status,
            event.message,
            extra={"alert": event.to_dict()},
        )

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to flush."""


def _rfc3339(at: float) -> str:
    stamp = datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class WebhookSink:
    """POSTs each event's JSON (:meth:`AlertEvent.to_dict`) to ``url`` from a background thread.

    Args:
        url: The webhook, ``http://`` or ``https://``.
        timeout_s: Per-attempt timeout.
        retries: Further attempts after the first fails (connection error, timeout, 408, 429
            or 5xx); other 4xx answers are not retried, the payload will not get better.
        backoff_s: Pause before the first retry, doubled for each next one (at most 30 s).
        headers: Extra request headers, e.g. an ``Authorization``.
        max_queue: Events held while the webhook is slow or down; beyond it the oldest go.
    """

    _thread_name = "cvdeploy-alert-webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        headers: Mapping[str, str] | None = None,
        max_queue: int = 1000,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise ConfigError(f"Alert webhook URL {url!r} must be http:// or https:// with a host")
        self.url = url
        self._timeout_s = timeout_s
        self._retries = max(0, retries)
        self._backoff_s = max(0.0, backoff_s)
        self._headers = dict(headers or {})
        self._queue: deque[AlertEvent] = deque()
        self._max_queue = max(1, max_queue)
        self._cond = threading.Condition()
        self._abandon = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.attempts = 0

    @property
    def target(self) -> str:
        """The URL the POSTs go to."""
        return self.url

    def stats(self) -> dict[str, int]:
        """Counters: events ``sent``, ``failed`` (given up), ``dropped`` (queue full or closed),
        ``queued`` now, and HTTP ``attempts``."""
        with self._cond:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "dropped": self.dropped,
                "queued": len(self._queue),
                "attempts": self.attempts,
            }

    def send(self, event: AlertEvent) -> None:
        """Queue ``event`` and return at once."""
        with self._cond:
            if self._closing:
                self.dropped += 1
                logger.debug("alert sink %s is closed; dropped %s", self.target, event.rule.name)
                return
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._track(event)
            if self._thread is None:
                # Started on first use: constructing a sink (e.g. from config) starts nothing.
                self._thread = threading.Thread(
                    target=self._run, name=self._thread_name, daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop; later sends are dropped.

        Events still queued when the time is up are counted as dropped, one being retried as
        failed.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            # Time is up: stop retrying and drop the rest. The daemon worker ends by itself once
            # an attempt in flight returns (within timeout_s); waiting would block the caller.
            self._abandon.set()
            with self._cond:
                self._cond.notify_all()

    # -- hooks for AlertmanagerSink --------------------------------------------------------

    def _track(self, event: AlertEvent) -> None:
        """Called under the lock for every queued event."""

    def _resend(self) -> tuple[float | None, list[AlertEvent]]:
        """Seconds until the next periodic re-send (None: never), and what is due now."""
        return None, []

    def _body(self, events: list[AlertEvent]) -> Any:
        return events[0].to_dict()

    # -- worker ----------------------------------------------------------------------------

    def _next(self) -> tuple[list[AlertEvent], bool] | None:
        """The next events to post and whether they count as new; None to stop."""
        with self._cond:
            while True:
                if self._queue and not self._abandon.is_set():
                    return [self._queue.popleft()], True
                if self._closing or self._abandon.is_set():
                    self.dropped += len(self._queue)
                    self._queue.clear()
                    return None
                wait, due = self._resend()
                if due:
                    return due, False
                self._cond.wait(wait)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s, headers=self._headers) as client:
            while (job := self._next()) is not None:
                events, counted = job
                try:
                    ok = self._post(client, self._body(events))
                except Exception:  # the worker must outlive any one bad event
                    logger.exception(
                        "alert sink %s could not send %d alerts", self.target, len(events)
                    )
                    ok = False
                if counted:
                    with self._cond:
                        if ok:
                            self.sent += 1
                        else:
                            self.failed += 1

    def _post(self, client: httpx.Client, body: Any) -> bool:
        problem = ""
        for attempt in range(self._retries + 1):
            if attempt and self._abandon.wait(
                min(self._backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
            ):
                break
            with self._cond:
                self.attempts += 1
            try:
                response = client.post(self.target, json=body)
            except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                break
        logger.warning("alert sink %s failed (%s); giving up on this alert", self.target, problem)
        return False


class AlertmanagerSink(WebhookSink):
    """Posts events to a Prometheus Alertmanager (``POST {url}/api/v2/alerts``).

    Each alert is ``{"labels", "annotations": {"summary", "description"}, "startsAt",
    "endsAt", "generatorURL"}``; the labels (alertname, severity, metric and the context labels)
    identify it, so Alertmanager de-duplicates and groups as usual. Alertmanager expects an
    active alert to be re-sent (it resolves one it has not heard of for ``resolve_timeout``), so
    firing alerts are re-posted every ``resend_s`` with ``endsAt`` four intervals ahead, as
    Prometheus does; a resolved alert is posted with ``endsAt`` set to when it resolved.

    Args:
        url: The Alertmanager base URL (``http://alertmanager:9093``) or the full API URL.
        resend_s: Seconds between re-sends of firing alerts (None: send once, no ``endsAt``).
        generator_url: Back-link put in ``generatorURL`` (e.g. the dashboard).
        **kwargs: As :class:`WebhookSink` (timeout_s, retries, backoff_s, headers, max_queue).
    """

    _thread_name = "cvdeploy-alertmanager"

    def __init__(
        self,
        url: str,
        *,
        resend_s: float | None = 60.0,
        generator_url: str = "",
        **kwargs: Any,
    ) -> None:
        base = url.rstrip("/")
        if not base.endswith("/api/v2/alerts"):
            base += "/api/v2/alerts"
        super().__init__(base, **kwargs)
        self._resend_s = resend_s if resend_s and resend_s > 0 else None
        self._generator_url = generator_url
        self._active: dict[str, AlertEvent] = {}
        self._last_resend = time.monotonic()

    def _track(self, event: AlertEvent) -> None:
        if event.status == "firing":
            self._active[event.fingerprint] = event
        else:
            self._active.pop(event.fingerprint, None)

    def _resend(self) -> tuple[float | None, list[AlertEvent]]:
        if self._resend_s is None:
            return None, []
        remaining = self._last_resend + self._resend_s - time.monotonic()
        if remaining > 0:
            return remaining, []
        self._last_resend = time.monotonic()
        return self._resend_s, list(self._active.values())

    def alert(self, event: AlertEvent) -> dict[str, Any]:
        """One event in Alertmanager's v2 ``postableAlert`` shape."""
        description = event.rule.description or event.rule.describe()
        alert: dict[str, Any] = {
            "labels": dict(event.labels),
            "annotations": {
                "summary": event.message,
                "description": description,
                "value": f"{event.value:g}",
                "threshold": f"{event.threshold:g}",
            },
            "startsAt": _rfc3339(event.started_at),
            "generatorURL": self._generator_url,
        }
        if event.status == "resolved":
            alert["endsAt"] = _rfc3339(event.at)
        elif self._resend_s is not None:
            alert["endsAt"] = _rfc3339(time.time() + 4 * self._resend_s)
        return alert

    def _body(self, events: list[AlertEvent]) -> Any:
        return [self.alert(event) for event in events]


def sink_from_url(url: str, **kwargs: Any) -> Sink:
    """A sink from a URL: ``log``, ``http(s)://...`` (webhook) or ``alertmanager+http(s)://...``.

    Args:
        url: The sink's address.
        **kwargs: Passed to the HTTP sinks (timeout_s, retries, backoff_s, headers, ...).

    Raises:
        ConfigError: Not one of the forms above.
    """
    text = url.strip()
    if text.lower() == "log":
        return LogSink()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in {"http", "https"}:
        return WebhookSink(text, **kwargs)
    if scheme in {"alertmanager+http", "alertmanager+https"}:
        return AlertmanagerSink(text[len("alertmanager+") :], **kwargs)
    raise ConfigError(
        f"Unknown alert sink {url!r}; use 'log', an http(s):// webhook URL or "
        "alertmanager+http(s)://host:9093 for a Prometheus Alertmanager"
    )
