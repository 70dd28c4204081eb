"""Which requests the monitoring workers look at: every Nth, and at most so many per second.

A fixed share alone makes the monitoring cost grow with the traffic: 10 % of 2000 requests a
second is 200 images a second to decode and profile on a worker thread that competes with the
request path for the CPU and the GIL. The cap keeps that cost flat under load (20 a second
fills a drift window of 500 in under half a minute), while quiet servers still see every
Nth request.
"""

from __future__ import annotations

import time

__all__ = ["RequestSampler"]


class RequestSampler:
    """Decides per request (one counter check; a clock read only for candidates).

    Args:
        rate: Share of requests considered, (0, 1]: every ``round(1 / rate)``-th one.
        max_per_s: Most samples per second; None for no cap.
    """

    def __init__(self, rate: float, max_per_s: float | None = None) -> None:
        self.every = max(1, round(1.0 / rate))
        self.max_per_s = max_per_s
        self.seen = 0
        self.capped = 0
        self._second = 0.0
        self._taken = 0

    def take(self) -> bool:
        self.seen += 1
        if self.seen % self.every:
            return False
        if self.max_per_s is None:
            return True
        now = time.monotonic()
        if now - self._second >= 1.0:
            self._second = now
            self._taken = 0
        if self._taken >= self.max_per_s:
            self.capped += 1
            return False
        self._taken += 1
        return True
