"""What every pipeline stage returns: named checks with values, thresholds and verdicts.

A stage is a plain function that returns a :class:`StageResult`; the pipeline runs them in order,
stops at the first that fails, and the report, the MLflow run and the CLI all read the same
records. A check with ``passed=None`` did not apply (a limit nobody set) and says why in
``detail``; it is never counted as a pass or a failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Check", "StageResult", "StageStatus", "timed_stage"]

StageStatus = Literal["passed", "failed", "skipped"]


@dataclass
class Check:
    """One verdict: ``value`` compared with ``threshold`` (either may be None)."""

    name: str
    passed: bool | None
    detail: str
    value: Any = None
    threshold: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StageResult:
    """The outcome of one stage.

    Attributes:
        name: the stage ("security", "compatibility", "evaluation", ...).
        checks: every verdict the stage reached, passed or not.
        figures: numbers worth logging as MLflow metrics (``load_s``, ``p95_ms``, ...).
        seconds: wall time of the stage.
        skipped: why the stage did not run (then ``checks`` is empty).
    """

    name: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def status(self) -> StageStatus:
        if self.skipped is not None:
            return "skipped"
        return "failed" if any(c.passed is False for c in self.checks) else "passed"

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    @property
    def reasons(self) -> list[str]:
        """The details of the failed checks, for the result's ``reasons``."""
        return [f"{self.name}: {c.detail}" for c in self.checks if c.passed is False]

    def check(
        self,
        name: str,
        passed: bool | None,
        detail: str,
        value: Any = None,
        threshold: Any = None,
    ) -> Check:
        """Record one verdict and return it."""
        item = Check(name, passed, detail, value, threshold)
        self.checks.append(item)
        return item

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "figures": dict(self.figures),
            "checks": [c.to_dict() for c in self.checks],
        }


@contextmanager
def timed_stage(name: str) -> Iterator[StageResult]:
    """``with timed_stage("security") as stage: stage.check(...)``; sets ``stage.seconds``."""
    stage = StageResult(name)
    started = time.perf_counter()
    try:
        yield stage
    finally:
        stage.seconds = time.perf_counter() - started
