"""Dynamic batching: many concurrent requests, one model call per batch."""

from __future__ import annotations

from cvdeploy.batching.batcher import BatchStats, DynamicBatcher

__all__ = ["BatchStats", "DynamicBatcher"]
