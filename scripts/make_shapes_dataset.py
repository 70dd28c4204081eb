"""Generate the synthetic "shapes" detection dataset (YOLO format) used to train the demo detector.

Three classes (0 ``circle``, 1 ``square``, 2 ``triangle``); each image holds 1 to 6 filled shapes
of varied size, colour and rotation on a textured, noisy or gradient background. Half the images
are 320x320, the rest have random sizes between 240 and 416 pixels a side. Nothing is downloaded;
the same seed gives the same files.

    python scripts/make_shapes_dataset.py [--out scripts/_work/shapes] [--train 800] [--val 200]

writes ``OUT/images/{train,val}/*.jpg``, ``OUT/labels/{train,val}/*.txt`` (``cls cx cy w h``,
normalised), ``OUT/data.yaml`` for Ultralytics, and copies 4 held-out val images to
``cvdeploy/demo/images/shapes_<n>.jpg`` (n = 1..4). Needs numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("circle", "square", "triangle")
DEMO_IMAGES = ROOT / "cvdeploy" / "demo" / "images"


@dataclass
class Shape:
    cls: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    points: list[tuple[float, float]]  # polygon vertices (empty for a circle)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    kind = rng.integers(4)
    if kind == 0:  # flat colour
        arr = np.ones((h, w, 3)) * rng.uniform(0, 255, 3)
    elif kind == 1:  # linear gradient between two colours, random direction
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = a + (b - a) * t[..., None]
    elif kind == 2:  # smooth blotches: coarse random colours upscaled
        cells = int(rng.integers(3, 12))
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float64)
    else:  # stripes or checks
        period = int(rng.integers(8, 40))
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        yy, xx = np.mgrid[0:h, 0:w]
        if rng.random() < 0.5:
            mask = ((xx + yy * rng.uniform(-1, 1)) // period) % 2
        else:
            mask = ((xx // period) + (yy // period)) % 2
        arr = np.where(mask[..., None] == 0, a, b)
    arr = arr + rng.normal(0, rng.uniform(0, 20), arr.shape)  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _random_shape(rng: np.random.Generator, w: int, h: int) -> Shape:
    cls = int(rng.integers(len(NAMES)))
    r = rng.uniform(10, min(w, h) * 0.2)  # circumradius
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    theta = rng.uniform(0, 2 * math.pi)
    if cls == 0:
        return Shape(cls, (cx - r, cy - r, cx + r, cy + r), [])
    n = 4 if cls == 1 else 3
    pts = [
        (
            cx + r * math.cos(theta + 2 * math.pi * k / n),
            cy + r * math.sin(theta + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return Shape(cls, (min(xs), min(ys), max(xs), max(ys)), pts)


def _contrasting_colour(rng: np.random.Generator, img: Image.Image, box: tuple) -> tuple:
    region = np.asarray(img.crop(tuple(int(v) for v in box)), dtype=np.float64)
    mean = region.reshape(-1, 3).mean(0) if region.size else np.full(3, 128.0)
    best, best_d = (255, 255, 255), -1.0
    for _ in range(30):
        c = rng.uniform(0, 255, 3)
        d = float(np.abs(c - mean).sum())
        if d > best_d:
            best, best_d = tuple(int(v) for v in c), d
        if d > 180:
            break
    return best


def make_image(rng: np.random.Generator) -> tuple[Image.Image, list[Shape]]:
    if rng.random() < 0.5:
        w = h = 320
    else:
        w, h = (int(v) for v in rng.integers(240, 417, 2))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(50):
            s = _random_shape(rng, w, h)
            if all(_iou(s.box, o.box) < 0.05 for o in shapes):
                break
        else:
            continue
        colour = _contrasting_colour(rng, img, s.box)
        if s.cls == 0:
            draw.ellipse(s.box, fill=colour)
        else:
            draw.polygon(s.points, fill=colour)
        shapes.append(s)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img, shapes


def write_split(rng: np.random.Generator, out: Path, split: str, count: int) -> None:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img, shapes = make_image(rng)
        w, h = img.size
        stem = f"{split}_{i:05d}"
        img.save(out / "images" / split / f"{stem}.jpg", quality=int(rng.integers(75, 96)))
        lines = [
            f"{s.cls} {(s.box[0] + s.box[2]) / 2 / w:.6f} {(s.box[1] + s.box[3]) / 2 / h:.6f} "
            f"{(s.box[2] - s.box[0]) / w:.6f} {(s.box[3] - s.box[1]) / h:.6f}"
            for s in shapes
        ]
        (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic shapes dataset.")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "_work" / "shapes")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-demo-images", action="store_true", help="skip cvdeploy/demo/images")
    args = parser.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    # Separate generators per split so the val set does not change with --train.
    write_split(np.random.default_rng([args.seed, 0]), args.out, "train", args.train)
    write_split(np.random.default_rng([args.seed, 1]), args.out, "val", args.val)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    (args.out / "data.yaml").write_text(
        f"path: {args.out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    if not args.no_demo_images:
        DEMO_IMAGES.mkdir(parents=True, exist_ok=True)
        for n in range(1, 5):
            shutil.copyfile(
                args.out / "images" / "val" / f"val_{n - 1:05d}.jpg",
                DEMO_IMAGES / f"shapes_{n}.jpg",
            )
    print(f"wrote {args.train} train + {args.val} val images to {args.out}")


if __name__ == "__main__":
    main()
