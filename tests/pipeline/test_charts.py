"""The report's SVG charts: well-formed, escaped, the right number of marks, no NaN text."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from cvdeploy.errors import InputError
from cvdeploy.pipeline import charts
from cvdeploy.pipeline.charts import bar_chart_svg, confusion_matrix_svg, pr_curves_svg

SVG = "{http://www.w3.org/2000/svg}"
NASTY = "<b>&"
ESCAPED = "&lt;b&gt;&amp;"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert not re.search(r"\b(nan|inf)\b", svg, re.IGNORECASE), "non-finite number in the SVG"
    return root


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    """The visible text of every <text>, without the hover <title> inside it."""
    return [
        (e.text or "") + "".join(child.tail or "" for child in e) for e in root.iter(f"{SVG}text")
    ]


def test_confusion_matrix_has_a_cell_and_count_per_pair() -> None:
    names = ["cat", NASTY, "dog"]
    matrix = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    svg = confusion_matrix_svg(matrix, names)
    root = parse(svg)
    assert len(marks(root, "rect", "cell")) == 9
    shown = texts(root)
    for value in (5, 1, 2, 7, 9):
        assert str(value) in shown
    assert ESCAPED in svg
    assert NASTY not in svg
    assert any(NASTY in t for t in shown)  # and it reads back as the real name
    assert "Predicted class" in shown
    assert "True class" in shown


def test_dark_cells_get_light_text() -> None:
    root = parse(confusion_matrix_svg([[10, 0], [0, 10]], ["a", "b"]))
    fills = {e.text: e.get("fill") for e in root.iter(f"{SVG}text") if e.text in {"10", "0"}}
    assert set(fills) == {"10", "0"}
    assert fills["10"] == "#ffffff"
    assert fills["0"] != "#ffffff"


def test_large_matrix_drops_cell_numbers() -> None:
    n = charts.MAX_LABELLED_CELLS + 1
    names = [f"class {i}" for i in range(n)]
    matrix = [[(i + j) % 3 for j in range(n)] for i in range(n)]
    root = parse(confusion_matrix_svg(matrix, names))
    assert len(marks(root, "rect", "cell")) == n * n
    assert not [t for t in texts(root) if t.isdigit()]
    for name in names:
        assert name in texts(root)


def test_huge_matrix_draws_only_non_zero_cells() -> None:
    n = charts.MAX_DENSE_CLASSES + 50
    matrix = [[3 if i == j else 0 for j in range(n)] for i in range(n)]
    matrix[0][1] = 1
    root = parse(confusion_matrix_svg(matrix, [str(i) for i in range(n)]))
    assert len(marks(root, "rect", "cell")) == n + 1


def test_long_names_are_shortened_but_kept_whole_in_titles() -> None:
    long = "a-very-long-class-name-that-goes-on-and-on"
    svg = confusion_matrix_svg([[1]], [long])
    root = parse(svg)
    assert long in svg
    assert any(t.endswith("…") for t in texts(root))


@pytest.mark.parametrize("matrix", [[], [[]]])
def test_empty_matrix_says_no_data(matrix: list[list[int]]) -> None:
    root = parse(confusion_matrix_svg(matrix, []))
    assert "no data" in texts(root)


def test_matrix_of_the_wrong_shape_is_an_error() -> None:
    with pytest.raises(InputError, match="2x2"):
        confusion_matrix_svg([[1, 2, 3]], ["a", "b"])


def test_pr_curves_one_polyline_and_legend_entry_per_class() -> None:
    recall = [i / 100 for i in range(101)]
    curves = {
        "cat": {"recall": recall, "precision": [1 - r / 2 for r in recall]},
        NASTY: {"recall": recall, "precision": [1.0] * 51 + [0.0] * 50},
        "empty": {"recall": [], "precision": []},
    }
    svg = pr_curves_svg(curves)
    root = parse(svg)
    lines = marks(root, "polyline", "curve")
    assert len(lines) == 3
    assert len(lines[0].get("points", "").split()) == 101
    assert ESCAPED in svg
    shown = texts(root)
    assert "cat" in shown
    assert "Recall" in shown
    assert "Precision" in shown
    assert any(NASTY in t for t in shown)


def test_pr_curves_drop_non_finite_points() -> None:
    curve = {"recall": [0.0, math.nan, 1.0], "precision": [1.0, 0.5, math.inf]}
    root = parse(pr_curves_svg({"a": curve}))
    assert len(marks(root, "polyline", "curve")[0].get("points", "").split()) == 1


def test_many_curves_cap_the_legend() -> None:
    curves = {f"c{i}": {"recall": [0.0, 1.0], "precision": [1.0, 0.0]} for i in range(30)}
    svg = pr_curves_svg(curves)
    root = parse(svg)
    assert len(marks(root, "polyline", "curve")) == 30
    assert any("10 more" in t for t in texts(root))
    for name in curves:  # every name is still there, as the curve's hover title
        assert f"<title>{name}</title>" in svg


def test_no_curves_says_no_data() -> None:
    root = parse(pr_curves_svg({}))
    assert "no data" in texts(root)


def test_unpaired_curve_is_an_error() -> None:
    with pytest.raises(InputError, match="pair up"):
        pr_curves_svg({"a": {"recall": [0.0, 1.0], "precision": [1.0]}})


def test_bar_chart_one_bar_per_value_with_unit() -> None:
    values = {"security": 0.25, "performance": 12.5, NASTY: 3.0}
    svg = bar_chart_svg(values, title="Stage <timings>", unit=" s")
    root = parse(svg)
    assert len(marks(root, "rect", "bar")) == 3
    shown = texts(root)
    assert "12.5 s" in shown
    assert "Stage <timings>" in shown
    assert ESCAPED in svg


def test_bar_chart_handles_negative_zero_and_non_finite() -> None:
    values = {"a": -1.0, "b": 0.0, "c": math.nan, "d": math.inf, "no gt": None}
    root = parse(bar_chart_svg(values, title="t"))
    assert len(marks(root, "rect", "bar")) == 2
    assert texts(root).count("n/a") == 3
    parse(bar_chart_svg({"only": 0.0}, title="zeros"))


def test_no_values_says_no_data() -> None:
    assert "no data" in texts(parse(bar_chart_svg({}, title="F1 per class")))


def test_public_api() -> None:
    assert charts.__all__ == ["bar_chart_svg", "confusion_matrix_svg", "pr_curves_svg"]
