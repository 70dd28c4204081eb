"""Make the benchmark models.

- ``benchmarks/models/yolov8n_640.onnx``: ``YOLO("yolov8n.yaml")`` (architecture only, random
  init, nothing downloaded) exported with ``format="onnx", dynamic=True, imgsz=640, opset=17,
  simplify=True``. Input ``images [b,3,h,w]``, output ``output0 [b,84,anchors]`` (8400 at 640).
  Needs the training venv (torch, ultralytics, onnxslim) and ``YOLO_OFFLINE=1``.
- A MobileNetV2-style classifier (``scripts/mobilenet_onnx.py``, onnx + numpy only, no torch),
  input ``images [b,3,224,224]``, output ``logits [b,1000]``; the benchmark builds it at run time.

    .train-venv/bin/python scripts/make_bench_models.py     # both, with timings
    .venv/bin/python scripts/make_bench_models.py --mobilenet-only OUT.onnx   # no torch needed
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenet_onnx import build_mobilenet_classifier

ROOT = Path(__file__).resolve().parent.parent
BENCH_MODELS = ROOT / "benchmarks" / "models"


def make_yolov8n(out: Path, imgsz: int = 640, seed: int = 0) -> Path:
    """Export a randomly initialised YOLOv8n to ONNX (torch and ultralytics imported here only)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)  # the random init; the same seed gives the same weights
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path.cwd()
        os.chdir(tmp)  # export writes next to the (in-memory) model; keep it out of the repo
        try:
            model = YOLO("yolov8n.yaml")
            exported = model.export(
                format="onnx", dynamic=True, imgsz=imgsz, opset=17, simplify=True
            )
            shutil.copyfile(exported, out)
        finally:
            os.chdir(cwd)
    return out


def time_onnx(path: Path, batch: int = 1, threads: int = 2, runs: int = 200) -> float:
    """Median milliseconds per image with ONNX Runtime on CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    size = inp.shape[2] if isinstance(inp.shape[2], int) else 640
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(10):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3 / batch


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the benchmark models.")
    parser.add_argument(
        "--mobilenet-only", type=Path, metavar="OUT", help="only build the MobileNet classifier"
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH_MODELS)
    args = parser.parse_args()

    mobilenet = args.mobilenet_only
    if mobilenet is None:
        yolo = make_yolov8n(args.out_dir / "yolov8n_640.onnx")
        print(f"wrote {yolo} ({yolo.stat().st_size / 1e6:.2f} MB)")
        print(
            f"  yolov8n 640 batch 1: {time_onnx(yolo, runs=20):.1f} ms/image (ORT CPU, 2 threads)"
        )
        mobilenet = Path(tempfile.gettempdir()) / "cvdeploy_mobilenet_bench.onnx"

    path = build_mobilenet_classifier(mobilenet)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for batch in (1, 8):
        ms = time_onnx(path, batch=batch)
        print(f"  mobilenet batch {batch}: {ms:.3f} ms/image (ORT CPU, 2 threads)")


if __name__ == "__main__":
    main()
