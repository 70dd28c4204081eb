"""Monitoring overhead: serving throughput with drift sampling and payload logging on vs off.

Issue 5, point 9. For each demo model (the digits classifier, an overhead-bound ~0.1 ms model
where per-request costs show most, and the shapes detector) two ``cvdeploy serve`` subprocesses
run side by side (one worker process each: ``--workers 1``, since a config file that does not
name ``workers`` gets the seed's 4) from config files in a temporary folder:

* **off**: ``deployment.monitoring.drift.enabled: false`` and
  ``deployment.monitoring.payload_log.enabled: false``;
* **on**: drift sampling at its default ``sample_rate`` 0.1 and payload logging enabled at
  ``sample_rate`` 0.05 (to a SQLite file in the temporary folder).

What cannot be switched off (the Prometheus series, the ``/monitoring`` recorder) runs on both.
``wrk`` loads them at a fixed concurrency with the sample image, alternately (off, on, on,
off, off, on, ...: each pair swaps which goes first, so drift in the machine's load hits both
alike), ``--duration`` seconds a run. The figures are the median req/s of each side over the
repeats and the on/off ratio of each adjacent pair: its median is the verdict (target: at
least 0.97, i.e. at most 3% lower) and its min-max the spread. Every run records the
"foreign cores" busy with other people's work (see benchmarks/serving.py).

**Drift detection delay** reuses benchmarks/drift.py: a darkened, blurred or enlarged stream
fed into a ``DriftDetector`` (cold: a fresh window; warm: a full in-distribution window first)
until the verdict is "drift", over seeded runs; shown as samples and as served requests at the
"on" side's sample rate (samples / 0.1).

    python benchmarks/monitoring.py              # 7 x on/off, 8 s each, 10 drift seeds (~6 min)
    python benchmarks/monitoring.py --quick      # 3 x on/off, 4 s each, 3 drift seeds (~2 min)
    python benchmarks/monitoring.py --models classifier --repeats 9 --concurrency 16
    python benchmarks/monitoring.py --on drift             # what drift sampling alone costs
    python benchmarks/monitoring.py --on none              # A/A: two identical servers

Needs ``wrk`` on PATH. Prints tables and writes ``benchmarks/results/monitoring.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
DEFAULT_OUT = BENCH_DIR / "results" / "monitoring.json"
DEMO = REPO / "cvdeploy" / "demo"
CVDEPLOY = Path(sys.executable).with_name("cvdeploy")
TARGET_RATIO = 0.97
DRIFT_SAMPLE_RATE = 0.1
PAYLOAD_SAMPLE_RATE = 0.05


def _sibling(name: str) -> ModuleType:
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


serving_bench = _sibling("serving")  # wrk driver, CPU meter, machine info, printer
drift_bench = _sibling("drift")  # detection delay over seeded shifted streams


@dataclass(frozen=True)
class Case:
    key: str
    model: Path
    task: str
    image: Path
    content_type: str


CASES = {
    "classifier": Case(
        "classifier", DEMO / "digits_classifier.onnx", "classification",
        DEMO / "images" / "digit_3.png", "image/png",
    ),
    "detector": Case(
        "detector", DEMO / "shapes_detector.onnx", "detection",
        DEMO / "images" / "shapes_1.jpg", "image/jpeg",
    ),
}  # fmt: skip


def payload_log_supported() -> bool:
    from cvdeploy.config import MonitoringConfig

    return "payload_log" in MonitoringConfig.model_fields


def config_yaml(features: set[str], workdir: Path, payload_log: bool) -> str:
    """The config of one side: ``features`` (of drift, payload_log) on, the rest off."""
    drift = (
        f"{{enabled: true, sample_rate: {DRIFT_SAMPLE_RATE}}}"
        if "drift" in features
        else "{enabled: false}"
    )
    # Start-up batch-size tuning times the model on a noisy machine and can cap two identical
    # servers differently (a 10-20% gap in either direction): both sides use max batch 8.
    text = "deployment:\n  batching: {tune_batch_size: false}\n"
    text += f"  monitoring:\n    drift: {drift}\n"
    if payload_log:
        payloads = (
            f"{{enabled: true, sample_rate: {PAYLOAD_SAMPLE_RATE}, "
            f"path: '{workdir / 'payloads.db'}'}}"
            if "payload_log" in features
            else "{enabled: false}"
        )
        text += f"    payload_log: {payloads}\n"
    return text


class Server:
    """``cvdeploy serve`` with a config file, in its own folder, without CVDEPLOY_* variables."""

    def __init__(self, case: Case, side: str, config: str, workdir: Path) -> None:
        self.case, self.side = case, side
        self.dir = workdir / f"{case.key}-{side}"
        self.dir.mkdir(parents=True)
        (self.dir / "config.yaml").write_text(config)
        self.port = serving_bench.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.predict_url = f"{self.url}/v1/models/{case.model.stem}/predict"
        self.log_path = self.dir / "server.log"
        self.command = [
            str(CVDEPLOY), "serve", str(case.model), "--task", case.task,
            "--port", str(self.port), "--workers", "1", "--config", str(self.dir / "config.yaml"),
            "--log-level", "warning", "--cache-size", "0",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CVDEPLOY_")}
        env["CVDEPLOY_HOME"] = str(self.dir / "home")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.side} server exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return self
                time.sleep(0.1)
        raise RuntimeError(f"{self.side} server not ready:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def monitoring(self) -> dict[str, Any]:
        """What the server says it sampled: drift status and sample counts."""
        figures = httpx.get(f"{self.url}/monitoring", params={"window_s": 300}, timeout=30).json()
        drift = figures.get("drift") or {}
        keep = ("status", "sample_rate", "sampled", "dropped", "observed", "failed", "drifted")
        return {"requests": figures.get("requests"), "drift": {k: drift[k] for k in keep
                                                               if k in drift}}  # fmt: skip


def write_lua(path: Path, case: Case) -> Path:
    path.write_text(
        f'local f = assert(io.open([==[{case.image}]==], "rb"))\n'
        'wrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
        f'wrk.headers["Content-Type"] = "{case.content_type}"\n'
        + serving_bench._LUA.format(body="").split("\n\n", 1)[1]  # serving.py's JSON summary
    )
    return path


def measure(server: Server, lua: Path, connections: int, seconds: float) -> dict[str, Any]:
    # The server's own process and its helpers (decode workers) all count as the server.
    pids = [server.pid, *(c.pid for c in psutil.Process(server.pid).children(recursive=True))]
    with serving_bench.CpuMeter(pids) as meter:
        run = serving_bench.run_wrk(server.predict_url, lua, connections, seconds, latency=True)
    errors = int(run.get("non_2xx", 0) + run.get("socket_errors", 0))
    requests = max(1, int(run.get("requests", 0)))
    return {
        "side": server.side,
        "req_per_s": run["requests_per_s"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "errors": errors,
        "server_cpu_ms_per_req": 1e3 * sum(meter.procs_cpu) / requests,
        "foreign_cores": round(meter.foreign_cores, 2),
    }


def overhead(
    case: Case, args: argparse.Namespace, workdir: Path, log: Any, payload_log: bool
) -> dict[str, Any]:
    lua = write_lua(workdir / f"{case.key}.lua", case)
    configs = {
        "off": config_yaml(set(), workdir / case.key, payload_log),
        "on": config_yaml(args.on, workdir / case.key, payload_log),
    }
    (workdir / case.key).mkdir(exist_ok=True)
    with (
        Server(case, "off", configs["off"], workdir) as off,
        Server(case, "on", configs["on"], workdir) as on,
    ):
        servers = {"off": off, "on": on}
        for server in servers.values():  # warm-up: ORT arenas, the drift reference starts filling
            serving_bench.run_wrk(server.predict_url, lua, args.concurrency, args.warmup, False)
        runs: list[dict[str, Any]] = []
        pairs: list[float] = []
        for repeat in range(args.repeats):
            order = ("off", "on") if repeat % 2 == 0 else ("on", "off")
            pair = {}
            for side in order:
                pair[side] = measure(servers[side], lua, args.concurrency, args.duration)
                pair[side]["repeat"] = repeat
                runs.append(pair[side])
            ratio = pair["on"]["req_per_s"] / pair["off"]["req_per_s"]
            pairs.append(ratio)
            log(
                f"{case.key} #{repeat + 1}: off {pair['off']['req_per_s']:.0f} req/s, "
                f"on {pair['on']['req_per_s']:.0f} req/s, on/off {ratio:.3f} "
                f"(foreign cores {pair['off']['foreign_cores']:.2f} / "
                f"{pair['on']['foreign_cores']:.2f})"
            )
        sampled = on.monitoring()
        payload_rows = None
        if payload_log and "payload_log" in args.on:
            with contextlib.suppress(Exception):
                from cvdeploy.monitoring.payloads import PayloadStore

                payload_rows = PayloadStore(workdir / case.key / "payloads.db").count()
    sides = {}
    for side in ("off", "on"):
        mine = [r for r in runs if r["side"] == side]
        sides[side] = {
            "req_per_s_median": statistics.median(r["req_per_s"] for r in mine),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in mine),
            "server_cpu_ms_per_req_median": statistics.median(
                r["server_cpu_ms_per_req"] for r in mine
            ),
            "errors": sum(r["errors"] for r in mine),
        }
    ratio = statistics.median(pairs)
    return {
        "model": case.model.name,
        "image": case.image.name,
        "configs": configs,
        "sides": sides,
        "pair_ratios": pairs,
        "ratio_median": ratio,
        "ratio_min": min(pairs),
        "ratio_max": max(pairs),
        "ratio_of_medians": sides["on"]["req_per_s_median"] / sides["off"]["req_per_s_median"],
        "passes": ratio >= TARGET_RATIO,
        "on_side_sampled": sampled,
        "payload_rows": payload_rows,
        "runs": runs,
    }


def detection_delay(seeds: int) -> dict[str, Any]:
    """benchmarks/drift.py's delay, per shift, cold and warm, in samples and served requests."""
    from cvdeploy.monitoring.drift import ReferenceProfile

    rows = drift_bench.stream(0)
    reference = ReferenceProfile.from_rows([next(rows) for _ in range(drift_bench.REFERENCE)])
    out: dict[str, Any] = {
        "window": drift_bench.WINDOW,
        "reference": drift_bench.REFERENCE,
        "seeds": seeds,
        "sample_rate": DRIFT_SAMPLE_RATE,
        "shifts": {},
    }
    for name, shift in drift_bench.SHIFTS.items():
        for mode in ("cold", "warm"):
            outcomes = [
                drift_bench.delay(reference, seed, shift, mode == "warm", 3 * drift_bench.WINDOW)
                for seed in range(seeds)
            ]
            figures = drift_bench.summary([count for count, _ in outcomes])
            for key in ("median", "max"):
                value = figures[key]
                figures[f"{key}_requests"] = (
                    None if value is None else round(value / DRIFT_SAMPLE_RATE)
                )
            out["shifts"].setdefault(name, {})[mode] = figures
    return out


def report(printer: Any, results: dict[str, Any]) -> None:
    f = serving_bench._f
    rows = []
    for key, r in results["overhead"].items():
        off, on = r["sides"]["off"], r["sides"]["on"]
        rows.append([
            key, f(off["req_per_s_median"], 0), f(on["req_per_s_median"], 0),
            f(r["ratio_median"], 3), f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
            f(off["p50_ms_median"]), f(on["p50_ms_median"]),
            f(off["server_cpu_ms_per_req_median"], 3), f(on["server_cpu_ms_per_req_median"], 3),
            str(off["errors"] + on["errors"]),
            f"{serving_bench._ok(r['passes'])} (>= {TARGET_RATIO})",
        ])  # fmt: skip
    meta = results["meta"]
    printer.table(
        f"Throughput, monitoring off vs on ({meta['repeats']} interleaved pairs x "
        f"{meta['duration_s']:g} s at {meta['concurrency']} connections; on = {meta['on']})",
        ["model", "off req/s", "on req/s", "on/off", "spread", "off p50", "on p50",
         "off cpu ms/req", "on cpu ms/req", "errors", "target"],
        rows,
    )  # fmt: skip
    delay = results["detection_delay"]
    rows = [
        [name, mode, str(fig["median"]), str(fig["max"]), str(fig["missed"]),
         str(fig["median_requests"]), str(fig["max_requests"])]
        for name, modes in delay["shifts"].items()
        for mode, fig in modes.items()
    ]  # fmt: skip
    printer.table(
        f"Drift detection delay ({delay['seeds']} seeds, window {delay['window']}; requests = "
        f"samples / sample_rate {delay['sample_rate']:g})",
        ["shift", "mode", "median samples", "max samples", "missed", "median requests",
         "max requests"],
        rows,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 pairs of 4 s, 3 drift seeds")
    parser.add_argument("--models", default="classifier,detector", help="classifier,detector")
    parser.add_argument("--repeats", type=int, help="on/off pairs [7; quick 3]")
    parser.add_argument("--duration", type=float, help="seconds per run [8; quick 4]")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per server [2]")
    parser.add_argument("--concurrency", type=int, default=8, help="wrk connections [8]")
    parser.add_argument("--drift-seeds", type=int, help="seeded runs per shift [10; quick 3]")
    parser.add_argument(
        "--on",
        default="drift,payload_log",
        help="what the on side enables: drift, payload_log, both, or none for an A/A check "
        "of the two servers [drift,payload_log]",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.duration = args.duration or (4.0 if args.quick else 8.0)
    args.drift_seeds = args.drift_seeds or (3 if args.quick else 10)
    args.on = {f.strip() for f in args.on.split(",") if f.strip()} - {"none"}
    if args.on - {"drift", "payload_log"}:
        parser.error("--on takes drift, payload_log, both (comma-separated) or none")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    printer = serving_bench.Printer()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := set(wanted) - set(CASES):
        print(f"unknown model(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    payload_log = payload_log_supported()
    if not payload_log:
        printer.log("this cvdeploy has no monitoring.payload_log: measuring drift sampling only")
        args.on.discard("payload_log")
    described = {
        "drift": f"drift sample_rate {DRIFT_SAMPLE_RATE:g}",
        "payload_log": f"payload_log sample_rate {PAYLOAD_SAMPLE_RATE:g}",
    }
    on = " + ".join(described[f] for f in sorted(args.on)) or "nothing (A/A check)"
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "benchmark": "benchmarks/monitoring.py",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": serving_bench.machine_info(),
            "versions": serving_bench.versions(),
            "load_generator": f"{serving_bench.wrk_version()} (closed loop)",
            "args": {k: str(sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
            "repeats": args.repeats,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "on": on,
            "payload_log": payload_log,
            "target_ratio": TARGET_RATIO,
        },
        "overhead": {},
    }
    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-monitoring-") as tmp:
        for key in wanted:
            results["overhead"][key] = overhead(
                CASES[key], args, Path(tmp), printer.log, payload_log
            )
    printer.log("drift detection delay ...")
    results["detection_delay"] = detection_delay(args.drift_seeds)
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average_end"] = list(os.getloadavg())
    report(printer, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(serving_bench._jsonable(results), indent=2) + "\n")
    printer.log(f"wrote {args.out} in {results['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
