"""Payload logging (what Databricks calls inference tables): a sampled record per request.

The request path only counts images and, for a sampled one, puts ``(image, result, latency)``
on a bounded queue; a full queue drops the record and counts it, never waits. One worker thread
hashes and measures the image, decodes it again for the drift features (the same
:func:`~cvdeploy.monitoring.features.image_features` and
:func:`~cvdeploy.monitoring.features.prediction_features` the drift sampler computes), and
writes rows in small batches to a SQLite table that is trimmed to ``max_rows``. A record the
features cannot be computed for is still written, with status ``feature_error`` and the reason.

The drift detector keeps its own in-memory window (:mod:`cvdeploy.monitoring.sampler`); the
records here carry the same features, so a window can be rebuilt from the store offline.

:class:`PayloadStore` reads the table back (``cvdeploy logs``) and exports it to JSON lines or,
with the ``parquet`` extra (pyarrow), to Parquet.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.config import PayloadLogConfig
from cvdeploy.errors import ConfigError, NotAvailableError
from cvdeploy.monitoring.features import image_features, prediction_features
from cvdeploy.monitoring.history import connect
from cvdeploy.monitoring.sampling import RequestSampler
from cvdeploy.runtime import ImageLimits, decode_image

__all__ = ["COLUMNS", "PayloadLogger", "PayloadStore", "default_payloads_path"]

logger = logging.getLogger("cvdeploy.monitoring")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    request_id TEXT,
    image_sha256 TEXT NOT NULL,
    image_bytes INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    latency_ms REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    features TEXT,
    predictions TEXT,
    image BLOB
);
CREATE INDEX IF NOT EXISTS payloads_by_time ON payloads (time);
CREATE INDEX IF NOT EXISTS payloads_by_model ON payloads (model, version, time);
"""

#: The record's fields, in table order (``image`` only when asked for).
COLUMNS = (
    "id", "time", "model", "version", "request_id", "image_sha256", "image_bytes", "width",
    "height", "latency_ms", "status", "error", "features", "predictions", "image",
)  # fmt: skip
_JSON_COLUMNS = frozenset({"features", "predictions"})


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def default_payloads_path() -> Path:
    """``$CVDEPLOY_HOME/payloads.db``."""
    from cvdeploy.registry.paths import cvdeploy_home

    return cvdeploy_home() / "payloads.db"


@dataclass(frozen=True)
class _Sample:
    """One sampled image as the request path hands it over (no work done on it yet)."""

    at: float
    image: bytes | np.ndarray
    result: Any
    latency_s: float
    request_id: str | None


class PayloadStore:
    """The ``payloads`` table in one SQLite file: append (trimmed), query and export.

    Args:
        path: The SQLite file (created with its folder).
        max_rows: Rows kept by :meth:`append`; the oldest beyond it are deleted.
    """

    def __init__(self, path: str | Path | None = None, max_rows: int = 100_000) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path) if path is not None else default_payloads_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert records (``COLUMNS`` less ``id``) and trim the table to ``max_rows``."""
        if not rows:
            return
        names = COLUMNS[1:]
        values = [
            tuple(_json_or_none(row.get(n)) if n in _JSON_COLUMNS else row.get(n) for n in names)
            for row in rows
        ]
        placeholders = ", ".join("?" for _ in names)
        with self._connect() as conn:
            conn.executemany(
                f"INSERT INTO payloads ({', '.join(names)}) VALUES ({placeholders})", values
            )
            conn.execute(
                "DELETE FROM payloads WHERE id <= (SELECT id FROM payloads"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.max_rows,),
            )

    @staticmethod
    def _where(
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        status: str | None = None,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("model = ?", model),
            ("version = ?", version),
            ("time >= ?", since),
            ("time < ?", until),
            ("status = ?", status),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def _rows(
        self, filters: dict[str, Any], limit: int | None, include_images: bool
    ) -> Iterator[dict[str, Any]]:
        """Matching records, oldest first; with ``limit``, the newest ``limit`` of them."""
        where, args = self._where(**filters)
        columns = COLUMNS if include_images else COLUMNS[:-1]
        select = f"SELECT {', '.join(columns)}, image IS NOT NULL FROM payloads{where}"
        if limit is not None:
            sql = f"SELECT * FROM ({select} ORDER BY id DESC LIMIT ?) ORDER BY id"
            args = [*args, max(0, limit)]
        else:
            sql = f"{select} ORDER BY id"
        with self._connect() as conn:
            for values in conn.execute(sql, args):
                row = dict(zip(columns, values, strict=False))
                row["has_image"] = bool(values[-1])
                for name in _JSON_COLUMNS:
                    text = row[name]
                    row[name] = json.loads(text) if text is not None else None
                yield row

    def query(
        self,
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        status: str | None = None,
        limit: int = 100,
        *,
        include_images: bool = False,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` matching records, oldest first.

        ``since``/``until`` are seconds since the epoch; ``features`` and ``predictions`` come
        back as dicts, ``has_image`` says whether the image bytes are stored (returned under
        ``image`` with ``include_images``).
        """
        filters = {
            "model": model, "version": version, "since": since, "until": until, "status": status
        }  # fmt: skip
        return list(self._rows(filters, limit, include_images))

    def count(
        self,
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
        status: str | None = None,
    ) -> int:
        where, args = self._where(model, version, since, until, status)
        with self._connect() as conn:
            (n,) = conn.execute(f"SELECT COUNT(*) FROM payloads{where}", args).fetchone()
        return int(n)

    def export_jsonl(
        self,
        path: str | Path,
        *,
        limit: int | None = None,
        include_images: bool = False,
        **filters: Any,
    ) -> int:
        """Write the matching records as JSON lines (images base64); returns the count."""
        n = 0
        with Path(path).open("w", encoding="utf-8") as out:
            for row in self._rows(filters, limit, include_images):
                if row.get("image") is not None:
                    row["image"] = base64.b64encode(row["image"]).decode("ascii")
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
                n += 1
        return n

    def export_parquet(
        self,
        path: str | Path,
        *,
        limit: int | None = None,
        include_images: bool = False,
        chunk_rows: int = 10_000,
        **filters: Any,
    ) -> int:
        """Write the matching records to a Parquet file; returns the count.

        ``features`` and ``predictions`` are JSON strings (their keys differ between tasks),
        ``image`` binary. Needs pyarrow (``pip install 'cvdeploy[parquet]'``).
        """
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise NotAvailableError(
                "export to Parquet needs pyarrow: pip install 'cvdeploy[parquet]'"
            ) from None
        fields = [
            ("id", pa.int64()), ("time", pa.timestamp("us", tz="UTC")), ("model", pa.string()),
            ("version", pa.string()), ("request_id", pa.string()), ("image_sha256", pa.string()),
            ("image_bytes", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
            ("latency_ms", pa.float64()), ("status", pa.string()), ("error", pa.string()),
            ("features", pa.string()), ("predictions", pa.string()), ("has_image", pa.bool_()),
        ]  # fmt: skip
        if include_images:
            fields.append(("image", pa.binary()))
        schema = pa.schema(fields)
        n = 0
        with pq.ParquetWriter(str(path), schema) as writer:
            chunk: list[dict[str, Any]] = []

            def flush() -> None:
                columns: dict[str, list[Any]] = {name: [] for name, _ in fields}
                for row in chunk:
                    for name, _ in fields:
                        value: Any = row.get(name)
                        if name in _JSON_COLUMNS:
                            value = _json_or_none(value)
                        elif name == "time":
                            value = round(float(row["time"]) * 1_000_000)
                        columns[name].append(value)
                writer.write_table(pa.table(columns, schema=schema))
                chunk.clear()

            for row in self._rows(filters, limit, include_images):
                chunk.append(row)
                n += 1
                if len(chunk) >= chunk_rows:
                    flush()
            if chunk or n == 0:
                flush()
        return n


class PayloadLogger:
    """Writes a sampled record per image served, off the request path.

    Args:
        config: The ``deployment.monitoring.payload_log`` section.
        model: The served model's name.
        version: The served version.
        limits: Decoding limits (the server's own).
        max_pending: Samples waiting for the worker; beyond it records are dropped (counted).
        flush_interval_s: Longest a record waits before it is written.
        batch_rows: Records written in one transaction at most.
    """

    def __init__(
        self,
        config: PayloadLogConfig,
        model: str,
        version: str,
        *,
        limits: ImageLimits,
        max_pending: int = 256,
        flush_interval_s: float = 0.5,
        batch_rows: int = 64,
    ) -> None:
        self.config = config
        self.model = model
        self.version = str(version)
        self._sampler = RequestSampler(config.sample_rate, config.max_records_per_s)
        try:
            self.store = PayloadStore(config.path, max_rows=config.max_rows)
        except (OSError, sqlite3.Error) as exc:
            where = config.path or default_payloads_path()
            raise ConfigError(
                f"monitoring.payload_log.path {str(where)!r} cannot be opened ({exc}); point it "
                "at a writable file, or set monitoring.payload_log.enabled to false"
            ) from exc
        self._limits = limits
        self._flush_interval_s = flush_interval_s
        self._batch_rows = batch_rows
        self._queue: queue.Queue[_Sample | None] = queue.Queue(max_pending)
        self.sampled = 0
        self.dropped = 0
        self.written = 0
        self.feature_errors = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._work, name="cvdeploy-payloads", daemon=True)
        self._thread.start()

    # -- request path -------------------------------------------------------------------------

    def offer(
        self,
        images: Sequence[bytes | np.ndarray],
        results: Sequence[Any],
        latency_s: float,
        request_id: str | None = None,
    ) -> None:
        """Maybe log some of this request's images (a counter check per image).

        ``latency_s`` is the whole request's; every image of it gets the same figure.
        """
        at = time.time()
        for image, result in zip(images, results, strict=False):
            if not self._sampler.take():
                continue
            try:
                self._queue.put_nowait(_Sample(at, image, result, latency_s, request_id))
                self.sampled += 1
            except queue.Full:
                self.dropped += 1

    # -- worker -------------------------------------------------------------------------------

    def _record(self, sample: _Sample) -> dict[str, Any]:
        """One row: never raises for a bad image or prediction (status ``feature_error``)."""
        image = sample.image
        if isinstance(image, np.ndarray):
            data = np.ascontiguousarray(image).tobytes()  # raw pixels: no encoded bytes to keep
            stored = None
        else:
            data = bytes(image)
            keep = self.config.store_images and len(data) <= self.config.max_image_bytes
            stored = data if keep else None
        row: dict[str, Any] = {
            "time": sample.at,
            "model": self.model,
            "version": self.version,
            "request_id": sample.request_id,
            "image_sha256": hashlib.sha256(data).hexdigest(),
            "image_bytes": len(data),
            "latency_ms": round(sample.latency_s * 1000, 3),
            "status": "ok",
            "image": stored,
        }
        try:
            row["predictions"] = sample.result.to_dict()
        except Exception as exc:
            row["predictions"] = None
            return self._failed(row, exc)
        try:
            array = image if isinstance(image, np.ndarray) else decode_image(data, self._limits)
            row["height"], row["width"] = int(array.shape[0]), int(array.shape[1])
            row["features"] = {**image_features(array), **prediction_features(row["predictions"])}
        except Exception as exc:  # recorded with the reason, never fatal to the logger
            return self._failed(row, exc)
        return row

    def _failed(self, row: dict[str, Any], exc: Exception) -> dict[str, Any]:
        self.feature_errors += 1
        row["status"] = "feature_error"
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return row

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            self.store.append(rows)
            self.written += len(rows)
        except Exception:  # a full disk or locked file loses records, never the server
            self.write_errors += len(rows)
            logger.exception("payload log: %d record(s) could not be written", len(rows))
        rows.clear()

    def _work(self) -> None:
        rows: list[dict[str, Any]] = []
        due = 0.0
        while True:
            try:
                # Block while nothing is pending; else wait no longer than the flush is due.
                wait = max(0.0, due - time.monotonic()) if rows else None
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                self._write(rows)
                continue
            if item is None:
                self._write(rows)
                return
            if not rows:
                due = time.monotonic() + self._flush_interval_s
            try:
                rows.append(self._record(item))
            except Exception:  # a bug here must not stop later records
                logger.exception("payload log: a record could not be built")
            if len(rows) >= self._batch_rows or time.monotonic() >= due:
                self._write(rows)

    # -- reading ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The logger's counters (for ``/monitoring`` and tests)."""
        return {
            "path": str(self.store.path),
            "sample_rate": self.config.sample_rate,
            "sampled": self.sampled,
            "capped": self._sampler.capped,
            "dropped": self.dropped,
            "written": self.written,
            "feature_errors": self.feature_errors,
            "write_errors": self.write_errors,
            "pending": self._queue.qsize(),
        }

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the worker (waits at most ``timeout`` seconds)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning(
                "payload log: %d record(s) pending at shutdown were lost", self._queue.qsize()
            )
            return
        self._thread.join(timeout)
