"""``cvdeploy monitor`` and ``cvdeploy alerts``: ModelMonitor from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.output import JsonOption, console, fail, print_json
from cvdeploy.errors import CVDeployError

__all__ = ["alerts", "monitor"]

TargetArgument = Annotated[
    str, typer.Argument(help="A model server URL (http://...) or an endpoint name.")
]
TokenOption = Annotated[
    str | None, typer.Option(envvar="CVDEPLOY_TOKEN", help="Bearer token [$CVDEPLOY_TOKEN].")
]
UrlOption = Annotated[
    str | None, typer.Option("--url", help="Platform URL for an endpoint name (default: found).")
]
ConfigOption = Annotated[
    Path | None, typer.Option(help="Config YAML with the monitoring section (default: found).")
]


def _monitor(target: str, config: Path | None, token: str | None, url: str | None,
             window: float | None) -> Any:  # fmt: skip
    from cvdeploy.config import Config
    from cvdeploy.monitoring.monitor import ModelMonitor

    settings = Config(config).get_monitoring_config()
    return ModelMonitor(
        target, **settings, token=token, platform_url=url, window_s=window, history=False,
        sinks=[],
    )  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _table(snapshot: dict[str, Any]) -> Table:
    title = f"{escape(snapshot['source'])}: {snapshot['status']}"
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    if snapshot["status"] != "ok":
        table.add_row("error", escape(str(snapshot.get("error"))))
        return table
    latency = snapshot.get("latency_ms") or {}
    resources = snapshot.get("resources") or {}
    drift = snapshot.get("drift") or {}
    rows = [
        ("window", f"{snapshot['window_s']:g} s"),
        ("requests", str(snapshot.get("requests", 0))),
        ("throughput", f"{snapshot.get('throughput_rps', 0):.2f} req/s"),
        ("latency p50 / p95 / p99", " / ".join(_ms(latency.get(k)) for k in ("p50", "p95", "p99"))),
        ("error rate (5xx)", f"{100 * (snapshot.get('error_rate') or 0):.2f} %"),
        ("client errors (4xx)", f"{100 * (snapshot.get('client_error_rate') or 0):.2f} %"),
        ("cpu (of the machine)", f"{resources.get('cpu_percent', 0):.1f} %"),
        ("memory (machine)", f"{resources.get('memory_percent', 0):.1f} %"),
        ("resident memory", f"{(resources.get('rss_bytes') or 0) / 2**20:.0f} MiB"),
        ("drift", str(drift.get("status")) + (
            f" ({', '.join(drift['drifted'])})" if drift.get("drifted") else "")),
    ]  # fmt: skip
    if resources.get("gpu_utilization") is not None:
        rows.append(("gpu", f"{resources['gpu_utilization']:.0f} %"))
    if snapshot.get("versions"):
        for name, version in snapshot["versions"].items():
            p95 = (version.get("latency_ms") or {}).get("p95")
            rows.append(
                (
                    f"  {name} ({version.get('traffic_percentage')} %)",
                    f"{version.get('requests', 0)} req, p95 {_ms(p95)}, "
                    f"{version.get('replicas', 0)} replica(s)",
                )
            )
    for alert in snapshot.get("alerts", []):
        rows.append((f"[red]ALERT {escape(alert['alertname'])}[/]", escape(alert["message"])))
    for name, value in rows:
        table.add_row(name, escape(value) if not value.startswith("[") else value)
    return table


def monitor(
    target: TargetArgument,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 5.0,
    window: Annotated[
        float | None, typer.Option(help="Seconds the figures cover (default: interval, 10-300).")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One snapshot, then exit.")] = False,
    config: ConfigOption = None,
    token: TokenOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live figures of a model server or endpoint: latency, throughput, errors, CPU, drift."""
    try:
        mon = _monitor(target, config, token, url, window or min(300.0, max(10.0, interval)))
    except CVDeployError as exc:
        raise fail(exc) from None
    try:
        if once or as_json:
            snapshot = mon.get_metrics()
            if as_json:
                print_json(snapshot)
            else:
                console.print(_table(snapshot))
            if snapshot["status"] != "ok":
                raise typer.Exit(code=2)
            return
        with Live(_table(mon.get_metrics()), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(_table(mon.get_metrics()))
    except KeyboardInterrupt:
        pass
    finally:
        mon.stop(timeout=1.0)


def alerts(
    target: TargetArgument,
    config: ConfigOption = None,
    token: TokenOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the config's alert rules against a server or endpoint now."""
    try:
        mon = _monitor(target, config, token, url, None)
        snapshot = mon.get_metrics()
    except CVDeployError as exc:
        raise fail(exc) from None
    from cvdeploy.monitoring.monitor import alert_values

    values = alert_values(snapshot) if snapshot["status"] == "ok" else {}
    firing = {a["alertname"] for a in snapshot["alerts"]}
    rows = [
        {
            "rule": rule.name,
            "metric": rule.metric,
            "condition": f"{rule.comparison} {rule.threshold:g}"
            + (f" for {rule.for_s:g} s" if rule.for_s else ""),
            "value": values.get(rule.metric),
            "severity": rule.severity,
            "state": "firing" if rule.name in firing else (
                "no data" if values.get(rule.metric) is None else "ok"),
        }
        for rule in mon.alerts.rules
    ]  # fmt: skip
    mon.stop(timeout=1.0)
    if as_json:
        print_json({"source": snapshot["source"], "status": snapshot["status"], "rules": rows})
    else:
        table = Table(title=f"{escape(snapshot['source'])}: alert rules", title_justify="left")
        for column in ("rule", "metric", "condition", "value", "severity", "state"):
            table.add_column(column)
        for row in rows:
            value = "-" if row["value"] is None else f"{row['value']:.4g}"
            state = "[red]firing[/]" if row["state"] == "firing" else row["state"]
            table.add_row(row["rule"], row["metric"], row["condition"], value, row["severity"],
                          state)  # fmt: skip
        console.print(table)
    if snapshot["status"] != "ok" or firing:
        raise typer.Exit(code=1 if firing else 2)
