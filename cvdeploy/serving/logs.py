"""Structured (one JSON object per line) logging for servers, set up only when a server starts.

Importing cvdeploy never touches logging; :func:`configure_logging` is called by
``cvdeploy serve`` and the worker entry point, and by ``ModelServer`` only when the caller has
configured nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["JSONFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info", json_format: bool = True) -> None:
    """Send cvdeploy's and uvicorn's logs to stderr, as JSON lines by default."""
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    numeric = logging.getLevelName(level.upper())
    for name in ("cvdeploy", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(numeric)
        log.propagate = False
    # cvdeploy writes its own access log with request ids; uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
