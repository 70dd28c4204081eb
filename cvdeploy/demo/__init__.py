"""The demo models and sample images shipped with cvdeploy (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

from cvdeploy.errors import ConfigError, ModelLoadError

__all__ = ["DEMO_DIR", "EVAL_SETS", "demo_file", "eval_set", "sample_images"]

DEMO_DIR = Path(__file__).resolve().parent

DETECTOR = "shapes_detector.onnx"
CLASSIFIER = "digits_classifier.onnx"
#: The bundled evaluation sets: name -> what ``cvdeploy.pipeline.datasets`` reads there.
EVAL_SETS = {
    "digits": "digits",  # ImageFolder, for digits_classifier.onnx
    "shapes": "shapes/data.yaml",  # YOLO dataset YAML, for shapes_detector.onnx
}


def demo_file(name: str) -> Path:
    """Path of a bundled demo file, or a clear error if this install lacks it."""
    path = DEMO_DIR / name
    if not path.is_file():
        raise ModelLoadError(
            f"demo file {name} is missing from {DEMO_DIR}; rebuild it with the scripts in "
            "the repository's scripts/ folder (see cvdeploy/demo/README.md)"
        )
    return path


def sample_images(pattern: str = "*") -> list[Path]:
    """Bundled sample images matching ``pattern`` (e.g. ``"shapes_*"``), sorted by name."""
    folder = DEMO_DIR / "images"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in (".jpg", ".png"))


def eval_set(name: str) -> Path:
    """Path of a bundled evaluation set ("digits" or "shapes") for ``load_eval_data``.

    ``digits`` is an ImageFolder directory, ``shapes`` a YOLO dataset YAML; both hold images
    the demo models were not trained on (see README.md).
    """
    if name not in EVAL_SETS:
        raise ConfigError(
            f"unknown demo evaluation set {name!r}; choose one of {', '.join(sorted(EVAL_SETS))}"
        )
    path = DEMO_DIR / "eval" / EVAL_SETS[name]
    if not path.exists():
        raise ModelLoadError(
            f"demo evaluation set {name} is missing from {DEMO_DIR / 'eval'}; rebuild it with "
            "scripts/make_eval_sets.py (see cvdeploy/demo/README.md)"
        )
    return path
