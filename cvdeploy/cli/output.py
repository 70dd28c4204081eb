"""What every command shares for output: the consoles, error exits, JSON and timestamps."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cvdeploy.errors import CVDeployError

__all__ = ["JsonOption", "console", "err_console", "fail", "print_json", "when"]

console = Console()
err_console = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def fail(error: BaseException) -> typer.Exit:
    """Print the error (as text, never as Rich markup) and exit 2 for our errors, 1 otherwise."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}")
    return typer.Exit(code=2 if isinstance(error, CVDeployError) else 1)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def when(seconds: float | None) -> str:
    """A UTC timestamp for tables, ``-`` when unknown."""
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
