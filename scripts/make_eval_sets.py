"""Write the demo evaluation sets under ``cvdeploy/demo/eval/`` (deterministic, no download).

* ``digits/``: an ImageFolder (class folders ``0`` .. ``9``, the classifier's labels) of the
  held-out 20 % of scikit-learn's ``load_digits``: the same stratified split (seed 0) and the
  same 32x32 RGB bilinear upsampling as ``make_digits_classifier.py``, which trained on the
  other 80 %. Reimplemented here so this script needs no torch.
* ``shapes/``: a YOLO set of the first 50 val images of ``make_shapes_dataset.py`` (default
  seed), whose generator for the val split is separate from the train split the demo detector
  was trained on, with ``data.yaml`` (``path: .``, ``val: images/val``).

    .venv/bin/python scripts/make_eval_sets.py [--out cvdeploy/demo/eval]

Needs numpy, Pillow and scikit-learn.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
DIGITS_SIZE = 32
DIGITS_SEED = 0  # make_digits_classifier.py's default --seed
DIGITS_BUDGET = 600_000  # bytes; above it, keep 20 images per class
SHAPES_VAL = 50
SHAPES_SEED = 0  # make_shapes_dataset.py's default --seed


def to_uint8(digit: np.ndarray) -> np.ndarray:
    """8x8 values 0-16 -> 8x8 uint8 0-255 (as make_digits_classifier.to_uint8)."""
    return np.round(digit * (255.0 / 16.0)).astype(np.uint8)


def upsample(digit: np.ndarray) -> np.ndarray:
    """8x8 digit -> 32x32x3 uint8 RGB, bilinear (as make_digits_classifier.upsample)."""
    img = Image.fromarray(to_uint8(digit), mode="L").resize(
        (DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR
    )
    return np.asarray(img.convert("RGB"))


def write_digits(out: Path) -> None:
    digits = load_digits()
    _, idx_test = train_test_split(
        np.arange(len(digits.target)),
        test_size=0.2,
        random_state=DIGITS_SEED,
        stratify=digits.target,
    )
    if out.exists():
        shutil.rmtree(out)
    written: list[tuple[int, Path]] = []
    counts = dict.fromkeys(range(10), 0)
    for position, i in enumerate(idx_test):
        label = int(digits.target[i])
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        # Named by position in the held-out split, then by the index in load_digits.
        path = folder / f"{position:03d}_{int(i):04d}.png"
        Image.fromarray(upsample(digits.images[i])).save(path, optimize=True)
        written.append((label, path))
        counts[label] += 1
    total = sum(p.stat().st_size for _, p in written)
    if total > DIGITS_BUDGET:
        kept = dict.fromkeys(range(10), 0)
        for label, path in written:
            kept[label] += 1
            if kept[label] > 20:
                path.unlink()
        print(f"digits: {total} bytes is over budget; kept 20 per class")
    files = sorted(out.rglob("*.png"))
    size = sum(p.stat().st_size for p in files)
    print(f"digits: {len(files)} images, {size} bytes, per class {counts}")


def _shapes_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_shapes_dataset", SCRIPTS / "make_shapes_dataset.py"
    )
    if spec is None or spec.loader is None:
        raise SystemExit("cannot import scripts/make_shapes_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass needs the module registered
    spec.loader.exec_module(module)
    return module


def write_shapes(out: Path) -> None:
    shapes = _shapes_module()
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The val split's own generator, as make_shapes_dataset.main seeds it: each image draws
        # from it in turn, so the first 50 of a 50-image run are the first 50 of the 200.
        rng = np.random.default_rng([SHAPES_SEED, 1])
        shapes.write_split(rng, work, "val", SHAPES_VAL)
        for kind in ("images", "labels"):
            shutil.copytree(work / kind / "val", out / kind / "val")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(shapes.NAMES))
    (out / "data.yaml").write_text(
        "# 50 held-out val images of scripts/make_shapes_dataset.py (seed 0); "
        "written by scripts/make_eval_sets.py\n"
        f"path: .\nval: images/val\nnames:\n{names}\n"
    )
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"shapes: {len(files)} files ({SHAPES_VAL} images + labels + data.yaml), {size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the demo evaluation sets.")
    parser.add_argument("--out", type=Path, default=ROOT / "cvdeploy" / "demo" / "eval")
    args = parser.parse_args()
    write_digits(args.out / "digits")
    write_shapes(args.out / "shapes")


if __name__ == "__main__":
    main()
