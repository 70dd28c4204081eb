"""The pipeline's report: both renderings, and a reused folder never carries stale files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from cvdeploy.pipeline.report import write_report

RESULT = {
    "status": "rejected",
    "model_name": "cv_model",
    "model_version": "2",
    "task": "classification",
    "gates": [
        {
            "name": "threshold:accuracy",
            "passed": False,
            "value": 0.6,
            "threshold": 0.9,
            "detail": "accuracy 0.6000 < threshold 0.9000",
        }
    ],
    "metrics": {"accuracy": 0.6},
    "thresholds": {"accuracy": 0.9},
    "stages": [{"name": "gates", "status": "failed", "seconds": 0.01, "checks": []}],
    "reasons": ["gates: accuracy 0.6000 < threshold 0.9000 | <b>"],
    "timings": {"total": 1.0},
}
METRICS = {
    "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2}},
    "confusion_matrix": [[1]],
}


def test_markdown_html_and_charts_are_written_and_well_formed(tmp_path):
    written = write_report(RESULT, METRICS, tmp_path)
    names = {p.name for p in written}
    assert {"report.md", "report.html", "result.json", "confusion_matrix.svg"} <= names
    markdown = (tmp_path / "report.md").read_text()
    assert "REJECTED" in markdown
    assert "| threshold:accuracy | 0.6 | 0.9 | FAIL |" in markdown
    html = (tmp_path / "report.html").read_text()
    assert "&lt;b&gt;" in html
    assert "<b>" not in html.split("<body>", 1)[1]  # user text is escaped
    HTMLParser().feed(html)
    for chart in tmp_path.glob("*.svg"):
        ET.fromstring(chart.read_text())


def test_a_reused_folder_keeps_no_file_from_the_previous_report(tmp_path):
    write_report(RESULT, METRICS, tmp_path)
    assert (tmp_path / "confusion_matrix.svg").exists()
    (tmp_path / "notes.txt").write_text("mine")
    written = write_report({**RESULT, "stages": []}, {}, tmp_path)
    assert not (tmp_path / "confusion_matrix.svg").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not ours: untouched
    assert all(p.parent == tmp_path for p in written)
    assert "notes.txt" not in {p.name for p in written}
