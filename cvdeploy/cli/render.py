"""Rich rendering of prediction results for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["print_result"]


def print_result(console: Console, source: str, result: dict[str, Any]) -> None:
    """Print one result (the ``to_dict()`` form) as a table titled with its source."""
    if result.get("task") == "classification":
        table = Table(title=f"{escape(source)}: top classes", title_justify="left")
        table.add_column("class", justify="right")
        table.add_column("label")
        table.add_column("score", justify="right")
        for item in result["classes"]:
            table.add_row(str(item["class_id"]), escape(item["label"]), f"{item['score']:.4f}")
    else:
        image = result.get("image", {})
        detections = result.get("detections", [])
        table = Table(
            title=f"{escape(source)}: {len(detections)} detection(s) in "
            f"{image.get('width')}x{image.get('height')}",
            title_justify="left",
        )
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("box (x1, y1, x2, y2)", justify="right")
        for det in detections:
            box = ", ".join(f"{v:.1f}" for v in det["box"])
            table.add_row(escape(det["label"]), f"{det['score']:.3f}", box)
    console.print(table)
