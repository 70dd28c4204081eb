"""The demo models and sample images shipped with cvdeploy (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

from cvdeploy.errors import ModelLoadError

__all__ = ["DEMO_DIR", "demo_file", "sample_images"]

DEMO_DIR = Path(__file__).resolve().parent

DETECTOR = "shapes_detector.onnx"
CLASSIFIER = "digits_classifier.onnx"


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
