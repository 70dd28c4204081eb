"""Detect the layout at the path the user gives and load it.

The order of the tests is the decision: a ``.json`` file is COCO, a ``.yaml``/``.yml`` file or a
folder with ``data.yaml``/``dataset.yaml`` (or ``images/`` + ``labels/``) is YOLO, a folder with
only ``images/`` is refused (an ImageFolder with a single class called "images" is far less
likely than a COCO folder given instead of its JSON), and any other folder with subfolders is an
ImageFolder.
"""

from __future__ import annotations

from pathlib import Path

from cvdeploy.pipeline.datasets.base import EvalDataError, EvalDataset, Task
from cvdeploy.pipeline.datasets.coco import load_coco
from cvdeploy.pipeline.datasets.imagefolder import class_dirs, load_imagefolder
from cvdeploy.pipeline.datasets.yolo import YAML_NAMES, load_yolo_yaml

__all__ = ["load_eval_data"]

# Ultralytics' spellings too, since model metadata carries them.
_TASKS = {
    "classification": "classification",
    "classify": "classification",
    "detection": "detection",
    "detect": "detection",
}
_ACCEPTED = (
    "accepted layouts: an ImageFolder directory (one subfolder of images per class), a YOLO "
    "dataset YAML or a directory with data.yaml/dataset.yaml and images/ + labels/, or a COCO "
    "JSON file with images, annotations and categories"
)


def load_eval_data(
    path: str | Path, task: str | None = None, *, max_images: int | None = None
) -> EvalDataset:
    """Load an evaluation set, detecting its layout from what is at ``path``.

    Args:
        path: an ImageFolder directory, a YOLO YAML or directory, or a COCO JSON file.
        task: ``"classification"`` or ``"detection"``, when the caller knows the model's task;
            it must match the layout found.
        max_images: keep only N images: the first in sorted order, or for an ImageFolder the
            first of each class in turn, so every class stays in (deterministic either way).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise EvalDataError(f"evaluation data {source} does not exist; {_ACCEPTED}")
    source = source.resolve()
    wanted = _check_task(task)
    if max_images is not None and max_images < 1:
        raise EvalDataError(f"max_images must be at least 1, got {max_images}")
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".json":
            _match_task(wanted, "detection", "a COCO JSON", source)
            return load_coco(source, max_images)
        if suffix in (".yaml", ".yml"):
            _match_task(wanted, "detection", "a YOLO dataset YAML", source)
            return load_yolo_yaml(source, source, max_images)
        raise EvalDataError(f"{source} is not a directory, .yaml or .json file; {_ACCEPTED}")
    yaml_file = next((source / n for n in YAML_NAMES if (source / n).is_file()), None)
    if yaml_file is not None or ((source / "images").is_dir() and (source / "labels").is_dir()):
        _match_task(wanted, "detection", "a YOLO dataset directory", source)
        if yaml_file is None:
            raise EvalDataError(
                f"{source} has images/ and labels/ but no data.yaml or dataset.yaml; add one "
                "with the class names (names: [a, b, ...])"
            )
        return load_yolo_yaml(yaml_file, source, max_images)
    if (source / "images").is_dir():
        # An ImageFolder with a single class called "images" is far less likely than a COCO
        # folder given instead of its JSON; loading it as one class would score nonsense.
        raise EvalDataError(
            f"{source} has an images/ folder but no labels/ and no data.yaml: for COCO pass the "
            f"annotation JSON file itself, for YOLO add labels/ and data.yaml; {_ACCEPTED}"
        )
    classes = class_dirs(source)
    if classes:
        _match_task(wanted, "classification", "an ImageFolder directory", source)
        return load_imagefolder(source, classes, max_images)
    raise EvalDataError(f"{source} has no recognisable evaluation layout; {_ACCEPTED}")


def _check_task(task: str | None) -> Task | None:
    if task is None:
        return None
    if task not in _TASKS:
        raise EvalDataError(f"task must be 'classification' or 'detection', got {task!r}")
    return "classification" if _TASKS[task] == "classification" else "detection"


def _match_task(wanted: Task | None, found: Task, layout: str, source: Path) -> None:
    if wanted is not None and wanted != found:
        raise EvalDataError(
            f"{source} is {layout}, which holds {found} data, but the model's task is {wanted}; "
            f"give {'an ImageFolder' if wanted == 'classification' else 'a YOLO or COCO'} "
            "evaluation set instead"
        )
