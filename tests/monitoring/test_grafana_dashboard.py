"""The Grafana dashboard in deploy/grafana queries only series cvdeploy exports, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cvdeploy.platforms.local.telemetry import PlatformMetrics
from cvdeploy.serving.metrics import ServingMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cvdeploy-dashboard.json"
PROMTOOL = shutil.which("promtool")

# Sample names a family exposes beside its own name, by type (prometheus_client's families
# drop ``_total`` from a counter's name; ``_created`` is the creation timestamp).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip
# Grafana's variables, replaced by what they may stand for so that promtool can parse the rest.
_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found = []
    stack = list(_dashboard()["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return found


def _exported_series() -> set[str]:
    names = set()
    for registry in (ServingMetrics("m", "1").registry, PlatformMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (labels, strings, ranges and calls removed)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    tokens = re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", bare)
    return {t.group() for t in tokens if t.group().lower() not in _KEYWORDS}


def _substituted(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: _VARIABLES.get(m.group(1), ".*"), expr)


def test_metric_names_are_read_from_an_expression() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{model=~"$model"}[$__rate_interval])))'
        " / on (model) group_left sum(b_total offset 5m) and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_is_grafana_json_with_its_template_variables() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "endpoint"):
        assert variables[name]["query"]["query"].startswith("label_values(")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]


def test_every_query_selects_only_series_cvdeploy_exports() -> None:
    exported = _exported_series()
    # label_values(SELECTOR, label): only the selector names a series.
    variables = [v["query"]["query"] for v in _dashboard()["templating"]["list"][1:]]
    selectors = [re.fullmatch(r"label_values\((.+),\s*\w+\)", q) for q in variables]
    assert all(selectors), variables
    queries = [*_exprs(), *(("variable", m.group(1)) for m in selectors if m)]
    unknown = {
        f"{title}: {name}"
        for title, expr in queries
        for name in metric_names(expr)
        if name not in exported
    }
    assert not unknown, f"not exported by cvdeploy: {sorted(unknown)}"
    used = {name for _, expr in queries for name in metric_names(expr)}
    assert "cvdeploy_request_latency_seconds_bucket" in used
    assert "cvdeploy_endpoint_replicas" in used


@pytest.mark.skipif(
    PROMTOOL is None,
    reason="no `promtool` on PATH (Debian/Ubuntu: apt-get install prometheus)",
)
def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = [
        f"      - record: cvdeploy:dashboard:{i}\n        expr: {json.dumps(_substituted(expr))}\n"
        for i, (_, expr) in enumerate(_exprs())
    ]
    path = tmp_path / "rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout
