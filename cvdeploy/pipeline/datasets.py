"""Load the labelled images the evaluation stage scores a model on.

Three layouts are read, detected from what is at the path the user gives:

* **ImageFolder** (classification), torchvision's convention: one subfolder per class, class
  index = position of the folder name in sorted order. Images in deeper folders count for the
  class folder they sit in (torchvision walks recursively too); names starting with ``.`` are
  skipped (``.ipynb_checkpoints``, ``.DS_Store``), and loose files beside the class folders are
  ignored. Empty class folders are kept (the class exists, it just has no sample). A folder
  with an ``images/`` subfolder is refused rather than read as one class called "images".
* **YOLO** (detection), Ultralytics' convention: a dataset YAML (``path``, ``val`` or ``test``,
  ``names``), or a folder holding ``data.yaml``/``dataset.yaml`` (used as the YAML; when it has
  no ``val``/``test`` key, ``images/val`` or else ``images`` beside it is read). The label of
  ``.../images/x.jpg`` is ``.../labels/x.txt``. A missing label file is an error, an empty one
  an explicit background image: a forgotten label would otherwise silently count every
  detection on that image as a false positive. Segment lines (class then an even number of at
  least six coordinates) are accepted as the box around the polygon, as Ultralytics does.
* **COCO JSON** (detection): ``images``/``annotations``/``categories``; ``iscrowd`` annotations
  are skipped (COCO's own evaluation ignores detections matched to them, which a plain box list
  cannot express) and counted in :meth:`EvalDataset.describe`.

Every problem is an :class:`EvalDataError` naming the file (and line) and what is wrong, found
before any inference runs. Image sizes come from the file header (no decode) with the EXIF
orientation applied, because the server applies it before the model sees the pixels.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

from cvdeploy.errors import ConfigError

__all__ = [
    "IMAGE_SUFFIXES",
    "ClassificationSample",
    "DetectionSample",
    "EvalDataError",
    "EvalDataset",
    "content_hash",
    "load_eval_data",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
YAML_NAMES = ("data.yaml", "dataset.yaml")
# Label files are written with 6 decimals by most tools; a box a hair past the edge is rounding.
COORD_TOLERANCE = 1e-3
_EXIF_ORIENTATION = 0x0112
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

Task = Literal["classification", "detection"]
Format = Literal["imagefolder", "yolo", "coco"]


class EvalDataError(ConfigError):
    """The evaluation data is missing or malformed; the message names the file and the fault."""


@dataclass(frozen=True)
class ClassificationSample:
    path: Path
    label: int


@dataclass(frozen=True, eq=False)
class DetectionSample:
    """One image's ground truth: ``boxes`` ``(n, 4)`` float64 xyxy in original-image pixels."""

    path: Path
    boxes: np.ndarray
    classes: np.ndarray  # (n,) int64
    width: int
    height: int


@dataclass
class EvalDataset:
    """A loaded evaluation set; ``names[i]`` is the class the samples call ``i``.

    ``sha256`` covers every image and label/annotation file used (after ``max_images``), keyed
    by its path relative to the dataset root: renaming, editing or adding a file changes it,
    moving the whole folder does not. ``skipped_crowd`` counts COCO ``iscrowd`` annotations.
    """

    task: Task
    format: Format
    source: Path
    names: list[str]
    samples: list[ClassificationSample] | list[DetectionSample]
    sha256: str
    skipped_crowd: int = 0
    background: int = 0

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``ImageFolder of 360 images in 10 classes``."""
        images, classes = _count(len(self.samples), "image"), _count(len(self.names), "class")
        if self.format == "imagefolder":
            return f"ImageFolder of {images} in {classes}"
        boxes = sum(len(s.boxes) for s in self.samples if isinstance(s, DetectionSample))
        kind = "YOLO set" if self.format == "yolo" else "COCO JSON"
        text = f"{kind} of {images}, {_count(boxes, 'box')} in {classes}"
        extras = []
        if self.background:
            extras.append(f"{_count(self.background, 'background image')}")
        if self.skipped_crowd:
            extras.append(f"{_count(self.skipped_crowd, 'crowd annotation')} skipped")
        return text + (f" ({', '.join(extras)})" if extras else "")


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith(("s", "x")) else "s")
    return f"{n} {noun if n == 1 else plural}"


def content_hash(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over ``(relative name, file bytes)`` pairs sorted by name.

    Each name and each content is preceded by its length (8 bytes, big-endian), so no two
    different sets of files can produce the same byte stream.
    """
    digest = hashlib.sha256()
    for name, path in sorted(files, key=lambda item: item[0]):
        encoded = name.encode("utf-8")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EvalDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


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
            return _load_coco(source, max_images)
        if suffix in (".yaml", ".yml"):
            _match_task(wanted, "detection", "a YOLO dataset YAML", source)
            return _load_yolo_yaml(source, source, max_images)
        raise EvalDataError(f"{source} is not a directory, .yaml or .json file; {_ACCEPTED}")
    yaml_file = next((source / n for n in YAML_NAMES if (source / n).is_file()), None)
    if yaml_file is not None or ((source / "images").is_dir() and (source / "labels").is_dir()):
        _match_task(wanted, "detection", "a YOLO dataset directory", source)
        if yaml_file is None:
            raise EvalDataError(
                f"{source} has images/ and labels/ but no data.yaml or dataset.yaml; add one "
                "with the class names (names: [a, b, ...])"
            )
        return _load_yolo_yaml(yaml_file, source, max_images)
    if (source / "images").is_dir():
        # An ImageFolder with a single class called "images" is far less likely than a COCO
        # folder given instead of its JSON; loading it as one class would score nonsense.
        raise EvalDataError(
            f"{source} has an images/ folder but no labels/ and no data.yaml: for COCO pass the "
            f"annotation JSON file itself, for YOLO add labels/ and data.yaml; {_ACCEPTED}"
        )
    classes = _class_dirs(source)
    if classes:
        _match_task(wanted, "classification", "an ImageFolder directory", source)
        return _load_imagefolder(source, classes, max_images)
    raise EvalDataError(f"{source} has no recognisable evaluation layout; {_ACCEPTED}")


# --- shared helpers ----------------------------------------------------------------------------


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


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, hidden names skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if _is_image(Path(f)))
    return sorted(found)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the server will see it: header only, EXIF orientation applied."""
    width, height, transposed = _header(path)
    return (height, width) if transposed else (width, height)


def _header(path: Path) -> tuple[int, int, bool]:
    """Stored (width, height) and whether the EXIF orientation turns it by 90 degrees."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # malformed EXIF: the server ignores it too
                orientation = 1
    except OSError as exc:
        raise EvalDataError(f"{path} is not a readable image: {exc}") from exc
    # Orientations 5-8 rotate by 90 degrees, so the served image is transposed.
    return width, height, orientation in (5, 6, 7, 8)


def _limit(items: list[Any], max_images: int | None) -> list[Any]:
    return items if max_images is None else items[:max_images]


# --- ImageFolder -------------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_imagefolder(root: Path, classes: list[str], max_images: int | None) -> EvalDataset:
    samples = [
        ClassificationSample(image, label)
        for label, name in enumerate(classes)
        for image in _walk_images(root / name)
    ]
    if not samples:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise EvalDataError(
            f"{root} has class folders ({shown}) but no image in any of them; images must end "
            f"in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    samples = _balanced(samples, max_images)
    digest = content_hash((_relative(s.path, root), s.path) for s in samples)
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


# --- YOLO --------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EvalDataError(f"cannot read dataset YAML {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalDataError(f"dataset YAML {path} must be a mapping with path, val and names")
    return data


def _yolo_names(raw: Any, yaml_file: Path) -> list[str]:
    if isinstance(raw, list) and raw:
        return [str(n) for n in raw]
    if isinstance(raw, dict) and raw:
        try:
            by_id = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise EvalDataError(f"{yaml_file}: names keys must be class ids 0..n-1") from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise EvalDataError(
                f"{yaml_file}: names ids must be 0..{len(by_id) - 1} without gaps, got "
                f"{sorted(by_id)}"
            )
        return [by_id[i] for i in range(len(by_id))]
    raise EvalDataError(
        f"{yaml_file} needs names: as a list ([cat, dog]) or a mapping ({{0: cat, 1: dog}})"
    )


def _load_yolo_yaml(yaml_file: Path, source: Path, max_images: int | None) -> EvalDataset:
    data = _read_yaml(yaml_file)
    names = _yolo_names(data.get("names"), yaml_file)
    root = Path(str(data["path"])) if data.get("path") else Path(".")
    root = (yaml_file.parent / root).resolve()
    split = data.get("val") or data.get("test")
    if split is None:
        fallback = next((d for d in ("images/val", "images") if (root / d).is_dir()), None)
        if fallback is None:
            raise EvalDataError(
                f"{yaml_file} has no val: or test: key and {root} has no images/ folder; add "
                "val: images/val (a folder of images or a .txt list of image paths)"
            )
        split = fallback
    entries = split if isinstance(split, list) else [split]
    images: list[Path] = []
    files: list[Path] = [yaml_file]
    for entry in entries:
        target = root / str(entry)
        if target.is_dir():
            images.extend(_walk_images(target))
        elif target.is_file() and target.suffix.lower() == ".txt":
            images.extend(_read_image_list(target))
            files.append(target)
        else:
            raise EvalDataError(
                f"{yaml_file}: split {entry!r} resolves to {target}, which is neither a folder of "
                "images nor a .txt list of image paths"
            )
    images = sorted(set(images))
    if not images:
        raise EvalDataError(f"{yaml_file}: split {split!r} holds no images")
    images = _limit(images, max_images)
    samples: list[DetectionSample] = []
    for image in images:
        label = _label_path(image)
        samples.append(_read_yolo_label(image, label, len(names)))
        files.extend((image, label))
    digest = content_hash((_relative(f, root), f) for f in files)
    background = sum(1 for s in samples if len(s.boxes) == 0)
    return EvalDataset("detection", "yolo", source, names, samples, digest, background=background)


def _read_image_list(listing: Path) -> list[Path]:
    images = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        # Relative entries are relative to the list's folder (Ultralytics does so for "./x").
        image = (listing.parent / entry).resolve()
        if not image.is_file():
            raise EvalDataError(f"{listing}:{number}: image {entry} not found (looked at {image})")
        images.append(image)
    return images


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    text = str(image)
    marker = f"{os.sep}images{os.sep}"
    if marker not in text:
        raise EvalDataError(
            f"image {image} is not under an images/ folder, so its label file cannot be found; "
            "YOLO labels for .../images/x.jpg live in .../labels/x.txt"
        )
    head, tail = text.rsplit(marker, 1)
    return Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")


def _read_yolo_label(image: Path, label: Path, classes: int) -> DetectionSample:
    if not label.is_file():
        raise EvalDataError(
            f"image {image} has no label file (expected {label}); write an empty file there if "
            "the image has no objects"
        )
    width, height = _image_size(image)
    boxes: list[list[float]] = []
    ids: list[int] = []
    for number, line in enumerate(label.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{number}"
        cls, box = _parse_yolo_line(fields, classes, where)
        cx, cy, w, h = box
        x1, x2 = (cx - w / 2) * width, (cx + w / 2) * width
        y1, y2 = (cy - h / 2) * height, (cy + h / 2) * height
        boxes.append([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)])
        ids.append(cls)
    return DetectionSample(
        image,
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(ids, dtype=np.int64),
        width,
        height,
    )


def _parse_yolo_line(
    fields: Sequence[str], classes: int, where: str
) -> tuple[int, tuple[float, float, float, float]]:
    """One label line -> (class id, normalised cx, cy, w, h), or an error naming ``where``."""
    is_segment = len(fields) >= 7 and len(fields) % 2 == 1
    if len(fields) != 5 and not is_segment:
        raise EvalDataError(
            f"{where}: expected 5 fields 'class cx cy w h' (or a segment: class then x y pairs), "
            f"got {len(fields)}"
        )
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError as exc:
        raise EvalDataError(f"{where}: not a number ({exc})") from exc
    if not all(math.isfinite(v) for v in (cls_value, *values)):
        raise EvalDataError(f"{where}: values must be finite numbers")
    if cls_value != int(cls_value) or not 0 <= cls_value < classes:
        raise EvalDataError(
            f"{where}: class id {fields[0]} is not an integer in 0..{classes - 1} (the dataset "
            f"has {classes} names)"
        )
    if any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in values):
        raise EvalDataError(
            f"{where}: coordinates must be normalised to 0..1, got {' '.join(fields[1:])}"
        )
    values = [min(max(v, 0.0), 1.0) for v in values]
    if is_segment:
        xs, ys = values[0::2], values[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        box = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    else:
        box = (values[0], values[1], values[2], values[3])
    if box[2] <= 0 or box[3] <= 0:
        raise EvalDataError(
            f"{where}: box width and height must be positive, got {box[2]:g} x {box[3]:g}"
        )
    return int(cls_value), box


# --- COCO --------------------------------------------------------------------------------------


def _load_coco(json_file: Path, max_images: int | None) -> EvalDataset:
    try:
        data = json.loads(json_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise EvalDataError(f"cannot read COCO JSON {json_file}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise EvalDataError(
            f"{json_file} is not a COCO detection file: it needs lists images, annotations and "
            "categories"
        )
    root = json_file.parent
    names, index = _coco_categories(data["categories"], json_file)
    images = _coco_images(data["images"], json_file)
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    classes: dict[int, list[int]] = {i: [] for i in images}
    crowd = 0
    for ann in data["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"{json_file}: annotation id {ann_id}"
        if not isinstance(ann, dict):
            raise EvalDataError(f"{where}: not an object")
        if not isinstance(ann.get("image_id"), int | str) or ann["image_id"] not in images:
            raise EvalDataError(f"{where}: unknown image_id {ann.get('image_id')!r}")
        if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in index:
            raise EvalDataError(f"{where}: unknown category_id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise EvalDataError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise EvalDataError(f"{where}: bbox width and height must be positive, got {bbox}")
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
        classes[ann["image_id"]].append(index[ann["category_id"]])
    ordered = sorted(images.items(), key=lambda item: item[1][0])
    ordered = _limit(ordered, max_images)
    samples: list[DetectionSample] = []
    files: list[Path] = [json_file]
    for image_id, (file_name, declared) in ordered:
        path = _coco_file(root, file_name, json_file, image_id)
        width, height, transposed = _header(path)
        sizes = {(width, height), (height, width) if transposed else (width, height)}
        if declared is not None and declared not in sizes:
            raise EvalDataError(
                f"{json_file}: image id {image_id} ({file_name}) is declared {declared[0]}x"
                f"{declared[1]} but the file is {width}x{height}; the boxes would not line up"
            )
        # The declared size is what the boxes were drawn on (it differs from the served size
        # only for an EXIF-rotated file, where either may be meant).
        if declared is not None:
            width, height = declared
        elif transposed:
            width, height = height, width
        samples.append(
            DetectionSample(
                path,
                np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 4),
                np.asarray(classes[image_id], dtype=np.int64),
                width,
                height,
            )
        )
        files.append(path)
    digest = content_hash((_relative(f, root), f) for f in files)
    background = sum(1 for s in samples if len(s.boxes) == 0)
    return EvalDataset(
        "detection", "coco", json_file, names, samples, digest, crowd, background=background
    )


def _coco_categories(raw: list[Any], json_file: Path) -> tuple[list[str], dict[Any, int]]:
    by_id: dict[int, str] = {}
    for cat in raw:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise EvalDataError(f"{json_file}: category {cat!r} needs an integer id and a name")
        if cat["id"] in by_id:
            raise EvalDataError(f"{json_file}: category id {cat['id']} appears twice")
        by_id[cat["id"]] = str(cat["name"])
    if not by_id:
        raise EvalDataError(f"{json_file}: categories is empty; the model's classes must be listed")
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {cat_id: n for n, cat_id in enumerate(ids)}


def _coco_images(raw: list[Any], json_file: Path) -> dict[Any, tuple[str, tuple[int, int] | None]]:
    images: dict[Any, tuple[str, tuple[int, int] | None]] = {}
    for img in raw:
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("id"), int | str)
            or not img.get("file_name")
        ):
            raise EvalDataError(f"{json_file}: image entry {img!r} needs an id and a file_name")
        if img["id"] in images:
            raise EvalDataError(f"{json_file}: image id {img['id']} appears twice")
        w, h = img.get("width"), img.get("height")
        declared = (w, h) if isinstance(w, int) and isinstance(h, int) else None
        images[img["id"]] = (str(img["file_name"]), declared)
    if not images:
        raise EvalDataError(f"{json_file}: images is empty; there is nothing to evaluate")
    return images


def _coco_file(root: Path, file_name: str, json_file: Path, image_id: Any) -> Path:
    for candidate in (root / file_name, root / "images" / file_name):
        if candidate.is_file():
            return candidate
    raise EvalDataError(
        f"{json_file}: image id {image_id} file {file_name} not found (looked in {root} and "
        f"{root / 'images'})"
    )
