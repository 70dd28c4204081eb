"""Small hand-written SVG charts for the pipeline report: confusion matrix, PR curves, bars.

The report is one self-contained HTML file that must open anywhere (a CI artifact, an MLflow
run), so the charts are plain SVG strings with no plotting dependency and no script. Every piece
of user text (class names, titles, units) goes through :func:`xml.sax.saxutils.escape` and only
into text nodes, never attributes, so a class called ``<b>&`` cannot break the markup. Every number
written is finite: empty or non-finite input gives a valid SVG that says "no data" (or "n/a")
instead of coordinates such as ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

from cvdeploy.errors import InputError

__all__ = ["bar_chart_svg", "confusion_matrix_svg", "pr_curves_svg"]

_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"
# Tableau 10: distinguishable, and readable by most colour-blind viewers.
_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
# Past this many classes the cells are too small for their counts (hover titles still have them).
MAX_LABELLED_CELLS = 30
# Past this many classes only non-zero cells are drawn, or a 1000-class matrix would be 1M rects.
MAX_DENSE_CLASSES = 100
_MAX_LEGEND = 20
_MAX_LABEL_CHARS = 24


def _num(value: float) -> str:
    """A coordinate: short and always finite."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def _label(name: str) -> str:
    """Visible (possibly shortened) text with the full name as a hover title, both escaped."""
    shown = name if len(name) <= _MAX_LABEL_CHARS else name[: _MAX_LABEL_CHARS - 1] + "…"
    return f"<title>{escape(name)}</title>{escape(shown)}"


def _text_width(text: str, size: float) -> float:
    """A rough width for layout; SVG cannot measure text without a renderer."""
    return min(len(text), _MAX_LABEL_CHARS) * size * 0.6


def _document(width: float, height: float, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" height="{_num(height)}" '
        f'viewBox="0 0 {_num(width)} {_num(height)}" style="{_FONT}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<rect width="100%" height="100%" fill="#ffffff"/>'
        f'<text x="{_num(width / 2)}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>"
    )


def _no_data(title: str) -> str:
    return _document(
        360,
        120,
        title,
        ['<text x="180" y="75" text-anchor="middle" font-size="13" fill="#666666">no data</text>'],
    )


def _blue(fraction: float) -> str:
    """White to dark blue (ColorBrewer Blues ends) for ``fraction`` in [0, 1]."""
    f = min(max(fraction, 0.0), 1.0)
    low, high = (247, 251, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * f) for a, c in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def confusion_matrix_svg(
    matrix: Sequence[Sequence[int]], names: Sequence[str], *, title: str = "Confusion matrix"
) -> str:
    """Rows are the true class, columns the predicted one; counts in the cells.

    A cell's colour is its share of the row (so the diagonal reads as per-class recall and a
    large class does not wash out the rest); the count is printed on it up to
    ``MAX_LABELLED_CELLS`` classes, white on dark cells.
    """
    n = len(names)
    if n == 0 or len(matrix) == 0:
        return _no_data(title)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise InputError(
            f"the confusion matrix must be {n}x{n} for {n} names, got {len(matrix)} rows of "
            f"lengths {sorted({len(row) for row in matrix})}"
        )
    counts = [[int(v) for v in row] for row in matrix]
    cell = min(44.0, max(3.0, 600.0 / n))
    font = min(12.0, max(3.0, cell * 0.7))
    label_w = max(_text_width(name, font) for name in names) + 10
    left = 40 + label_w
    top = 50.0
    grid = n * cell
    bottom_labels = label_w * 0.75 + 10  # column names at -45 degrees
    width = max(left + grid + 90, 360)
    height = top + grid + bottom_labels + 40
    body = [
        f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(grid)}" '
        f'height="{_num(grid)}" fill="{_blue(0)}" stroke="#cccccc"/>'
    ]
    show_counts = n <= MAX_LABELLED_CELLS
    for i, row in enumerate(counts):
        total = sum(row)
        for j, value in enumerate(row):
            if value == 0 and n > MAX_DENSE_CLASSES:
                continue
            fraction = value / total if total else 0.0
            x, y = left + j * cell, top + i * cell
            body.append(
                f'<rect class="cell" x="{_num(x)}" y="{_num(y)}" width="{_num(cell)}" '
                f'height="{_num(cell)}" fill="{_blue(fraction)}" stroke="#ffffff" '
                f'stroke-width="{_num(min(1.0, cell / 20))}"><title>true {escape(names[i])}, '
                f"predicted {escape(names[j])}: {value}</title></rect>"
            )
            if show_counts:
                colour = "#ffffff" if fraction > 0.55 else "#222222"
                body.append(
                    f'<text x="{_num(x + cell / 2)}" y="{_num(y + cell / 2 + font / 3)}" '
                    f'text-anchor="middle" font-size="{_num(font)}" fill="{colour}">'
                    f"{value}</text>"
                )
    for k, name in enumerate(names):
        centre = top + k * cell + cell / 2
        body.append(
            f'<text x="{_num(left - 5)}" y="{_num(centre + font / 3)}" text-anchor="end" '
            f'font-size="{_num(font)}">{_label(name)}</text>'
        )
        cx, cy = left + k * cell + cell / 2, top + grid + 8
        body.append(
            f'<text x="{_num(cx)}" y="{_num(cy)}" text-anchor="end" font-size="{_num(font)}" '
            f'transform="rotate(-45 {_num(cx)} {_num(cy)})">{_label(name)}</text>'
        )
    body.append(
        f'<text x="{_num(left + grid / 2)}" y="{_num(height - 12)}" text-anchor="middle" '
        'font-size="13">Predicted class</text>'
        f'<text x="16" y="{_num(top + grid / 2)}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 16 {_num(top + grid / 2)})">True class</text>'
    )
    # Colour key: share of the true class.
    key_x, key_h = left + grid + 20, min(grid, 200.0)
    body.append(
        '<defs><linearGradient id="cm-scale" x1="0" y1="1" x2="0" y2="0">'
        f'<stop offset="0" stop-color="{_blue(0)}"/><stop offset="1" stop-color="{_blue(1)}"/>'
        f'</linearGradient></defs><rect x="{_num(key_x)}" y="{_num(top)}" width="14" '
        f'height="{_num(key_h)}" fill="url(#cm-scale)" stroke="#cccccc"/>'
        f'<text x="{_num(key_x + 18)}" y="{_num(top + 9)}" font-size="10">100%</text>'
        f'<text x="{_num(key_x + 18)}" y="{_num(top + key_h)}" font-size="10">0%</text>'
        f'<text x="{_num(key_x)}" y="{_num(top + key_h + 14)}" font-size="10">of row</text>'
    )
    return _document(width, height, title, body)


def _finite_points(
    recall: Sequence[float], precision: Sequence[float]
) -> list[tuple[float, float]]:
    return [
        (min(max(r, 0.0), 1.0), min(max(p, 0.0), 1.0))
        for r, p in zip(recall, precision, strict=True)
        if math.isfinite(r) and math.isfinite(p)
    ]


def pr_curves_svg(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    title: str = "Precision-recall (IoU 0.5)",
) -> str:
    """One polyline per class, ``{name: {"recall": [...], "precision": [...]}}``, with a legend.

    Non-finite points are dropped; values are clamped to [0, 1].
    """
    if not curves:
        return _no_data(title)
    for name, curve in curves.items():
        if len(curve.get("recall", ())) != len(curve.get("precision", ())):
            raise InputError(
                f"the curve of {name!r} has {len(curve.get('recall', ()))} recall and "
                f"{len(curve.get('precision', ()))} precision values; they must pair up"
            )
    left, top, size = 60.0, 45.0, 360.0
    legend_x = left + size + 20
    legend_w = max(_text_width(name, 11) for name in curves) + 30
    shown = list(curves)[:_MAX_LEGEND]
    width = legend_x + legend_w + 10
    height = max(top + size + 55, top + 18 * (len(shown) + 1) + 20)
    body = []
    for k in range(6):  # grid and ticks every 0.2
        v = k / 5
        x, y = left + v * size, top + size - v * size
        body.append(
            f'<line x1="{_num(x)}" y1="{_num(top)}" x2="{_num(x)}" y2="{_num(top + size)}" '
            f'stroke="#eeeeee"/><line x1="{_num(left)}" y1="{_num(y)}" '
            f'x2="{_num(left + size)}" y2="{_num(y)}" stroke="#eeeeee"/>'
            f'<text x="{_num(x)}" y="{_num(top + size + 16)}" text-anchor="middle" '
            f'font-size="11">{v:.1f}</text><text x="{_num(left - 6)}" y="{_num(y + 4)}" '
            f'text-anchor="end" font-size="11">{v:.1f}</text>'
        )
    body.append(
        f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(size)}" height="{_num(size)}" '
        'fill="none" stroke="#888888"/>'
        f'<text x="{_num(left + size / 2)}" y="{_num(top + size + 38)}" text-anchor="middle" '
        'font-size="13">Recall</text>'
        f'<text x="18" y="{_num(top + size / 2)}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 18 {_num(top + size / 2)})">Precision</text>'
    )
    for k, (name, curve) in enumerate(curves.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        points = _finite_points(curve.get("recall", ()), curve.get("precision", ()))
        coords = " ".join(
            f"{_num(left + r * size)},{_num(top + size - p * size)}" for r, p in points
        )
        body.append(
            f'<polyline class="curve" points="{coords}" fill="none" stroke="{colour}" '
            f'stroke-width="1.8"><title>{escape(name)}</title></polyline>'
        )
        if k < _MAX_LEGEND:
            y = top + 18 * k + 8
            body.append(
                f'<line x1="{_num(legend_x)}" y1="{_num(y)}" x2="{_num(legend_x + 18)}" '
                f'y2="{_num(y)}" stroke="{colour}" stroke-width="3"/>'
                f'<text x="{_num(legend_x + 24)}" y="{_num(y + 4)}" font-size="11">'
                f"{_label(name)}</text>"
            )
    if len(curves) > _MAX_LEGEND:
        y = top + 18 * _MAX_LEGEND + 8
        body.append(
            f'<text x="{_num(legend_x)}" y="{_num(y + 4)}" font-size="11" fill="#666666">'
            f"… {len(curves) - _MAX_LEGEND} more (hover a curve)</text>"
        )
    return _document(width, height, title, body)


def _value(raw: float | None) -> float:
    """None (e.g. the AP of a class without ground truth) is drawn like NaN: no bar, "n/a"."""
    return math.nan if raw is None else float(raw)


def _format(value: float, unit: str) -> str:
    return f"{value:.4g}{unit}" if math.isfinite(value) else "n/a"


def bar_chart_svg(values: Mapping[str, float | None], *, title: str, unit: str = "") -> str:
    """Horizontal bars, one per key (per-class F1, stage timings, ...), value printed at the end.

    Negative values extend left of a zero line; None and non-finite ones get no bar and read
    "n/a".
    """
    if not values:
        return _no_data(title)
    unit = escape(unit)
    finite = [v for v in map(_value, values.values()) if math.isfinite(v)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    if high == low:
        high = low + 1.0
    font, bar_h, gap = 12.0, 18.0, 6.0
    name_x = 14 + max(_text_width(name, font) for name in values)
    value_w = max(_text_width(_format(_value(v), unit), 11) for v in values.values())
    # Negative bars print their value on their left, between the names and the plot.
    left = name_x + 6 + (value_w + 6 if low < 0 else 0)
    span = 420.0
    top = 42.0
    zero = left + (0.0 - low) / (high - low) * span
    width = left + span + value_w + 14
    height = top + len(values) * (bar_h + gap) + 20
    body = []
    for k, (name, raw) in enumerate(values.items()):
        value = _value(raw)
        y = top + k * (bar_h + gap)
        body.append(
            f'<text x="{_num(name_x)}" y="{_num(y + bar_h * 0.7)}" text-anchor="end" '
            f'font-size="{_num(font)}">{_label(name)}</text>'
        )
        end = zero
        if math.isfinite(value):
            end = left + (value - low) / (high - low) * span
            x = min(zero, end)
            body.append(
                f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(abs(end - zero))}" '
                f'height="{_num(bar_h)}" fill="{_PALETTE[0]}"><title>{escape(name)}: '
                f"{_format(value, unit)}</title></rect>"
            )
        anchor, tx = ("end", min(zero, end) - 4) if value < 0 else ("start", max(zero, end) + 4)
        body.append(
            f'<text x="{_num(tx)}" y="{_num(y + bar_h * 0.7)}" text-anchor="{anchor}" '
            f'font-size="11">{_format(value, unit)}</text>'
        )
    body.append(
        f'<line x1="{_num(zero)}" y1="{_num(top - 4)}" x2="{_num(zero)}" '
        f'y2="{_num(height - 16)}" stroke="#888888"/>'
    )
    return _document(width, height, title, body)
