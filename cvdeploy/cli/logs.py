"""``cvdeploy logs``: read back and export the payload log (sampled request records)."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.output import JsonOption, console, err_console, fail, when
from cvdeploy.errors import ConfigError, CVDeployError

__all__ = ["logs", "parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """Seconds since the epoch for ``10m``/``2h``/``1d``-style ages or an ISO 8601 time (UTC
    unless it names a zone)."""
    match = _DURATION.match(text.strip())
    if match:
        current = time.time() if now is None else now
        return current - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither an age (30s, 10m, 2h, 1d) nor an ISO time "
            "(2026-01-31T12:00:00); give one of those"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _configured_path(config_path: Path | None) -> Path:
    """The config's ``monitoring.payload_log.path``, else ``$CVDEPLOY_HOME/payloads.db``."""
    from cvdeploy.config import Config
    from cvdeploy.monitoring.payloads import default_payloads_path

    configured = Config(config_path) if config_path is not None else Config()
    where = configured.monitoring.payload_log.path
    return Path(where) if where else default_payloads_path()


def _top(predictions: dict[str, Any] | None) -> str:
    """The record's headline: the top class, or the detection count and best one."""
    if not predictions:
        return "-"
    if predictions.get("task") == "classification":
        classes = predictions.get("classes") or []
        if not classes:
            return "-"
        best = classes[0]
        return f"{best.get('label', best.get('class_id'))} {best.get('score', 0):.2f}"
    detections = predictions.get("detections") or []
    if not detections:
        return "0 detections"
    best = max(detections, key=lambda d: d.get("score", 0))
    label = best.get("label", best.get("class_id"))
    return f"{len(detections)} detections (best {label} {best.get('score', 0):.2f})"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _table(records: list[dict[str, Any]], path: Path) -> Table:
    table = Table(title=f"{len(records)} record(s) from {escape(str(path))}", title_justify="left")
    columns = ("time (UTC)", "model", "version", "request id", "size", "WxH", "latency ms")
    for column in columns:
        table.add_column(column)
    table.add_column("status")
    table.add_column("top prediction")
    for r in records:
        shape = f"{r['width']}x{r['height']}" if r.get("width") else "-"
        status = r["status"] if r["status"] == "ok" else f"[red]{escape(r['status'])}[/]"
        table.add_row(
            when(r["time"]),
            escape(r["model"]),
            escape(r["version"]),
            escape(r.get("request_id") or "-"),
            _size(r.get("image_bytes")),
            shape,
            f"{r['latency_ms']:.1f}",
            status,
            escape(_top(r.get("predictions"))),
        )
    return table


def logs(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only newer records: an age (10m, 2h, 1d) or ISO time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest records shown.")] = 100,
    status: Annotated[
        str | None, typer.Option(help="Only this status (ok, feature_error).")
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option(
            help="Payload log SQLite file [the config's payload_log.path, else "
            "$CVDEPLOY_HOME/payloads.db]."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config YAML (default: discovered, see docs).")
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Write every matching record (no --limit) to FILE.parquet or FILE.jsonl."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the payload log: sampled request records (deployment.monitoring.payload_log)."""
    from cvdeploy.monitoring.payloads import PayloadStore

    try:
        db = path if path is not None else _configured_path(config)
        if not db.is_file():
            raise ConfigError(
                f"no payload log at {db}; enable deployment.monitoring.payload_log on the "
                "server, or pass --path"
            )
        store = PayloadStore(db)
        filters: dict[str, Any] = {
            "model": model,
            "version": version,
            "since": parse_since(since) if since else None,
            "status": status,
        }
        if export is not None:
            suffix = export.suffix.lower()
            if suffix == ".parquet":
                n = store.export_parquet(export, **filters)
            elif suffix in (".jsonl", ".ndjson"):
                n = store.export_jsonl(export, **filters)
            else:
                raise ConfigError(
                    f"--export {export}: unknown format {suffix or '(none)'}; "
                    "name a .parquet or .jsonl file"
                )
            err_console.print(f"wrote {n} record(s) to {escape(str(export))}")
            return
        records = store.query(**filters, limit=limit)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        for record in records:
            sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        return
    console.print(_table(records, db))
