"""Platform benchmark: what the local platform's gateway and control loop cost a request.

Runs ``cvdeploy up`` as a separate process (its own GIL, like a real deployment) on a temporary
``$CVDEPLOY_HOME`` with the demo models registered, and measures three things against targets:

1. **Gateway overhead**: the demo digits classifier as an endpoint with exactly one replica;
   wrk POSTs the same JSON body (``{"inputs": [<base64 png>]}``) through the gateway
   (``/serving-endpoints/{name}/invocations``) and straight to the replica's own
   ``/invocations``, in interleaved rounds: p50 at concurrency 1 and requests/s at
   concurrency 8. Targets: gateway throughput >= 0.9x direct; added p50 <= 1 ms.
2. **Cold start**: the demo shapes detector (YOLO layout) with scale-to-zero and a 2 s idle
   timeout; once the endpoint has no replica, one request is timed from send to answer.
   Repeated, each time from zero. Target: median <= 3 s.
3. **Version switch under load**: closed-loop load at concurrency 4 while the endpoint's config
   moves from version 1 to version 2 (100 %), and 2 s after it is NOT_UPDATING again; every
   request is counted by status and by the ``served-model-name`` that answered. Target: 0
   failed requests.

    python benchmarks/endpoints_bench.py             # full run (~1.5 minutes on 2 cores)
    python benchmarks/endpoints_bench.py --quick     # smoke test (~1 minute)

Needs ``wrk`` on PATH (``apt-get install wrk``). Writes ``benchmarks/results/endpoints.json``
(``--json PATH``). See benchmarks/README.md, section "Platform".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import serving  # the serving benchmark's wrk driver, CPU meter and report helpers

REPO = serving.REPO
DEFAULT_OUT = serving.BENCH_DIR / "results" / "endpoints.json"
DEMO = REPO / "cvdeploy" / "demo"
DIGITS = DEMO / "digits_classifier.onnx"
SHAPES = DEMO / "shapes_detector.onnx"

THROUGHPUT_TARGET = 0.9  # gateway requests/s / direct requests/s at concurrency 8
ADDED_P50_TARGET_MS = 1.0  # gateway p50 - direct p50 at concurrency 1
COLD_START_TARGET_S = 3.0
IDLE_TIMEOUT_S = 2  # the platform's scale-to-zero idle timeout, set through the environment
SWITCH_CONCURRENCY = 4
GATEWAY_CONCURRENCY = 8

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------- platform


class PlatformProcess:
    """``python -m cvdeploy.cli up`` in a subprocess, on its own ``$CVDEPLOY_HOME``.

    It runs in an empty directory with no inherited ``CVDEPLOY_*`` variables (so no config
    file or setting of the caller's changes what is measured), plus ``env``.
    """

    def __init__(self, home: Path, workdir: Path, env: dict[str, str], log_level: str) -> None:
        self.home = home
        self.port = serving.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "platform.log"
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CVDEPLOY_")}
        self.env.update({"CVDEPLOY_HOME": str(home), **env})
        self.command = [sys.executable, "-m", "cvdeploy.cli", "up", "--host", "127.0.0.1"]
        self.command += ["--port", str(self.port), "--log-level", log_level]
        self.process: subprocess.Popen[bytes] | None = None
        self.seen_children: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start it and wait for ``platform.json`` and ``GET /health`` from the same pid."""
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        runtime_file = self.home / "platform.json"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the platform exited during start-up:\n{self.log_tail()}")
                if runtime_file.is_file():
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        health = client.get(f"{self.url}/health")
                        if health.status_code == 200 and health.json().get("pid") == self.pid:
                            return time.monotonic() - started
                time.sleep(0.1)
        raise RuntimeError(f"the platform did not start in {timeout:g} s:\n{self.log_tail()}")

    def remember_children(self) -> None:
        """Note the replica processes it runs now, to make sure they are gone after ``stop``."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self.seen_children.add(child.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM (the platform drains and stops its replicas), then make sure of it."""
        if self.process is None:
            return
        self.remember_children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in sorted(self.seen_children):  # only processes this platform started
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                child.terminate()
                child.wait(10)
        self.process = None


def _entity(name: str, version: str, **extra: Any) -> dict[str, Any]:
    return {"entity_name": name, "entity_version": version, **extra}


def _spec(endpoint: str, entity: dict[str, Any]) -> dict[str, Any]:
    served = f"{entity['entity_name']}-{entity['entity_version']}"
    return {
        "name": endpoint,
        "config": {
            "served_entities": [entity],
            "traffic_config": {
                "routes": [{"served_model_name": served, "traffic_percentage": 100}]
            },
        },
    }


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _post_ok(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    response = client.post(url, content=body, headers={"content-type": "application/json"})
    if response.status_code != 200:
        raise RuntimeError(f"POST {url}: HTTP {response.status_code}: {response.text[:500]}")
    predictions = response.json().get("predictions")
    if not isinstance(predictions, list) or len(predictions) != 1:
        raise RuntimeError(f"POST {url}: unexpected body {response.text[:500]}")
    return response


# ----------------------------------------------------------------------- 1. gateway overhead


def write_json_lua(workdir: Path, body: bytes) -> Path:
    """serving.py's wrk script (its ``done`` summary), sending ``body`` as JSON."""
    body_path = workdir / "digits_body.json"
    body_path.write_bytes(body)
    text = serving._LUA.format(body=body_path)
    jpeg_header = 'wrk.headers["Content-Type"] = "image/jpeg"'
    assert jpeg_header in text, "serving._LUA changed; update write_json_lua"
    lua = workdir / "digits_json.lua"
    lua.write_text(text.replace(jpeg_header, jpeg_header.replace("image/jpeg", "application/json")))
    return lua


def _wrk_point(
    url: str, lua: Path, connections: int, seconds: float, pids: Sequence[int]
) -> dict[str, Any]:
    with serving.CpuMeter(pids) as meter:
        out = serving.run_wrk(url, lua, connections, seconds)
    requests = max(1, int(out.get("requests", 0)))
    return {
        "connections": connections,
        "requests": out.get("requests"),
        "requests_per_s": out["requests_per_s"],
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
        "errors": serving._errors(out),
        "platform_cpu_ms_per_req": 1e3 * meter.procs_cpu[0] / requests,
        "replica_cpu_ms_per_req": 1e3 * meter.procs_cpu[1] / requests,
        "wrk_cpu_cores": meter.children / meter.wall,
        "foreign_cores": round(meter.foreign_cores, 2),
    }


def bench_gateway(
    platform: PlatformProcess, client: Any, args: argparse.Namespace, workdir: Path, log: Log
) -> dict[str, Any]:
    name = "digits-one"
    client.create_endpoint(_spec(name, _entity("digits", "1", min_replicas=1, max_replicas=1)))
    client.wait_not_updating(name, timeout=180)
    stats = client.stats(name)
    replicas = stats["served_entities"]["digits-1"]["replicas"]
    if len(replicas) != 1 or not replicas[0].get("pid"):
        raise RuntimeError(f"expected exactly one replica, got {replicas}")
    replica_url, replica_pid = replicas[0]["url"], int(replicas[0]["pid"])
    platform.remember_children()
    body = json.dumps({"inputs": [_b64(DEMO / "images" / "digit_3.png")]}).encode()
    lua = write_json_lua(workdir, body)
    urls = {
        "gateway": f"{platform.url}/serving-endpoints/{name}/invocations",
        "direct": f"{replica_url}/invocations",
    }
    with httpx.Client(timeout=30.0, trust_env=False) as http:
        answer = _post_ok(http, urls["gateway"], body)
        label = answer.json()["predictions"][0]["classes"][0]["label"]
        served = answer.headers.get("served-model-name")
        _post_ok(http, urls["direct"], body)
    log(f"[gateway] replica {replica_url} (pid {replica_pid}); answer '{label}' from {served}")
    pids = [platform.pid, replica_pid]
    for url in urls.values():  # warm both paths: connection pools, lazy imports, ORT arenas
        serving.run_wrk(url, lua, GATEWAY_CONCURRENCY, args.warmup, latency=False)

    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = ["gateway", "direct"] if r % 2 == 0 else ["direct", "gateway"]
        this: dict[str, Any] = {"order": order}
        for concurrency, seconds in ((1, args.latency_seconds), (8, args.throughput_seconds)):
            for path in order:
                point = _wrk_point(urls[path], lua, concurrency, seconds, pids)
                this[f"{path}_c{concurrency}"] = point
                log(
                    f"[gateway] round {r + 1}/{args.rounds} {path:<7} c={concurrency}: "
                    f"{point['requests_per_s']:7.1f} req/s  p50 {point['p50_ms']:6.2f} ms  "
                    f"p99 {point['p99_ms']:6.2f} ms  errors {point['errors']}  platform CPU "
                    f"{point['platform_cpu_ms_per_req']:.2f} ms/req  replica CPU "
                    f"{point['replica_cpu_ms_per_req']:.2f} ms/req  "
                    f"foreign {point['foreign_cores']:.2f}"
                )
        g1, d1 = this["gateway_c1"], this["direct_c1"]
        g8, d8 = this["gateway_c8"], this["direct_c8"]
        this["added_p50_ms"] = g1["p50_ms"] - d1["p50_ms"]
        this["throughput_ratio"] = g8["requests_per_s"] / d8["requests_per_s"]
        rounds.append(this)
    client.delete_endpoint(name)

    def med(key: str, field: str) -> float:
        return float(statistics.median(r[key][field] for r in rounds))

    added = [r["added_p50_ms"] for r in rounds]
    ratios = [r["throughput_ratio"] for r in rounds]
    summary = {
        "direct_p50_ms": med("direct_c1", "p50_ms"),
        "gateway_p50_ms": med("gateway_c1", "p50_ms"),
        "direct_rps_c8": med("direct_c8", "requests_per_s"),
        "gateway_rps_c8": med("gateway_c8", "requests_per_s"),
        "gateway_platform_cpu_ms_per_req_c8": med("gateway_c8", "platform_cpu_ms_per_req"),
        "gateway_replica_cpu_ms_per_req_c8": med("gateway_c8", "replica_cpu_ms_per_req"),
        "direct_replica_cpu_ms_per_req_c8": med("direct_c8", "replica_cpu_ms_per_req"),
        "added_p50_ms": float(statistics.median(added)),
        "added_p50_ms_range": [min(added), max(added)],
        "throughput_ratio": float(statistics.median(ratios)),
        "throughput_ratio_range": [min(ratios), max(ratios)],
        "errors": sum(r[k]["errors"] for r in rounds for k in r if isinstance(r[k], dict)),
    }
    summary["added_p50_ok"] = summary["added_p50_ms"] <= ADDED_P50_TARGET_MS
    summary["throughput_ok"] = summary["throughput_ratio"] >= THROUGHPUT_TARGET
    return {
        "endpoint": {
            "name": name,
            "model": "digits v1 (demo digits_classifier.onnx)",
            "replicas": 1,
            "replica_url": replica_url,
        },
        "body_bytes": len(body),
        "urls": urls,
        "latency_seconds": args.latency_seconds,
        "throughput_seconds": args.throughput_seconds,
        "rounds": rounds,
        "summary": summary,
    }


# ------------------------------------------------------------------------------ 2. cold start


def _wait_for_zero(client: Any, name: str, entity: str, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        stats = client.stats(name)["served_entities"].get(entity)
        if stats is not None and stats["ready_replicas"] == 0 and not stats["replicas"]:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{name}/{entity} still has replicas after {timeout:g} s")


def bench_cold_start(
    platform: PlatformProcess, client: Any, args: argparse.Namespace, log: Log
) -> dict[str, Any]:
    name, entity = "shapes-cold", "shapes-1"
    spec = _entity("shapes", "1", min_replicas=0, max_replicas=1, scale_to_zero_enabled=True)
    client.create_endpoint(_spec(name, spec))
    client.wait_not_updating(name, timeout=180)
    images = sorted((DEMO / "images").glob("shapes_*.jpg"))
    url = f"{platform.url}/serving-endpoints/{name}/invocations"
    runs: list[dict[str, Any]] = []
    for i in range(args.cold_repeats):
        image = images[i % len(images)]
        body = json.dumps({"inputs": [_b64(image)]}).encode()
        waited = _wait_for_zero(client, name, entity)
        time.sleep(0.5)  # let the drained replica's exit settle before timing
        with httpx.Client(timeout=90.0, trust_env=False) as http:
            started = time.perf_counter()
            answer = _post_ok(http, url, body)
            cold = time.perf_counter() - started
            started = time.perf_counter()
            _post_ok(http, url, body)
            warm = time.perf_counter() - started
        platform.remember_children()
        detections = len(answer.json()["predictions"][0].get("detections", []))
        run = {
            "image": image.name,
            "waited_for_zero_s": round(waited, 2),
            "cold_s": cold,
            "warm_next_ms": warm * 1e3,
            "detections": detections,
        }
        runs.append(run)
        log(
            f"[cold start] {i + 1}/{args.cold_repeats}: {cold:.3f} s from zero replicas "
            f"(next request {warm * 1e3:.1f} ms; {detections} detections in {image.name}; "
            f"waited {waited:.1f} s for zero)"
        )
    client.delete_endpoint(name)
    colds = [r["cold_s"] for r in runs]
    median = float(statistics.median(colds))
    return {
        "endpoint": {
            "name": name,
            "model": "shapes v1 (demo shapes_detector.onnx)",
            "scale_to_zero_enabled": True,
            "min_replicas": 0,
            "max_replicas": 1,
            "idle_timeout_s": IDLE_TIMEOUT_S,
        },
        "runs": runs,
        "summary": {
            "median_s": median,
            "min_s": min(colds),
            "max_s": max(colds),
            "ok": median <= COLD_START_TARGET_S,
        },
    }


# ----------------------------------------------------------------------- 3. version switch


class ClosedLoop:
    """``concurrency`` threads, each POSTing ``body`` to ``url`` back to back on a keep-alive
    connection, recording (time, status or exception, served-model-name, latency)."""

    def __init__(self, url: str, body: bytes, concurrency: int) -> None:
        self.url = url
        self.body = body
        self.stop_event = threading.Event()
        self.records: list[tuple[float, str, str | None, float]] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=60.0, trust_env=False) as http:
            while not self.stop_event.is_set():
                started = time.perf_counter()
                try:
                    response = http.post(self.url, content=self.body, headers=headers)
                    outcome: str = str(response.status_code)
                    served = response.headers.get("served-model-name")
                except httpx.HTTPError as exc:
                    outcome, served = type(exc).__name__, None
                record = (started, outcome, served, time.perf_counter() - started)
                with self._lock:
                    self.records.append(record)

    def __enter__(self) -> ClosedLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(90)


def bench_switch(
    platform: PlatformProcess, client: Any, args: argparse.Namespace, log: Log
) -> dict[str, Any]:
    name = "digits-switch"
    v1 = _entity("digits", "1", min_replicas=1, max_replicas=1)
    v2 = _entity("digits", "2", min_replicas=1, max_replicas=1)
    client.create_endpoint(_spec(name, v1))
    client.wait_not_updating(name, timeout=180)
    platform.remember_children()
    body = json.dumps({"inputs": [_b64(DEMO / "images" / "digit_7.png")]}).encode()
    url = f"{platform.url}/serving-endpoints/{name}/invocations"
    with httpx.Client(timeout=30.0, trust_env=False) as http:
        _post_ok(http, url, body)
    with ClosedLoop(url, body, SWITCH_CONCURRENCY) as load:
        t0 = time.perf_counter()
        time.sleep(args.switch_before_s)
        t_put = time.perf_counter()
        client.update_config(name, _spec(name, v2)["config"])
        platform.remember_children()
        client.wait_not_updating(name, timeout=180)
        t_done = time.perf_counter()
        time.sleep(args.switch_after_s)
    t_end = time.perf_counter()
    records = sorted(load.records)
    client.delete_endpoint(name)

    outcomes = Counter(outcome for _, outcome, _, _ in records)
    served = Counter(s or "(none)" for _, outcome, s, _ in records if outcome == "200")
    failures = sum(n for outcome, n in outcomes.items() if outcome != "200")
    v1_after = sum(1 for t, o, s, _ in records if o == "200" and s == "digits-1" and t > t_done)
    v2_first = next((t for t, o, s, _ in records if o == "200" and s == "digits-2"), None)
    v1_last = max((t for t, o, s, _ in records if o == "200" and s == "digits-1"), default=None)
    during = [lat * 1e3 for t, _, _, lat in records if t_put <= t <= t_done]
    steady = [lat * 1e3 for t, _, _, lat in records if t < t_put]
    result: dict[str, Any] = {
        "endpoint": {"name": name, "from": "digits-1", "to": "digits-2", "replicas": 1},
        "concurrency": SWITCH_CONCURRENCY,
        "timeline_s": {
            "put": t_put - t0,
            "not_updating": t_done - t0,
            "end": t_end - t0,
            "first_v2_answer_sent_at": None if v2_first is None else v2_first - t0,
            "last_v1_answer_sent_at": None if v1_last is None else v1_last - t0,
        },
        "update_took_s": t_done - t_put,
        "requests": len(records),
        "outcomes": dict(outcomes),
        "served_by": dict(served),
        "failures": failures,
        "v1_answers_sent_after_not_updating": v1_after,
        "latency_ms": {
            "steady_p50": _pct(steady, 50),
            "steady_max": max(steady, default=float("nan")),
            "during_update_p50": _pct(during, 50),
            "during_update_p99": _pct(during, 99),
            "during_update_max": max(during, default=float("nan")),
        },
        "ok": failures == 0 and len(records) > 0,
    }
    log(
        f"[switch] {len(records)} requests, {failures} failed, served by {dict(served)}; "
        f"update took {t_done - t_put:.1f} s; latency during the update p50 "
        f"{result['latency_ms']['during_update_p50']:.1f} ms, max "
        f"{result['latency_ms']['during_update_max']:.1f} ms"
    )
    return result


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ----------------------------------------------------------------------------------- output


def report(printer: serving.Printer, results: dict[str, Any]) -> None:
    f = serving._f
    gw = results.get("gateway")
    if gw:
        rows = []
        for i, r in enumerate(gw["rounds"]):
            rows.append(
                [
                    str(i + 1),
                    f(r["direct_c1"]["p50_ms"]),
                    f(r["gateway_c1"]["p50_ms"]),
                    f"{r['added_p50_ms']:+.2f}",
                    f"{r['direct_c8']['requests_per_s']:.0f}",
                    f"{r['gateway_c8']['requests_per_s']:.0f}",
                    f"{r['throughput_ratio']:.2f}",
                    f(r["gateway_c8"]["platform_cpu_ms_per_req"]),
                    f(r["gateway_c8"]["replica_cpu_ms_per_req"]),
                    f(r["direct_c8"]["replica_cpu_ms_per_req"]),
                    f"{max(r[k]['foreign_cores'] for k in r if isinstance(r[k], dict)):.2f}",
                ]
            )
        printer.table(
            "Gateway overhead - digits classifier, one replica, wrk POSTing the same JSON body "
            f"({gw['body_bytes']} B); {gw['latency_seconds']:g} s at c=1 and "
            f"{gw['throughput_seconds']:g} s at c=8 per point, gateway/direct order alternating; "
            "CPU columns at c=8",
            [
                "round",
                "direct p50 ms",
                "gateway p50 ms",
                "added ms",
                "direct req/s c=8",
                "gateway req/s c=8",
                "ratio",
                "gateway CPU ms/req",
                "replica CPU ms/req via gateway",
                "replica CPU ms/req direct",
                "max foreign cores",
            ],
            rows,
        )
    cold = results.get("cold_start")
    if cold:
        printer.table(
            f"Cold start - shapes detector from zero replicas (idle timeout {IDLE_TIMEOUT_S} s)",
            ["run", "image", "cold s", "next request ms", "detections"],
            [
                [
                    str(i + 1),
                    r["image"],
                    f"{r['cold_s']:.3f}",
                    f(r["warm_next_ms"], 1),
                    str(r["detections"]),
                ]
                for i, r in enumerate(cold["runs"])
            ],
        )
    rows = []
    if gw:
        s = gw["summary"]
        lo, hi = s["throughput_ratio_range"]
        rows.append(
            [
                "gateway throughput / direct (c=8)",
                f"{s['throughput_ratio']:.2f} (rounds {lo:.2f}-{hi:.2f}; "
                f"{s['gateway_rps_c8']:.0f} vs {s['direct_rps_c8']:.0f} req/s)",
                f">= {THROUGHPUT_TARGET:g}",
                serving._ok(s["throughput_ok"]),
            ]
        )
        lo, hi = s["added_p50_ms_range"]
        rows.append(
            [
                "gateway added p50 (c=1)",
                f"{s['added_p50_ms']:+.2f} ms (rounds {lo:+.2f} to {hi:+.2f}; "
                f"{s['gateway_p50_ms']:.2f} vs {s['direct_p50_ms']:.2f} ms)",
                f"<= {ADDED_P50_TARGET_MS:g} ms",
                serving._ok(s["added_p50_ok"]),
            ]
        )
    if cold:
        s = cold["summary"]
        each = ", ".join(f"{r['cold_s']:.2f}" for r in cold["runs"])
        rows.append(
            [
                "cold start from zero (median)",
                f"{s['median_s']:.2f} s ({each})",
                f"<= {COLD_START_TARGET_S:g} s",
                serving._ok(s["ok"]),
            ]
        )
    sw = results.get("switch")
    if sw:
        served = ", ".join(f"{k} {v}" for k, v in sorted(sw["served_by"].items()))
        rows.append(
            [
                "version switch under load (c=4)",
                f"{sw['failures']} failed of {sw['requests']} ({served}; update "
                f"{sw['update_took_s']:.1f} s)",
                "0 failed",
                serving._ok(sw["ok"]),
            ]
        )
    meta = results["meta"]
    printer.table(
        f"Platform vs targets - machine {meta['machine']['summary']}; "
        f"run took {meta['elapsed_s']:.0f} s",
        ["figure", "measured", "target", ""],
        rows,
    )


# ------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke test (~1 min)")
    parser.add_argument(
        "--json", "--out", dest="out", type=Path, default=DEFAULT_OUT, help="JSON output path"
    )
    parser.add_argument("--rounds", type=int, help="gateway/direct rounds (3; quick 2)")
    parser.add_argument("--latency-seconds", type=float, help="wrk seconds per c=1 point (5)")
    parser.add_argument("--throughput-seconds", type=float, help="wrk seconds per c=8 point (5)")
    parser.add_argument("--warmup", type=float, help="wrk warm-up seconds per path (2)")
    parser.add_argument("--cold-repeats", type=int, help="cold starts to time (3; quick 2)")
    parser.add_argument(
        "--only", default="gateway,cold,switch", help="comma list: gateway,cold,switch"
    )
    parser.add_argument(
        "--log-level", default="warning", help="the platform's log level (`cvdeploy up`)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 3)
    args.latency_seconds = args.latency_seconds or (2.0 if quick else 5.0)
    args.throughput_seconds = args.throughput_seconds or (2.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.cold_repeats = args.cold_repeats or (2 if quick else 3)
    args.switch_before_s = 1.0 if quick else 2.0
    args.switch_after_s = 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    printer = serving.Printer()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = wanted - {"gateway", "cold", "switch"}
    if unknown:
        print(f"unknown --only part(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    from cvdeploy.platforms.client import PlatformClient
    from cvdeploy.registry import Registry

    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "benchmark": "benchmarks/platform.py",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_generator": f"{serving.wrk_version()} (gateway); Python threads with httpx "
            "(cold start, switch)",
            "machine": serving.machine_info(),
            "versions": serving.versions(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "platform_env": {"CVDEPLOY_DEPLOYMENT__SCALING__IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)},
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="cvdeploy-platform-bench-"))
    platform: PlatformProcess | None = None
    try:
        home = tmp / "home"
        registry = Registry(home=home)
        registry.register(DIGITS, "digits")  # version 1
        registry.register(DIGITS, "digits")  # version 2, the same model
        registry.register(SHAPES, "shapes")
        platform = PlatformProcess(
            home,
            tmp,
            {"CVDEPLOY_DEPLOYMENT__SCALING__IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)},
            args.log_level,
        )
        ready_s = platform.start()
        results["meta"]["platform"] = {
            "command": " ".join(platform.command[1:]),
            "ready_s": round(ready_s, 2),
        }
        printer.log(f"platform up at {platform.url} (pid {platform.pid}) in {ready_s:.1f} s")
        with PlatformClient(platform.url, timeout=60.0) as client:
            if "gateway" in wanted:
                results["gateway"] = bench_gateway(platform, client, args, tmp, printer.log)
            if "cold" in wanted:
                results["cold_start"] = bench_cold_start(platform, client, args, printer.log)
            if "switch" in wanted:
                results["switch"] = bench_switch(platform, client, args, printer.log)
    except BaseException:
        if platform is not None:
            print(f"platform log tail:\n{platform.log_tail()}", file=sys.stderr)
        raise
    finally:
        if platform is not None:
            platform.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average_end"] = list(os.getloadavg())
    report(printer, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(serving._jsonable(results), indent=2) + "\n")
    printer.log(f"wrote {args.out} in {results['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
