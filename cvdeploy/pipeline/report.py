"""The pipeline's report: one document model rendered as Markdown and as self-contained HTML.

``write_report`` fills a folder with ``report.md``, ``report.html`` (charts inlined, so the one
file can be attached to a CI run), the charts as ``.svg`` files and ``result.json``. Both
renderings come from the same list of blocks, so they never disagree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.pipeline.charts import bar_chart_svg, confusion_matrix_svg, pr_curves_svg

__all__ = ["write_report"]

_VERDICT = {True: "pass", False: "FAIL", None: "n/a"}


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class _Chart:
    file: str
    title: str
    svg: str


@dataclass
class _Section:
    title: str
    blocks: list[str | _Table | _Chart] = field(default_factory=list)


def write_report(result: Mapping[str, Any], metrics: Mapping[str, Any], folder: Path) -> list[Path]:
    """Write the report of one pipeline run into ``folder``; returns the files written.

    Files an earlier report left in the same folder (a reused ``--report-dir``) are removed
    first, so a short run never carries a longer run's charts; nothing else is touched.

    Args:
        result: :meth:`DeploymentPipeline.run_pipeline`'s dict.
        metrics: The candidate's full evaluation (per-class figures, confusion matrix or PR
            curves); empty when the run stopped before evaluation.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*_FIXED_FILES, *_CHART_FILES):
        (folder / name).unlink(missing_ok=True)
    title, sections = _document(result, metrics)
    written: list[Path] = []
    for section in sections:
        for block in section.blocks:
            if isinstance(block, _Chart):
                written.append(folder / block.file)
                written[-1].write_text(block.svg, encoding="utf-8")
    outputs = {
        "result.json": json.dumps(result, indent=2, default=str) + "\n",
        "report.html": _html(title, sections),
        "report.md": _markdown(title, sections),
    }
    for name, text in outputs.items():
        (folder / name).write_text(text, encoding="utf-8")
        written.append(folder / name)
    return written


_FIXED_FILES = ("result.json", "report.html", "report.md")
_CHART_FILES = ("confusion_matrix.svg", "pr_curves.svg", "ap50.svg", "timings.svg")


# -- the document -----------------------------------------------------------------------------


def _document(result: Mapping[str, Any], metrics: Mapping[str, Any]) -> tuple[str, list[_Section]]:
    status = str(result.get("status", "failed"))
    version = result.get("model_version")
    what = f"v{version}" if version else str(result.get("model_file") or "a model file")
    title = (
        f"cvdeploy pipeline: {result.get('model_name')} {what}: {status.upper().replace('_', ' ')}"
    )
    sections = [_summary(result)]
    if result.get("reasons"):
        sections.append(_Section("Why", [_bullets(result["reasons"])]))
    if result.get("notes"):
        sections.append(_Section("Notes", [_bullets(result["notes"])]))
    if result.get("gates"):
        sections.append(_gates(result["gates"]))
    if result.get("metrics"):
        sections.append(_metrics(result))
    if metrics.get("per_class"):
        sections.append(_per_class(result.get("task"), metrics))
    if result.get("stages"):
        sections.append(_stages(result["stages"]))
    if result.get("rollout"):
        sections.append(_rollout(result["rollout"]))
    return title, sections


def _summary(result: Mapping[str, Any]) -> _Section:
    data = result.get("eval_data") or {}
    rows = [
        ["status", str(result.get("status"))],
        ["model", f"{result.get('model_name')} version {result.get('model_version') or '-'}"],
        ["task", str(result.get("task"))],
        ["champion before the run", _text(result.get("champion_version"), "none")],
        ["endpoint", _text(result.get("endpoint"), "not deployed")],
        ["evaluation data", _text(data.get("description"), "not loaded")],
        ["data sha256", _text(data.get("sha256"), "-")],
        ["MLflow run", f"{result.get('experiment_name')} / {result.get('run_id')}"],
        ["started", str(result.get("started_at"))],
        ["total time", f"{result.get('timings', {}).get('total', 0):.1f} s"],
    ]
    return _Section("Summary", [_Table(["what", "value"], rows)])


def _gates(gates: Sequence[Mapping[str, Any]]) -> _Section:
    rows = [
        [g["name"], _num(g.get("value")), _num(g.get("threshold")), _VERDICT[g.get("passed")]]
        for g in gates
    ]
    return _Section("Gates", [_Table(["gate", "value", "threshold", "verdict"], rows)])


def _metrics(result: Mapping[str, Any]) -> _Section:
    mine: Mapping[str, float] = result["metrics"]
    theirs: Mapping[str, float] = result.get("champion_metrics") or {}
    thresholds: Mapping[str, float] = result.get("thresholds") or {}
    rows = [
        [name, _num(value), _num(theirs.get(name)), _num(thresholds.get(name))]
        for name, value in mine.items()
    ]
    header = ["metric", "candidate", "champion", "threshold"]
    return _Section("Evaluation", [_Table(header, rows)])


def _per_class(task: Any, metrics: Mapping[str, Any]) -> _Section:
    per_class: Mapping[str, Mapping[str, float]] = metrics["per_class"]
    section = _Section("Per class")
    if task == "detection":
        keys = ["ap50", "ap50_95", "precision", "recall", "support"]
    else:
        keys = ["precision", "recall", "f1", "support"]
    rows = [[name, *(_num(v.get(k)) for k in keys)] for name, v in per_class.items()]
    section.blocks.append(_Table(["class", *keys], rows))
    if task == "detection" and metrics.get("pr_curve"):
        svg = pr_curves_svg(metrics["pr_curve"])
        section.blocks.append(_Chart("pr_curves.svg", "Precision-recall curves", svg))
        ap = {name: v.get("ap50") for name, v in per_class.items()}
        section.blocks.append(
            _Chart("ap50.svg", "AP@0.5 per class", bar_chart_svg(ap, title="AP@0.5 per class"))
        )
    elif metrics.get("confusion_matrix") is not None:
        names = list(per_class)
        svg = confusion_matrix_svg(metrics["confusion_matrix"], names)
        section.blocks.append(_Chart("confusion_matrix.svg", "Confusion matrix", svg))
    return section


def _stages(stages: Sequence[Mapping[str, Any]]) -> _Section:
    rows = []
    for stage in stages:
        failed = [c["detail"] for c in stage.get("checks", []) if c.get("passed") is False]
        count = len(stage.get("checks", []))
        summary = "; ".join(failed) or stage.get("skipped") or f"{count} check" + "s" * (count != 1)
        rows.append([stage["name"], stage["status"], f"{stage.get('seconds', 0):.2f}", summary])
    section = _Section("Stages", [_Table(["stage", "status", "seconds", "details"], rows)])
    for stage in stages:
        checks = stage.get("checks", [])
        if checks:
            section.blocks.append(f"{stage['name']}:")
            section.blocks.append(
                _bullets(
                    f"[{_VERDICT[c.get('passed')]}] {c['name']}: {c['detail']}" for c in checks
                )
            )
    timings = {s["name"]: float(s.get("seconds", 0)) for s in stages}
    section.blocks.append(
        _Chart(
            "timings.svg",
            "Stage timings",
            bar_chart_svg(timings, title="Seconds per stage", unit="s"),
        )
    )
    return section


def _rollout(rollout: Mapping[str, Any]) -> _Section:
    section = _Section("Rollout")
    facts = [
        f"status: {rollout.get('status')}",
        f"failed requests on the candidate: {rollout.get('failed_requests', 0)}",
    ]
    if rollout.get("reason"):
        facts.append(f"reason: {rollout['reason']}")
    if rollout.get("resumed"):
        facts.append(f"resumed: {rollout['resumed']}")
    section.blocks.append(_bullets(facts))
    rows = [
        [
            f"{s.get('percent')}%",
            str(s.get("requests", "")),
            str(s.get("errors", "")),
            _num(s.get("error_rate")),
            _num(s.get("latency_p95_ms")),
            str(s.get("verdict")),
            str(s.get("detail", "")),
        ]
        for s in rollout.get("steps", [])
    ]
    header = ["step", "requests", "errors", "error rate", "p95 ms", "verdict", "detail"]
    section.blocks.append(_Table(header, rows))
    return section


# -- rendering --------------------------------------------------------------------------------


def _bullets(items: Any) -> str:
    return "\n".join(f"- {item}" for item in items)


def _markdown(title: str, sections: Sequence[_Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, _Table):
                out.append("| " + " | ".join(block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, _Chart):
                out.append(f"![{block.title}]({block.file})")
            else:
                out.append(block)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _html(title: str, sections: Sequence[_Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, _Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif isinstance(block, _Chart):
                # Inlined: one file to attach to a CI run. The SVG escapes its own text.
                body.append(
                    f"<figure>{block.svg}<figcaption>{html.escape(block.title)}</figcaption></figure>"
                )
            elif block.startswith("- "):
                items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in block.splitlines())
                body.append(f"<ul>{items}</ul>")
            else:
                body.append(f"<p>{html.escape(block)}</p>")
    return _PAGE.format(title=html.escape(title), body="\n".join(body))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 960px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1rem 0; }}
</style></head>
<body>
{body}
</body></html>
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _text(value: Any, fallback: str) -> str:
    return fallback if value in (None, "") else str(value)
