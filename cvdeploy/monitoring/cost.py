"""What an endpoint's replicas cost: replica-hours per served version times a price table.

The platform counts replica-hours per served version (every replica that is starting, ready or
draining counts); prices come from the config's ``monitoring.cost_per_hour`` by instance type.
Replica-hours restart from zero when the platform restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cost_estimate"]


def cost_estimate(
    versions: Mapping[str, Mapping[str, Any]], prices: Mapping[str, float]
) -> dict[str, Any]:
    """Replica-hours per served version times its instance type's price (seed 001's costs).

    A version whose instance type has no price contributes replica-hours only and is listed
    in ``unpriced``; ``estimate`` is None when no version could be priced.
    """
    by_version: dict[str, float | None] = {}
    hours = 0.0
    for name, version in versions.items():
        ran = float(version.get("replica_hours") or 0.0)
        hours += ran
        price = prices.get(str(version.get("instance_type") or ""))
        by_version[name] = None if price is None else round(ran * price, 6)
    priced = [v for v in by_version.values() if v is not None]
    return {
        "replica_hours": round(hours, 6),
        "estimate": round(sum(priced), 6) if priced else None,
        "by_version": by_version,
        "unpriced": [n for n, v in by_version.items() if v is None],
    }
