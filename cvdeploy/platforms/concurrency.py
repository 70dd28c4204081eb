"""Replicas and Databricks' provisioned concurrency: one table, both directions.

Databricks sizes a served entity by the concurrent requests it is provisioned for; cvdeploy by
replicas, each of which takes a workload size's worth of concurrent requests (Small 4, Medium
16, Large 64: the local platform's autoscaler targets the same numbers).
"""

from __future__ import annotations

__all__ = ["CONCURRENCY_PER_REPLICA", "replicas_from_concurrency"]

#: Concurrent requests one replica of each workload size takes.
CONCURRENCY_PER_REPLICA: dict[str, int] = {"Small": 4, "Medium": 16, "Large": 64}


def replicas_from_concurrency(
    low: int, high: int, workload_size: str | None, scale_to_zero: bool
) -> tuple[str, int, int]:
    """cvdeploy's ``(workload_size, min_replicas, max_replicas)`` for a provisioned concurrency
    range ``low..high``.

    The size given is kept where its concurrency per replica divides both bounds; else the
    largest size that does (Databricks does not echo a size it was not sent, and 16 requests
    are one Medium replica or four Small ones alike); else Small.
    """
    sizes = sorted(CONCURRENCY_PER_REPLICA, key=CONCURRENCY_PER_REPLICA.__getitem__, reverse=True)
    if workload_size in CONCURRENCY_PER_REPLICA:
        sizes.insert(0, workload_size)
    size = next(
        (
            s
            for s in sizes
            if not low % CONCURRENCY_PER_REPLICA[s] and not high % CONCURRENCY_PER_REPLICA[s]
        ),
        "Small",
    )
    per = CONCURRENCY_PER_REPLICA[size]
    floor = 0 if scale_to_zero else 1
    return size, max(low // per, floor), max(-(-high // per), 1, low // per)
