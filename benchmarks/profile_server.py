"""Where does ``cvdeploy serve`` spend its CPU on a small model? py-spy under wrk load.

Builds the benchmark's MobileNet-style classifier, serves it (dynamic batching on unless
``--no-batching``), loads it with wrk at ``--concurrency`` (16) twice:

1. without a profiler, reading every OS thread's CPU time from ``/proc/PID/task`` before and
   after (threads named with ``py-spy dump``: event loop, decode pool, inference thread; the
   threads with no Python frames are ONNX Runtime's intra-op pool), which gives exact CPU
   milliseconds per request per thread;
2. under ``py-spy record --native`` (collapsed stacks), which sorts each sample of each
   Python thread into one bucket: waits (idle, GIL) apart, then the innermost recognised
   frame (uvicorn/httptools, uvloop, FastAPI/Starlette, body read, decode, preprocess,
   ONNX Runtime, JSON, metrics, thread hand-offs, GC...).

Each thread's CPU from (1) is split by its bucket shares from (2), so the bucket table is in
CPU ms per request, not raw sample counts. Needs ``wrk`` and ``py-spy`` (``pip install
py-spy``; not a project dependency) and permission to ptrace the server (root here).

    python benchmarks/profile_server.py                     # c=16, batching, 20 s
    python benchmarks/profile_server.py --no-batching --concurrency 64

Writes ``benchmarks/results/profile_server.json`` (``--out``) and the collapsed stacks next to it
(``.collapsed.txt``, loadable in https://www.speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving  # the benchmark's server, wrk and image helpers

RESULTS = serving.BENCH_DIR / "results"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

# Samples that are waits, not CPU: (label, regex over the whole stack), first match wins.
WAITS: tuple[tuple[str, str], ...] = (
    ("wait: event loop idle in epoll", r"epoll_pwait|epoll_wait"),
    ("wait: pool thread idle (queue.get)", r"PyThread_acquire_lock_timed"),
    ("wait: ONNX Runtime sync / GIL re-take", r"onnxruntime[^;]*;[^;]*pthread_cond_(timed)?wait"),
    ("wait: GIL", r"pthread_cond_(timed)?wait|take_gil|sem_(clock|timed)?wait"),
)
# Buckets whose frames never have other work below them: anywhere in the stack wins.
ANYWHERE: tuple[tuple[str, str], ...] = (
    ("garbage collector", r"gc_collect|collect_main|collect_with_callback"),
    (
        "thread hand-off (run_in_executor, call_soon_threadsafe, wake-ups)",
        r"call_soon_threadsafe|run_in_executor|uv_async_send|uvasync|_chain_future|"
        r"_copy_future_state|_set_state \(asyncio|wrap_future|ThreadPoolExecutor\.submit|"
        r"_adjust_thread_count|SimpleQueue_put|pthread_cond_signal|sem_post|"
        r"Future\.set_result \(concurrent|_invoke_callbacks \(concurrent",
    ),
)
# Otherwise the innermost frame that matches one of these, in order of test per frame.
RULES: tuple[tuple[str, str], ...] = (
    ("ONNX Runtime (inference)", r"onnxruntime"),
    ("JSON rendering (orjson) + to_dict", r"orjson|render \(cvdeploy/serving/http|to_dict \("),
    ("metrics (prometheus_client)", r"prometheus_client|observe_request|observe_batch"),
    ("decode (simplejpeg)", r"decode_image|simplejpeg|_decode_jpeg|jpeg"),
    ("preprocess (resize + normalise)", r"preprocess|Resample|resize_rgb|_aligned_cast"),
    ("postprocess (softmax, top-k)", r"postprocess \(|cvdeploy/runtime/tasks/"),
    ("batch assembly (np.stack, infer glue)", r"_run_batch|infer \(cvdeploy"),
    ("request id (uuid4/urandom) + middleware", r"uuid|urandom|getrandom|serving/http\.py"),
    ("body read (request.stream)", r"read_body|starlette/requests"),
    ("image route handler", r"cvdeploy/serving/protocols/"),
    ("engine glue (gather, futures)", r"cvdeploy/serving/engine"),
    ("dynamic batcher", r"cvdeploy/batching/"),
    ("FastAPI/Starlette routing + responses", r"fastapi/|starlette/"),
    ("uvicorn + httptools (HTTP parse/write)", r"uvicorn/|httptools|llhttp|parser\.c"),
    ("socket syscalls", r"^(write|writev|read|recv|send|sendmsg|recvmsg) \(libc"),
    ("asyncio/uvloop event loop", r"asyncio/|uvloop|loop\.c|loop\.pyx|uv_|uv__|libuv"),
)
_WAITS = [(n, re.compile(rx)) for n, rx in WAITS]
_ANYWHERE = [(n, re.compile(rx)) for n, rx in ANYWHERE]
_RULES = [(n, re.compile(rx)) for n, rx in RULES]
OTHER = "other (interpreter, numpy, libc)"


def classify(frames: Sequence[str]) -> str:
    """One bucket for one sample (frames root first, as py-spy writes them)."""
    stack = ";".join(frames)
    for name, rx in _WAITS:
        if rx.search(stack):
            return name
    for name, rx in _ANYWHERE:
        if rx.search(stack):
            return name
    for frame in reversed(frames):  # innermost first
        for name, rx in _RULES:
            if rx.search(frame):
                return name
    return OTHER


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float, float, float]]:
    """tid -> (comm, user s, system s, on-CPU s, runqueue-wait s) for every thread of ``pid``.

    The last two come from ``/proc/.../schedstat`` (nanoseconds): time running and time
    runnable but waiting for a core; the rest of the wall time the thread was blocked.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float, float, float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            sched = (task / "schedstat").read_text().split()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        run_s, wait_s = int(sched[0]) / 1e9, int(sched[1]) / 1e9
        out[int(task.name)] = (comm, int(fields[11]) / tick, int(fields[12]) / tick, run_s, wait_s)
    return out


def python_thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from ``py-spy dump``."""
    proc = subprocess.run(
        [PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False
    )
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r'Thread (\d+) \((?:active|idle)[^)]*\): "([^"]+)"', proc.stdout)
    }


def thread_table(
    before: dict[int, tuple[str, float, float, float, float]],
    after: dict[int, tuple[str, float, float, float, float]],
    names: dict[int, str],
    wall: float,
    requests: int,
) -> list[dict[str, Any]]:
    rows = []
    for tid, (comm, user, system, run, wait) in after.items():
        _, user0, sys0, run0, wait0 = before.get(tid, (comm, 0.0, 0.0, 0.0, 0.0))
        cpu_user, cpu_sys = user - user0, system - sys0
        if cpu_user + cpu_sys <= 0:
            continue
        running, runnable = (run - run0) / wall, (wait - wait0) / wall
        rows.append(
            {
                "tid": tid,
                "thread": names.get(tid, f"native {tid} (ONNX Runtime intra-op pool)"),
                "python": tid in names,
                "user_s": round(cpu_user, 3),
                "sys_s": round(cpu_sys, 3),
                "cores": (cpu_user + cpu_sys) / wall,
                "ms_per_req": 1e3 * (cpu_user + cpu_sys) / requests,
                "running": running,
                "waiting_for_cpu": runnable,
                "blocked": max(0.0, 1.0 - running - runnable),
            }
        )
    return sorted(rows, key=lambda r: -r["cores"])


def parse_collapsed(path: Path) -> dict[int, collections.Counter[str]]:
    """OS thread id -> bucket -> samples."""
    per_thread: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = re.match(r"thread \((\d+)\)", frames[0])
        if not m:
            continue
        per_thread[int(m.group(1))][classify(frames[1:])] += int(count)
    return per_thread


def attribute(
    threads: list[dict[str, Any]], samples: dict[int, collections.Counter[str]]
) -> dict[str, float]:
    """CPU ms/request per bucket: each thread's CPU split by its non-wait sample shares."""
    out: collections.Counter[str] = collections.Counter()
    for t in threads:
        if not t["python"]:
            out["ONNX Runtime (inference)"] += t["ms_per_req"]  # the intra-op pool
            continue
        busy = {k: v for k, v in samples.get(t["tid"], {}).items() if not k.startswith("wait")}
        total = sum(busy.values())
        if not total:
            out[OTHER] += t["ms_per_req"]
            continue
        for name, n in busy.items():
            out[name] += t["ms_per_req"] * n / total
    return dict(out.most_common())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per wrk run")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_server.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or not Path(PY_SPY).exists():
        print("needs wrk (apt-get install wrk) and py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    c = args.concurrency

    with tempfile.TemporaryDirectory(prefix="cvdeploy-prof-") as tmp:
        work = Path(tmp)
        case = serving.Case(
            key="classifier",
            title="classifier",
            task="classification",
            jpeg=serving.make_jpeg(serving.IMAGES_DIR / "flower.jpg", 256, 256),
            image_desc="flower.jpg 256x256 q90",
            duration=args.duration,
            raw_seconds=0,
            ratio_target=0,
            ratio_min_concurrency=None,
            p50_delta_target_ms=0,
            model_path=serving.build_classifier(work, 0.35, 1.0),
        )
        body = work / "body.jpg"
        body.write_bytes(case.jpeg)
        lua = serving.write_lua(work / "post.lua", body)
        server = serving.Server(case, not args.no_batching, work)
        server.start()
        try:
            server.wait_ready()
            print("verify:", server.verify(), flush=True)
            serving.run_wrk(server.predict_url, lua, c, 3, latency=False)
            names = python_thread_names(server.pid)

            # 1. no profiler: exact per-thread CPU
            before = thread_cpu(server.pid)
            metrics0 = server.metrics()
            with serving.CpuMeter([server.pid]) as meter:
                baseline = serving.run_wrk(server.predict_url, lua, c, args.duration)
            after = thread_cpu(server.pid)
            side = serving._server_side(metrics0, server.metrics(), meter, baseline)
            names.update(python_thread_names(server.pid))
            threads = thread_table(
                before, after, names, meter.wall, max(1, int(baseline["requests"]))
            )

            # 2. py-spy --native: what each Python thread is doing
            collapsed = work / "stacks.txt"
            spy_cmd = [PY_SPY, "record", "--pid", str(server.pid), "--format", "raw"]
            spy_cmd += ["--threads", "--native", "--rate", str(args.rate)]
            spy_cmd += ["--duration", str(round(args.duration)), "--output", str(collapsed)]
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            profiled = serving.run_wrk(server.predict_url, lua, c, args.duration)
            _, spy_err = spy.communicate(timeout=120)
            if not collapsed.exists():
                print(f"py-spy failed: {spy_err.decode(errors='replace')}", file=sys.stderr)
                return 1
            samples = parse_collapsed(collapsed)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(collapsed, args.out.with_suffix(".collapsed.txt"))
        finally:
            server.stop()

    buckets = attribute(threads, samples)
    total_ms = sum(t["ms_per_req"] for t in threads)
    mode = "batching" if not args.no_batching else "no batching"
    print(
        f"\nwrk c={c}, {mode}: {baseline['requests_per_s']:.1f} img/s, p50 "
        f"{baseline['p50_ms']:.2f} ms, p99 {baseline['p99_ms']:.2f} ms, mean batch "
        f"{side['mean_batch']:.2f}, foreign load {side['foreign_cores']:.2f} cores, wrk "
        f"{side['wrk_cpu_cores']:.2f} cores (under py-spy: {profiled['requests_per_s']:.1f} img/s)"
    )
    print(
        f"\nServer CPU by OS thread, no profiler ({total_ms:.2f} ms per request, "
        f"{sum(t['cores'] for t in threads):.2f} cores):"
    )
    print(f"  {'thread':<42} {'cores':>5} {'ms/req':>7}   share of wall time")
    for t in threads:
        print(
            f"  {t['thread']:<42} {t['cores']:5.2f} {t['ms_per_req']:7.3f}   running "
            f"{100 * t['running']:3.0f} %, waiting for a core {100 * t['waiting_for_cpu']:3.0f} %, "
            f"blocked {100 * t['blocked']:3.0f} %"
        )
    print("\nWhat each Python thread's samples were (py-spy --native, wall-clock samples):")
    for t in threads:
        counter = samples.get(t["tid"])
        if not counter:
            continue
        n = sum(counter.values())
        print(f"  {t['thread']} ({n} samples)")
        for name, k in counter.most_common(9):
            print(f"      {name:<62} {100 * k / n:5.1f} %")
    print(f"\nServer CPU per request by activity ({total_ms:.2f} ms/req in all):")
    for name, ms in buckets.items():
        print(f"  {name:<66} {ms:6.3f} ms  {100 * ms / total_ms:5.1f} %")

    result: dict[str, Any] = {
        "concurrency": c,
        "batching": not args.no_batching,
        "py_spy_rate": args.rate,
        "wrk": {k: baseline[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "requests")},
        "wrk_under_py_spy": {k: profiled[k] for k in ("requests_per_s", "p50_ms", "p99_ms")},
        "server_side": side,
        "server_cpu_ms_per_req": total_ms,
        "threads": threads,
        "cpu_ms_per_req_by_activity": buckets,
        "samples_by_thread": {
            next((t["thread"] for t in threads if t["tid"] == tid), str(tid)): dict(cnt)
            for tid, cnt in samples.items()
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.collapsed.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
