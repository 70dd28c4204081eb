"""ImageFolder (classification), torchvision's convention.

One subfolder per class, class index = position of the folder name in sorted order. Images in
deeper folders count for the class folder they sit in (torchvision walks recursively too); names
starting with ``.`` are skipped (``.ipynb_checkpoints``, ``.DS_Store``), and loose files beside
the class folders are ignored. Empty class folders are kept (the class exists, it just has no
sample). Symlinked folders are followed, but never into a cycle or twice (see
:func:`~cvdeploy.pipeline.datasets.base.walk_images`). A folder with an ``images/`` subfolder is
refused rather than read as one class called "images" (see
:mod:`cvdeploy.pipeline.datasets.loader`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from cvdeploy.pipeline.datasets.base import (
    IMAGE_SUFFIXES,
    ClassificationSample,
    EvalDataError,
    EvalDataset,
    content_hash,
    relative_name,
    walk_images,
)

__all__ = ["class_dirs", "load_imagefolder"]


def class_dirs(root: Path) -> list[str]:
    """The class folder names under ``root``, sorted (hidden names skipped)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_imagefolder(root: Path, classes: list[str], max_images: int | None) -> EvalDataset:
    """Load the images of each class folder in ``classes``; the label is the list position."""
    samples = [
        ClassificationSample(image, label)
        for label, name in enumerate(classes)
        for image in walk_images(root / name)
    ]
    if not samples:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise EvalDataError(
            f"{root} has class folders ({shown}) but no image in any of them; images must end "
            f"in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    samples = _balanced(samples, max_images)
    # The class list is hashed too: an added empty class folder shifts every later index.
    digest = content_hash(((relative_name(s.path, root), s.path) for s in samples), classes=classes)
    return EvalDataset("classification", "imagefolder", root, classes, samples, digest)


def _balanced(
    samples: list[ClassificationSample], max_images: int | None
) -> list[ClassificationSample]:
    """The first ``max_images`` taken from each class in turn (still deterministic): the first
    N in sorted order would fill whole classes and leave the rest out of the metrics."""
    if max_images is None or max_images >= len(samples):
        return samples
    by_class: dict[int, list[ClassificationSample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    kept: list[ClassificationSample] = []
    for row in itertools.zip_longest(*by_class.values()):
        kept.extend(s for s in row if s is not None)
    kept = kept[:max_images]
    # Back in sorted order, as without a limit.
    order = {id(s): i for i, s in enumerate(samples)}
    return sorted(kept, key=lambda s: order[id(s)])
