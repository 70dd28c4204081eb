"""Train the demo shapes detector (Ultralytics YOLOv8, small custom width) and export it to ONNX.

Trains from scratch on CPU (no pretrained weights, nothing downloaded) on the dataset that
``scripts/make_shapes_dataset.py`` generates, validates on its held-out split with Ultralytics'
own ``model.val()``, and exports ``cvdeploy/demo/shapes_detector.onnx`` with
``format="onnx", dynamic=True, imgsz=320, simplify=True, opset=17``: input ``images``
``[b,3,h,w]``, output ``output0 [b, 4+3, anchors]`` (2100 anchors at 320), Ultralytics'
metadata (names, stride, imgsz, task, ...) in the ONNX metadata_props (the absolute dataset path
in its ``description`` is made relative to the repository).

Needs the training environment (torch, torchvision, ultralytics, onnx, onnxslim), e.g.:

    export YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/scripts/_work/yolo_config   # holds Arial.ttf
    .train-venv/bin/python scripts/make_shapes_dataset.py
    .train-venv/bin/python scripts/train_shapes_detector.py [--epochs 35]   # ~21-25 min, 2 cores
    .train-venv/bin/python scripts/train_shapes_detector.py --skip-train    # re-validate/export
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "scripts" / "_work"
OUT_ONNX = ROOT / "cvdeploy" / "demo" / "shapes_detector.onnx"

# YOLOv8 architecture (as ultralytics/cfg/models/v8/yolov8.yaml) with one explicit, smaller scale.
MODEL_YAML = """\
# Shapes detector: YOLOv8 layout, depth {depth}, width {width}
nc: 3
depth_multiple: {depth}
width_multiple: {width}
max_channels: 1024
backbone:
  - [-1, 1, Conv, [64, 3, 2]]  # 0-P1/2
  - [-1, 1, Conv, [128, 3, 2]]  # 1-P2/4
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]  # 3-P3/8
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]  # 5-P4/16
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]  # 7-P5/32
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]  # 9
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]  # 12
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]  # 15 (P3/8-small)
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]  # 18 (P4/16-medium)
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]  # 21 (P5/32-large)
  - [[15, 18, 21], 1, Detect, [nc]]
"""


def _relative_description(path: Path) -> None:
    """Ultralytics writes "... trained on /abs/path/data.yaml": drop this checkout's prefix."""
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = prop.value.replace(f"{ROOT}{os.sep}", "")
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export the demo shapes detector.")
    parser.add_argument("--data", type=Path, default=WORK / "shapes" / "data.yaml")
    parser.add_argument("--epochs", type=int, default=35)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--depth", type=float, default=0.33)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="shapes")
    parser.add_argument("--out", type=Path, default=OUT_ONNX)
    parser.add_argument("--val-each-epoch", action="store_true", help="slower; default: at end")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument(
        "--skip-train", action="store_true", help="validate and export the existing best.pt"
    )
    args = parser.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO  # imported late: YOLO_OFFLINE must be set first

    WORK.mkdir(parents=True, exist_ok=True)
    cfg = WORK / "shapes_det.yaml"  # no "yolov8n"-style name, so no scale is guessed from it
    cfg.write_text(MODEL_YAML.format(depth=args.depth, width=args.width))

    start = time.perf_counter()
    if not args.skip_train:
        YOLO(str(cfg), task="detect").train(
            data=str(args.data),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            device="cpu",
            workers=2,
            seed=args.seed,
            deterministic=True,
            pretrained=False,
            amp=False,
            cache="ram",
            plots=False,
            project=str(WORK / "runs"),
            name=args.name,
            exist_ok=True,
            patience=100,
            val=args.val_each_epoch,
            verbose=False,
        )
    train_s = time.perf_counter() - start

    best = WORK / "runs" / args.name / "weights" / "best.pt"
    model = YOLO(str(best))
    metrics = model.val(
        data=str(args.data), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False
    )
    ap_class = [int(c) for c in metrics.box.ap_class_index]
    result = {
        "train_wall_s": None if args.skip_train else round(train_s, 1),
        "epochs": args.epochs,
        "map50": round(float(metrics.box.map50), 4),
        "map50_95": round(float(metrics.box.map), 4),
        "per_class_map50": {
            model.names[c]: round(float(ap), 4)
            for c, ap in zip(ap_class, metrics.box.ap50, strict=True)
        },
        "per_class_map50_95": {
            model.names[c]: round(float(ap), 4)
            for c, ap in zip(ap_class, metrics.box.ap, strict=True)
        },
        "precision": round(float(metrics.box.mp), 4),
        "recall": round(float(metrics.box.mr), 4),
    }
    print(json.dumps(result, indent=2))
    (WORK / f"{args.name}_metrics.json").write_text(json.dumps(result, indent=2))

    if not args.no_export:
        onnx_path = Path(
            model.export(format="onnx", dynamic=True, imgsz=args.imgsz, simplify=True, opset=17)
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, args.out)
        _relative_description(args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
