"""The deployment pipeline: how long each stage takes for the two demo models.

For the digits classifier (evaluated on its 360 held-out digits) and the shapes detector (on its
50 held-out images), on a fresh local platform in a temporary ``$CVDEPLOY_HOME``:

1. **First deployment**: version 1 goes through every stage and creates its endpoint.
2. **Rollout**: version 2 (the same file registered again) is rolled out over steps 10, 50,
   100 % with a ``window_s``-second watch per step while a thread keeps the endpoint busy; the
   champion's metrics are reused (same data hash), so its evaluation is not repeated.

Stage timings come from the pipeline's own result (``result["timings"]``); the performance stage
runs ``duration_s`` per batch size by design, so its time is a setting, not a cost.

    python benchmarks/pipeline.py            # ~1.5 min on 2 cores
    python benchmarks/pipeline.py --quick    # 1 s windows and perf runs, ~40 s

Prints a table and writes ``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "pipeline.json"
STAGES = ("security", "compatibility", "resources", "performance", "evaluation", "gates", "deploy")
MODELS = {
    # name: (demo file, eval set, thresholds, a sample image for the load thread)
    "digits": (
        "digits_classifier.onnx",
        "digits",
        {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9},
        "digit_3.png",
    ),
    "shapes": (
        "shapes_detector.onnx",
        "shapes",
        {"map50": 0.8, "precision": 0.8, "recall": 0.8},
        "shapes_1.jpg",
    ),
}
CONFIG = """
deployment:
  ci_cd:
    rollout_steps: [10, 50, 100]
    performance: {{batch_sizes: [1, 8], duration_s: {duration}}}
    rollout: {{window_s: {window}, min_requests: 5, step_timeout_s: 120, max_latency_ms: 1000}}
"""


class Load:
    """One client sending requests back to back, so rollout steps see traffic."""

    def __init__(self, url: str, endpoint: str, image: Path) -> None:
        self.url = f"{url}/serving-endpoints/{endpoint}/invocations"
        self.body = {"inputs": [base64.b64encode(image.read_bytes()).decode()]}
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                http.post(self.url, json=self.body)
                self.sent += 1


def _row(result: dict[str, Any]) -> dict[str, Any]:
    timings = result["timings"]
    return {
        "status": result["status"],
        "version": result["model_version"],
        "stages_s": {name: timings.get(name) for name in STAGES},
        "total_s": timings.get("total"),
        "metrics": result["metrics"],
        "rollout_steps": [
            {k: s.get(k) for k in ("percent", "seconds", "requests", "latency_p95_ms", "verdict")}
            for s in (result.get("rollout") or {}).get("steps", [])
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s windows and perf runs")
    args = parser.parse_args()
    window, duration = (1.0, 0.5) if args.quick else (5.0, 2.0)

    home = Path(tempfile.mkdtemp(prefix="cvdeploy-bench-pipeline-"))
    os.environ["CVDEPLOY_HOME"] = str(home)
    os.environ.pop("CVDEPLOY_CONFIG", None)
    # Imported after CVDEPLOY_HOME is set: the registry and platform read it.
    from cvdeploy import DeploymentPipeline
    from cvdeploy.demo import DEMO_DIR, demo_file, eval_set
    from cvdeploy.platforms.local.server import PlatformServer, platform_options
    from cvdeploy.registry import Registry

    config = home / "bench.yaml"
    config.write_text(CONFIG.format(window=window, duration=duration), encoding="utf-8")
    registry = Registry(home=home)
    results: dict[str, Any] = {}
    with PlatformServer(platform_options(home=home)) as server:
        for name, (model_file, data, thresholds, image) in MODELS.items():
            for _ in range(2):
                registry.register(demo_file(model_file), name, eval_data=eval_set(data))
            runs = {}
            for version, label in (("1", "first_deployment"), ("2", "rollout")):
                pipeline = DeploymentPipeline(
                    server.url,
                    None,
                    name,
                    "bench-pipeline",
                    config=config,
                    model_version=version,
                    report_dir=home / "reports" / f"{name}-{version}",
                )
                endpoint = f"{name}-endpoint"
                if version == "1":
                    result = pipeline.run_pipeline(thresholds, endpoint)
                else:
                    with Load(server.url, endpoint, DEMO_DIR / "images" / image):
                        result = pipeline.run_pipeline(thresholds, endpoint)
                if result["status"] != "deployed":
                    print(f"{name} v{version}: {result['status']}: {result['reasons']}")
                    return 1
                runs[label] = _row(result)
            results[name] = runs

    print(f"\nStage seconds (window_s {window:g}, performance duration_s {duration:g} per batch)")
    header = f"{'model / run':<26}" + "".join(f"{s[:8]:>10}" for s in STAGES) + f"{'total':>9}"
    print(header)
    for name, runs in results.items():
        for label, row in runs.items():
            cells = "".join(
                f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in row["stages_s"].values()
            )
            print(f"{name + ' ' + label:<26}{cells}{row['total_s']:>9.2f}")
    payload = {
        "benchmark": "pipeline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"window_s": window, "performance_duration_s": duration, "quick": args.quick},
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
