"""Serving benchmark: cvdeploy's HTTP server against its own raw in-process pipeline.

For each model (a compute-bound YOLOv8n at 640 and an overhead-bound ~1 ms MobileNet-style
classifier at 224) this measures, in one run and interleaved so that the noise of a shared
machine hits both sides alike:

* the raw pipeline, in this process, with cvdeploy's runtime (``decode_image`` ->
  ``Model.preprocess`` -> ``np.stack`` -> ``Model.infer`` -> ``Model.postprocess``, ONNX Runtime
  with 2 intra-op threads): per-image latency at batch 1 and images/s at batch 1, 2, 4 and 8;
* ``cvdeploy serve`` in a subprocess, loaded by ``wrk`` POSTing the raw JPEG to
  ``/v1/models/{name}/predict`` at several connection counts, with dynamic batching on (the
  default, max batch 8) and off (``--no-batching``);

then prints the ratios that matter (server img/s / raw best, server p50 at concurrency 1 minus
raw p50) next to their targets and writes everything to ``benchmarks/results/serving.json``.

    python benchmarks/serving.py                 # the full run (~5-6 minutes on 2 cores)
    python benchmarks/serving.py --quick         # smoke test (~1.5 minutes)
    python benchmarks/serving.py --models classifier --duration 10

Needs ``wrk`` on PATH (``apt-get install wrk``). See benchmarks/README.md for how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
DEFAULT_OUT = BENCH_DIR / "results" / "serving.json"
IMAGES_DIR = REPO / "cvdeploy" / "demo" / "images"
YOLO_MODEL = BENCH_DIR / "models" / "yolov8n_640.onnx"
CVDEPLOY = Path(sys.executable).with_name("cvdeploy")

INTRA_OP_THREADS = 2
BATCH_SIZES = (1, 2, 4, 8)
CONCURRENCIES = (1, 4, 16, 64)
SERVER_MAX_BATCH = 8
WRK_TIMEOUT_S = 60  # a YOLO request at 64 connections waits ~3 s; never let wrk time it out


# ------------------------------------------------------------------------------------ models


@dataclass
class Case:
    """One model to benchmark, with the targets its ratios are judged against."""

    key: str
    title: str
    task: str
    jpeg: bytes
    image_desc: str
    duration: float
    raw_seconds: float
    #: server img/s / raw best must reach this ...
    ratio_target: float
    #: ... at every concurrency >= this one (None: at the best concurrency).
    ratio_min_concurrency: int | None
    #: server p50 at concurrency 1 minus raw p50 at batch 1, in ms, must stay under this.
    p50_delta_target_ms: float
    #: seconds per slice of the concurrency-1 latency duel
    duel_seconds: float = 1.0
    model_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def _cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def make_jpeg(source: Path, width: int, height: int, quality: int = 90) -> bytes:
    """``source`` resized to cover ``width`` x ``height``, centre-cropped, as JPEG bytes."""
    with Image.open(source) as image:
        cropped = _cover_crop(image, width, height)
    buffer = io.BytesIO()
    cropped.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def build_classifier(directory: Path, width: float, depth: float) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from mobilenet_onnx import build_mobilenet_classifier
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return build_mobilenet_classifier(directory / "mobilenet_224.onnx", width=width, depth=depth)


# ------------------------------------------------------------------------------- CPU noise


class CpuMeter:
    """CPU time of the whole machine, of this process and of named processes, over a span.

    ``foreign_cores`` is the average number of cores busy with anything else (other engineers'
    jobs): the noise figure printed next to each measurement.
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]

    def __enter__(self) -> CpuMeter:
        self._sys = psutil.cpu_times()
        self._self = time.process_time()
        self._children = _children_cpu()
        self._procs = [_proc_cpu(p) for p in self.procs]
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        after = psutil.cpu_times()
        self.machine = _busy(after) - _busy(self._sys)
        self.own = time.process_time() - self._self
        self.children = _children_cpu() - self._children
        self.procs_cpu = [
            _proc_cpu(p) - before for p, before in zip(self.procs, self._procs, strict=True)
        ]

    @property
    def known(self) -> float:
        return self.own + self.children + sum(self.procs_cpu)

    @property
    def foreign_cores(self) -> float:
        return max(0.0, self.machine - self.known) / max(self.wall, 1e-9)


def _busy(times: Any) -> float:
    idle = times.idle + getattr(times, "iowait", 0.0)
    return (
        float(sum(times)) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


# ------------------------------------------------------------------------------ raw pipeline


class RawPipeline:
    """cvdeploy's runtime driven in-process, single-threaded decode, as the server does it.

    Every raw call uses the spinning ONNX Runtime session (ORT's default, ``latency=True``):
    with nothing else running in the process, spinning is the raw pipeline at its best, for
    batches too, so the server is compared with the strictest baseline."""

    def __init__(self, case: Case) -> None:
        from cvdeploy.runtime import decode_image, load_model

        assert case.model_path is not None
        self.decode = decode_image
        self.model = load_model(case.model_path, case.task, intra_op_threads=INTRA_OP_THREADS)
        self.data = case.jpeg
        self.params = self.model.default_params
        self.latencies: list[float] = []
        self.stages: dict[str, list[float]] = {
            k: [] for k in ("decode", "preprocess", "infer", "postprocess", "to_dict")
        }
        self.rounds: list[dict[str, Any]] = []

    def run_batch(self, batch: int) -> list[Any]:
        model, decode, data = self.model, self.decode, self.data
        prepared = [model.preprocess(decode(data)) for _ in range(batch)]
        outputs = model.infer(np.stack([p.tensor for p in prepared]), latency=True)
        return [model.postprocess(outputs, i, p.meta, self.params) for i, p in enumerate(prepared)]

    def run_one_timed(self) -> None:
        """Batch 1 with each stage timed (a few perf_counter calls, well under 1 us each)."""
        model = self.model
        t0 = time.perf_counter()
        image = self.decode(self.data)
        t1 = time.perf_counter()
        prepared = model.preprocess(image)
        t2 = time.perf_counter()
        outputs = model.infer(np.stack([prepared.tensor]), latency=True)
        t3 = time.perf_counter()
        result = model.postprocess(outputs, 0, prepared.meta, self.params)
        t4 = time.perf_counter()
        result.to_dict()  # not part of the raw figure; the server pays it when it renders JSON
        t5 = time.perf_counter()
        self.latencies.append(t4 - t0)
        for name, (a, b) in zip(
            self.stages, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True
        ):
            self.stages[name].append(b - a)

    def latency_slice(self, seconds: float) -> float:
        """Batch-1 p50 in ms over about ``seconds`` (at least 5 images); kept out of the
        pooled figures so the rounds alone decide the raw table."""
        samples: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(samples) < 5:
            t0 = time.perf_counter()
            self.run_batch(1)
            samples.append(time.perf_counter() - t0)
        return float(np.median(samples) * 1e3)

    def warmup(self) -> None:
        for batch in BATCH_SIZES:
            for _ in range(2):
                self.run_batch(batch)

    def measure_round(self, seconds: float) -> dict[str, Any]:
        """Images/s at each batch size, ``seconds`` each, batch sizes in turn."""
        out: dict[str, Any] = {"img_per_s": {}, "cpu_ms_per_img": {}, "foreign_cores": {}}
        for batch in BATCH_SIZES:
            images = 0
            with CpuMeter() as meter:
                start = time.perf_counter()
                iterations = 0
                while True:
                    if batch == 1:
                        self.run_one_timed()
                    else:
                        self.run_batch(batch)
                    images += batch
                    iterations += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= seconds and iterations >= 3:
                        break
            out["img_per_s"][batch] = images / elapsed
            out["cpu_ms_per_img"][batch] = 1e3 * meter.own / images  # ORT threads included
            out["foreign_cores"][batch] = round(meter.foreign_cores, 2)
        self.rounds.append(out)
        return out

    def summary(self) -> dict[str, Any]:
        per_batch = {
            b: statistics.median(r["img_per_s"][b] for r in self.rounds) for b in BATCH_SIZES
        }
        cpu = {
            b: statistics.median(r["cpu_ms_per_img"][b] for r in self.rounds) for b in BATCH_SIZES
        }
        best_batch = max(per_batch, key=lambda b: per_batch[b])
        lat = np.array(self.latencies) * 1e3
        return {
            "p50_ms_batch1": float(np.percentile(lat, 50)),
            "p99_ms_batch1": float(np.percentile(lat, 99)),
            "samples_batch1": len(lat),
            "stages_ms_p50": {k: float(np.median(v) * 1e3) for k, v in self.stages.items() if v},
            "img_per_s": per_batch,
            "cpu_ms_per_img": cpu,
            "best_img_per_s": per_batch[best_batch],
            "best_batch": best_batch,
            "rounds": self.rounds,
            "intra_op_threads": INTRA_OP_THREADS,
        }


# ------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Extra `cvdeploy serve` arguments from --serve-args (set once, in parse_args).
SERVE_EXTRA: list[str] = []


class Server:
    """``cvdeploy serve`` in a subprocess, in an empty directory with no CVDEPLOY_* variables
    (so nobody's config file changes what is measured)."""

    def __init__(self, case: Case, batching: bool, workdir: Path) -> None:
        assert case.model_path is not None
        self.case = case
        self.batching = batching
        self.port = free_port()
        self.name = case.model_path.stem
        self.url = f"http://127.0.0.1:{self.port}"
        self.predict_url = f"{self.url}/v1/models/{self.name}/predict"
        mode = "batching" if batching else "nobatching"
        self.log_path = workdir / f"server-{case.key}-{mode}.log"
        self.workdir = workdir
        self.command = [
            str(CVDEPLOY),
            "serve",
            str(case.model_path),
            "--task",
            case.task,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--cache-size",
            "0",
        ]
        self.command += (
            ["--max-batch-size", str(SERVER_MAX_BATCH)] if batching else ["--no-batching"]
        )
        self.command += SERVE_EXTRA
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CVDEPLOY_")}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout: float = 180.0) -> float:
        assert self.process is not None
        started = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited during start-up:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return time.monotonic() - started
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:g} s:\n{self.log_tail()}")

    def verify(self) -> dict[str, Any]:
        """One real request: it must be a 200 with one prediction."""
        response = httpx.post(
            self.predict_url,
            content=self.case.jpeg,
            headers={"content-type": "image/jpeg"},
            timeout=60.0,
        )
        if response.status_code != 200:
            raise RuntimeError(f"verify: HTTP {response.status_code}: {response.text[:500]}")
        body = response.json()
        predictions = body.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != 1:
            raise RuntimeError(f"verify: unexpected body {str(body)[:500]}")
        first = predictions[0]
        summary: dict[str, Any] = {"status": 200, "task": first.get("task")}
        if "detections" in first:
            summary["detections"] = len(first["detections"])
        if "classes" in first:
            summary["top_class"] = first["classes"][0] if first["classes"] else None
        summary["response_bytes"] = len(response.content)
        return summary

    def metrics(self) -> dict[str, float]:
        """The batcher's Prometheus sums and counts, to get mean batch size and model time."""
        wanted = (
            "cvdeploy_batch_size_sum",
            "cvdeploy_batch_size_count",
            "cvdeploy_inference_time_seconds_sum",
            "cvdeploy_queue_time_seconds_sum",
            "cvdeploy_queue_time_seconds_count",
        )
        out = dict.fromkeys(wanted, 0.0)
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"{self.url}/metrics", timeout=10.0).text
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in out:
                    out[name] += float(line.rsplit(" ", 1)[1])
        return out

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.process = None


# --------------------------------------------------------------------------------------- wrk

_LUA = """\
local f = assert(io.open([==[{body}]==], "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "image/jpeg"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "mean_us": %.1f, "stdev_us": %.1f, '
    .. '"min_us": %.1f, "max_us": %.1f, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def write_lua(path: Path, body_path: Path) -> Path:
    path.write_text(_LUA.format(body=body_path))
    return path


def wrk_version() -> str:
    found = shutil.which("wrk")
    if found is None:
        return "missing"
    proc = subprocess.run([found, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk\s+(?:debian/)?(\d[\w.+-]*)", proc.stdout + proc.stderr)
    return f"wrk {match.group(1)}" if match else "wrk"


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The numbers of one wrk run: the Lua ``done`` JSON, checked against the text report."""
    result: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line[len("WRKJSON ") :])
            result.update(raw)
    text: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", output):
        text["requests_per_s"] = float(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", output, re.M):
            text[f"p{pct}_ms"] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    text["non_2xx"] = float(m.group(1)) if m else 0.0
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        text["socket_errors"] = float(sum(int(g) for g in m.groups()))
    result["text"] = text
    if "requests" in result and result.get("duration_us"):
        result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
        for pct in ("50", "90", "99"):  # wrk reports 0 when nothing completed
            value = result[f"p{pct}_us"] / 1e3
            result[f"p{pct}_ms"] = value if result["requests"] else float("nan")
        result["non_2xx"] = result["status"]
        result["socket_errors"] = (
            result["connect"] + result["read"] + result["write"] + result["timeout"]
        )
    else:  # no Lua summary: fall back to the text report
        result.update(text)
        result.setdefault("p90_ms", float("nan"))
    return result


def run_wrk(
    url: str, lua: Path, connections: int, seconds: float, latency: bool = True
) -> dict[str, Any]:
    threads = 2 if connections >= 64 else 1
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(lua),
    ]
    if latency:
        command.append("--latency")
    command.append(url)
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    parsed = parse_wrk(proc.stdout)
    parsed["threads"] = threads
    parsed["connections"] = connections
    return parsed


# ------------------------------------------------------------------------------------ driver


def chunks(items: Sequence[int], parts: int) -> list[list[int]]:
    """Split ``items`` into ``parts`` nearly equal runs (earlier runs get the extra)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def bench_case(
    case: Case,
    concurrencies: Sequence[int],
    modes: Sequence[bool],
    rounds: int,
    warmup: float,
    duel_cycles: int,
    workdir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Raw rounds interleaved with the wrk sweeps, then the paired concurrency-1 latency duel.

    With ``rounds`` raw rounds the concurrencies are split into ``rounds - 1`` groups, each run
    between two raw rounds (raw, c=1, c=4, raw, c=16, c=64, raw), and each server point is
    compared with the raw best of the two rounds around it as well as with the overall median.
    """
    started = time.perf_counter()
    body_path = workdir / f"{case.key}.jpg"
    body_path.write_bytes(case.jpeg)
    lua = write_lua(workdir / f"{case.key}.lua", body_path)

    log(f"[{case.key}] loading the raw pipeline ({case.model_path})")
    raw = RawPipeline(case)
    raw.warmup()

    servers = {batching: Server(case, batching, workdir) for batching in modes}
    server_info: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    duel: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.start()
        for batching, server in servers.items():
            ready_s = server.wait_ready()
            check = server.verify()
            server_info[_mode(batching)] = {
                "command": " ".join(server.command[1:]),
                "ready_s": round(ready_s, 2),
                "verify": check,
            }
            log(f"[{case.key}] server {_mode(batching)} ready in {ready_s:.1f} s: {check}")

        groups = chunks(list(concurrencies), max(1, rounds - 1))
        point = 0
        for r in range(rounds):
            result = raw.measure_round(case.raw_seconds)
            log(
                f"[{case.key}] raw round {r + 1}/{rounds}: "
                + ", ".join(f"b{b} {v:.1f}" for b, v in result["img_per_s"].items())
                + f" img/s (foreign load {max(result['foreign_cores'].values()):.2f} cores)"
            )
            for c in groups[r] if r < len(groups) else []:
                # alternate which mode goes first, so a drift in load favours neither
                order = list(modes) if point % 2 == 0 else list(modes)[::-1]
                point += 1
                for batching in order:
                    out = measure_point(servers[batching], lua, c, warmup, case.duration)
                    out["raw_rounds"] = [r, min(r + 1, rounds - 1)]
                    runs.append(out)
                    log(
                        f"[{case.key}] {_mode(batching):<11} c={c:<3} "
                        f"{out['requests_per_s']:7.1f} img/s  p50 {out['p50_ms']:8.2f} ms  "
                        f"p99 {out['p99_ms']:8.2f} ms  errors {_errors(out)}  "
                        f"batch {out['mean_batch']:.2f}  server CPU "
                        f"{out['server_cpu_ms_per_req']:.2f} ms/req  "
                        f"foreign {out['foreign_cores']:.2f}"
                    )

        # Paired latency at concurrency 1: short raw and server slices in turn, so each
        # server p50 has a raw p50 taken seconds apart under the same background load.
        for i in range(duel_cycles):
            cycle: dict[str, Any] = {"raw_p50_ms": raw.latency_slice(case.duel_seconds)}
            order = list(modes) if i % 2 == 0 else list(modes)[::-1]
            for batching in order:
                out = run_wrk(servers[batching].predict_url, lua, 1, case.duel_seconds)
                cycle[_mode(batching)] = {
                    "p50_ms": out["p50_ms"],
                    "requests": out.get("requests"),
                    "errors": _errors(out),
                }
            duel.append(cycle)
        if duel:
            log(
                f"[{case.key}] c=1 latency duel ({duel_cycles} cycles): "
                + "; ".join(
                    f"raw {c['raw_p50_ms']:.2f}"
                    + "".join(f", {_mode(b)} {c[_mode(b)]['p50_ms']:.2f}" for b in modes)
                    for c in duel
                )
            )
    finally:
        for server in servers.values():
            server.stop()

    raw_summary = raw.summary()
    best_by_round = [max(r["img_per_s"].values()) for r in raw_summary["rounds"]]
    for run in runs:
        a, b = run.pop("raw_rounds")
        run["raw_best_adjacent"] = (best_by_round[a] + best_by_round[b]) / 2
        run["ratio_adjacent"] = run["requests_per_s"] / run["raw_best_adjacent"]
        run["ratio_median"] = run["requests_per_s"] / raw_summary["best_img_per_s"]
    return {
        "title": case.title,
        "task": case.task,
        "model": str(case.model_path),
        "image": case.image_desc,
        "image_bytes": len(case.jpeg),
        "duration_s": case.duration,
        "warmup_s": warmup,
        "raw": raw_summary,
        "servers": server_info,
        "server_runs": sorted(runs, key=lambda r: (not r["batching"], r["connections"])),
        "latency_duel": {"slice_s": case.duel_seconds, "cycles": duel},
        "verdict": verdict(case, raw_summary, runs, duel),
        "notes": case.notes,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _mode(batching: bool) -> str:
    return "batching" if batching else "no_batching"


def _errors(run: dict[str, Any]) -> int:
    return int(run.get("non_2xx", 0)) + int(run.get("socket_errors", 0))


def measure_point(
    server: Server, lua: Path, connections: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """A wrk warm-up, then the measured wrk run with the server's CPU and batch counters."""
    if warmup > 0:
        run_wrk(server.predict_url, lua, connections, warmup, latency=False)
    before = server.metrics()
    with CpuMeter([server.pid]) as meter:
        out = run_wrk(server.predict_url, lua, connections, seconds)
    out.update(_server_side(before, server.metrics(), meter, out))
    out["batching"] = server.batching
    return out


def _server_side(
    before: dict[str, float], after: dict[str, float], meter: CpuMeter, out: dict[str, Any]
) -> dict[str, Any]:
    delta = {k: after[k] - before[k] for k in after}
    batches = delta["cvdeploy_batch_size_count"]
    items = delta["cvdeploy_queue_time_seconds_count"]
    requests = max(1, int(out.get("requests", 0)))
    wall = meter.wall
    return {
        "mean_batch": delta["cvdeploy_batch_size_sum"] / batches if batches else 0.0,
        "model_busy": delta["cvdeploy_inference_time_seconds_sum"] / wall if wall else 0.0,
        "mean_queue_ms": 1e3 * delta["cvdeploy_queue_time_seconds_sum"] / items if items else 0.0,
        "server_cpu_cores": meter.procs_cpu[0] / wall if wall else 0.0,
        "server_cpu_ms_per_req": 1e3 * meter.procs_cpu[0] / requests,
        "wrk_cpu_cores": meter.children / wall if wall else 0.0,
        "foreign_cores": meter.foreign_cores,
    }


def verdict(
    case: Case, raw: dict[str, Any], runs: list[dict[str, Any]], duel: list[dict[str, Any]]
) -> dict[str, Any]:
    """The two headline ratios per server mode, judged against the case's targets.

    img/s ratio: each server point over the raw best of the raw rounds run just before and
    after it (``ratio_adjacent``); for the YOLO case the best point counts, for the classifier
    the worst point at concurrency >= 16. p50 delta: the median over the duel cycles of
    (server p50 - raw p50), each pair measured seconds apart; when there was no duel, the
    concurrency-1 sweep point minus the pooled raw p50.
    """
    out: dict[str, Any] = {
        "raw_best_img_per_s": raw["best_img_per_s"],
        "raw_p50_ms": raw["p50_ms_batch1"],
        "ratio_target": case.ratio_target,
        "ratio_rule": (
            f"every c >= {case.ratio_min_concurrency}"
            if case.ratio_min_concurrency is not None
            else "best c"
        ),
        "p50_delta_target_ms": case.p50_delta_target_ms,
    }
    for batching in (True, False):
        mine = [r for r in runs if r["batching"] == batching]
        if not mine:
            continue
        ratios = {r["connections"]: r["ratio_adjacent"] for r in mine}
        ratios_median = {r["connections"]: r["ratio_median"] for r in mine}
        if case.ratio_min_concurrency is not None:
            judged = [c for c in ratios if c >= case.ratio_min_concurrency] or list(ratios)
            pick = min(judged, key=lambda c: ratios[c])
        else:
            pick = max(ratios, key=lambda c: ratios[c])
        c1 = next((r for r in mine if r["connections"] == 1), None)
        sweep_delta = c1["p50_ms"] - raw["p50_ms_batch1"] if c1 else float("nan")
        deltas = [
            c[_mode(batching)]["p50_ms"] - c["raw_p50_ms"] for c in duel if _mode(batching) in c
        ]
        delta = float(statistics.median(deltas)) if deltas else sweep_delta
        out[_mode(batching)] = {
            "ratio_by_concurrency": ratios,
            "ratio_by_concurrency_vs_median_raw": ratios_median,
            "ratio": ratios[pick],
            "ratio_at": pick,
            "ratio_ok": bool(ratios[pick] >= case.ratio_target),
            "p50_delta_ms": delta,
            "p50_delta_ms_per_cycle": deltas,
            "p50_delta_ms_sweep": sweep_delta,
            "p50_delta_ok": bool(delta <= case.p50_delta_target_ms),
            "errors": sum(_errors(r) for r in mine),
        }
    return out


# ----------------------------------------------------------------------------------- output


class Printer:
    """Rich tables when Rich is installed, plain aligned text otherwise."""

    def __init__(self) -> None:
        try:
            from rich.console import Console

            width = None if sys.stdout.isatty() else 150
            self.console: Any = Console(width=width, log_path=False)
        except ImportError:  # pragma: no cover - rich is a cvdeploy dependency
            self.console = None

    def log(self, text: str) -> None:
        if self.console is not None:
            self.console.log(text, markup=False, highlight=False)
        else:
            print(time.strftime("%H:%M:%S"), text, flush=True)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.console is not None:
            from rich.table import Table

            self.console.print(f"\n[bold]{title}[/]", highlight=False)
            table = Table()
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def _f(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def report(printer: Printer, results: dict[str, Any]) -> None:
    meta = results["meta"]
    for res in results["models"].values():
        raw = res["raw"]
        rows = []
        for b in BATCH_SIZES:
            per_round = " / ".join(f"{r['img_per_s'][b]:.1f}" for r in raw["rounds"])
            noise = " / ".join(f"{r['foreign_cores'][b]:.2f}" for r in raw["rounds"])
            best = "best" if b == raw["best_batch"] else ""
            cpu = f"{raw['cpu_ms_per_img'][b]:.2f}"
            rows.append([str(b), f"{raw['img_per_s'][b]:.1f}", per_round, cpu, noise, best])
        printer.table(
            f"{res['title']} - raw in-process pipeline (decode + preprocess + infer + "
            f"postprocess, ORT {raw['intra_op_threads']} threads), median of "
            f"{len(raw['rounds'])} interleaved rounds",
            ["batch", "img/s", "img/s per round", "CPU ms/img", "foreign cores per round", ""],
            rows,
        )
        st = raw["stages_ms_p50"]
        printer.table(
            f"{res['title']} - raw batch-1 latency, ms ({raw['samples_batch1']} images; "
            "stage columns are per-stage medians)",
            ["p50", "p99", "decode", "preprocess", "infer", "postprocess", "(to_dict)"],
            [
                [
                    _f(raw["p50_ms_batch1"]),
                    _f(raw["p99_ms_batch1"]),
                    *(
                        _f(st.get(k, float("nan")), 3)
                        for k in ("decode", "preprocess", "infer", "postprocess", "to_dict")
                    ),
                ]
            ],
        )
        rows = []
        for run in res["server_runs"]:
            rows.append(
                [
                    "on" if run["batching"] else "off",
                    str(run["connections"]),
                    f"{run['requests_per_s']:.1f}",
                    f"{run['ratio_adjacent']:.2f}",
                    f"{run['ratio_median']:.2f}",
                    _f(run["p50_ms"]),
                    _f(run["p99_ms"]),
                    _f(run["p99_ms"] / run["p50_ms"]) if run["p50_ms"] else "-",
                    str(_errors(run)),
                    f"{run['mean_batch']:.2f}",
                    f"{run['server_cpu_ms_per_req']:.2f}",
                    f"{run['foreign_cores']:.2f}",
                ]
            )
        printer.table(
            f"{res['title']} - cvdeploy serve under {meta['load_generator']}, "
            f"{res['duration_s']:g} s per point after a {res['warmup_s']:g} s warm-up",
            [
                "batching",
                "conns",
                "img/s",
                "/raw adj",
                "/raw med",
                "p50 ms",
                "p99 ms",
                "p99/p50",
                "errors",
                "mean batch",
                "srv CPU ms/req",
                "foreign cores",
            ],
            rows,
        )
        duel = res["latency_duel"]["cycles"]
        if duel:
            modes = [m for m in ("batching", "no_batching") if m in duel[0]]
            printer.table(
                f"{res['title']} - concurrency-1 latency duel: p50 ms of "
                f"{res['latency_duel']['slice_s']:g} s slices taken in turn",
                ["cycle", "raw", *modes, *(f"delta {m}" for m in modes)],
                [
                    [
                        str(i + 1),
                        _f(c["raw_p50_ms"]),
                        *(_f(c[m]["p50_ms"]) for m in modes),
                        *(_f(c[m]["p50_ms"] - c["raw_p50_ms"]) for m in modes),
                    ]
                    for i, c in enumerate(duel)
                ],
            )
    rows = []
    for key, res in results["models"].items():
        v = res["verdict"]
        for mode in ("batching", "no_batching"):
            if mode not in v:
                continue
            m = v[mode]
            rows.append(
                [
                    f"{key}, {mode.replace('_', ' ')}",
                    f"{v['raw_best_img_per_s']:.1f}",
                    f"{_f(v['raw_p50_ms'])}",
                    f"{m['ratio']:.2f} at c={m['ratio_at']}",
                    f">= {v['ratio_target']:.2f} ({v['ratio_rule']})",
                    _ok(m["ratio_ok"]),
                    f"{m['p50_delta_ms']:+.2f}",
                    f"<= {v['p50_delta_target_ms']:g}",
                    _ok(m["p50_delta_ok"]),
                    str(m["errors"]),
                ]
            )
    printer.table(
        f"Ratios vs targets - load generator {meta['load_generator']}; "
        f"machine {meta['machine']['summary']}; run took {meta['elapsed_s']:.0f} s",
        [
            "model",
            "raw best img/s",
            "raw p50 ms",
            "server/raw img/s",
            "target",
            "",
            "p50 delta ms",
            "target",
            "",
            "errors",
        ],
        rows,
    )


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = psutil.virtual_memory().total / 2**30
    return {
        "cores": cores,
        "cpu": cpu,
        "memory_gib": round(mem, 1),
        "load_average": list(os.getloadavg()),
        "summary": f"{cores} CPU cores ({cpu}), {mem:.0f} GiB, shared",
    }


def versions() -> dict[str, str]:
    import onnxruntime

    import cvdeploy

    out = {
        "python": platform.python_version(),
        "cvdeploy": getattr(cvdeploy, "__version__", "?"),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(Exception):
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke test (~1.5 min)")
    parser.add_argument("--models", default="yolo,classifier", help="comma list: yolo,classifier")
    parser.add_argument(
        "--duration", type=float, help="seconds per wrk point (default: yolo 10, classifier 7)"
    )
    parser.add_argument("--warmup", type=float, help="wrk warm-up seconds per point (default 2)")
    parser.add_argument("--concurrency", help="comma list of connection counts (1,4,16,64)")
    parser.add_argument(
        "--rounds", type=int, help="raw pipeline rounds, interleaved with the server runs (3)"
    )
    parser.add_argument("--raw-seconds", type=float, help="seconds per raw batch size per round")
    parser.add_argument(
        "--duel-cycles", type=int, help="cycles of the paired concurrency-1 latency duel (5)"
    )
    parser.add_argument(
        "--batching", default="on,off", help="server modes to measure: on,off (default both)"
    )
    parser.add_argument("--classifier-width", type=float, default=0.35)
    parser.add_argument("--classifier-depth", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument(
        "--serve-args",
        default="",
        help="extra arguments for `cvdeploy serve`, e.g. '--no-ort-spinning'",
    )
    args = parser.parse_args(argv)
    SERVE_EXTRA[:] = shlex.split(args.serve_args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    printer = Printer()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not CVDEPLOY.exists():
        print(f"{CVDEPLOY} not found: run from the project's virtualenv", file=sys.stderr)
        return 2
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(wanted) - {"yolo", "classifier"}
    if unknown:
        print(f"unknown model(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    concurrencies = (
        [int(c) for c in args.concurrency.split(",")]
        if args.concurrency
        else ([1, 16] if args.quick else list(CONCURRENCIES))
    )
    modes = [m.strip() == "on" for m in args.batching.split(",") if m.strip()]
    rounds = args.rounds or (2 if args.quick else 3)
    duel_cycles = args.duel_cycles if args.duel_cycles is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "benchmark": "benchmarks/serving.py",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_generator": f"{wrk_version()} (closed loop, POST image/jpeg)",
            "machine": machine_info(),
            "versions": versions(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "concurrencies": concurrencies,
            "server_max_batch_size": SERVER_MAX_BATCH,
            "intra_op_threads": INTRA_OP_THREADS,
            "raw_rounds": rounds,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="cvdeploy-bench-") as tmp:
        workdir = Path(tmp)
        cases: list[Case] = []
        if "yolo" in wanted:
            if not YOLO_MODEL.exists():
                print(f"{YOLO_MODEL} is missing (scripts/make_bench_models.py)", file=sys.stderr)
                return 2
            cases.append(
                Case(
                    key="yolo",
                    title="YOLOv8n-640",
                    task="yolo",
                    jpeg=make_jpeg(IMAGES_DIR / "china.jpg", 640, 480),
                    image_desc="china.jpg cover-resized and centre-cropped to 640x480, JPEG q90",
                    duration=args.duration or (4.0 if args.quick else 10.0),
                    raw_seconds=args.raw_seconds or (1.0 if args.quick else 2.5),
                    ratio_target=0.9,
                    ratio_min_concurrency=None,
                    p50_delta_target_ms=2.0,
                    duel_seconds=2.0,
                    model_path=YOLO_MODEL,
                    notes=["random weights: no detections pass conf 0.25, so NMS is near-free"],
                )
            )
        if "classifier" in wanted:
            path = build_classifier(workdir, args.classifier_width, args.classifier_depth)
            cases.append(
                Case(
                    key="classifier",
                    title=(
                        f"MobileNet-style classifier 224 (width {args.classifier_width:g}, "
                        f"depth {args.classifier_depth:g})"
                    ),
                    task="classification",
                    jpeg=make_jpeg(IMAGES_DIR / "flower.jpg", 256, 256),
                    image_desc="flower.jpg cover-resized and centre-cropped to 256x256, JPEG q90",
                    duration=args.duration or (2.0 if args.quick else 7.0),
                    raw_seconds=args.raw_seconds or (1.0 if args.quick else 2.0),
                    ratio_target=0.9,
                    ratio_min_concurrency=16,
                    p50_delta_target_ms=0.5,
                    model_path=path,
                    notes=["built at run time by scripts/mobilenet_onnx.py, random weights"],
                )
            )
        for case in cases:
            results["models"][case.key] = bench_case(
                case, concurrencies, modes, rounds, warmup, duel_cycles, workdir, printer.log
            )
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average_end"] = list(os.getloadavg())
    report(printer, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    printer.log(f"wrote {args.out} in {results['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
