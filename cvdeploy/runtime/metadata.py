"""Reading what a model file says about itself, and labels files, without ever calling eval.

Ultralytics writes its metadata as ``str()`` of Python objects (``"{0: 'person', ...}"``,
``"[640, 640]"``); other exporters write JSON. :func:`parse_literal` accepts both through
``ast.literal_eval`` (literals only: no names, calls or attribute access) and JSON.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cvdeploy.errors import ConfigError, ModelLoadError

__all__ = [
    "load_labels",
    "metadata_imgsz",
    "metadata_names",
    "normalise_labels",
    "parse_literal",
    "resolve_task_name",
]

_MAX_LITERAL_CHARS: Final = 1_000_000  # literal_eval on huge input can exhaust the C stack

_TASK_ALIASES: Final = {
    "yolo": "detection",
    "detect": "detection",
    "detection": "detection",
    "detector": "detection",
    "classify": "classification",
    "classification": "classification",
    "classifier": "classification",
}
_UNSUPPORTED_TASKS: Final = {
    "segment": "instance segmentation",
    "segmentation": "instance segmentation",
    "pose": "pose estimation",
    "obb": "oriented bounding boxes",
    "semantic": "semantic segmentation",
}


def parse_literal(text: str) -> object:
    """A Python or JSON literal from metadata text; None when it is neither."""
    text = text.strip()
    if not text or len(text) > _MAX_LITERAL_CHARS:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)  # true/false/null are JSON, not Python
    except ValueError:
        return None


def resolve_task_name(explicit: str | None, metadata: Mapping[str, str]) -> str | None:
    """``detection`` / ``classification`` from the argument, else metadata; None = infer.

    Raises:
        ConfigError: the argument names no task we know.
        ModelLoadError: the argument or metadata names a task cvdeploy does not serve.
    """
    if explicit is not None:
        key = explicit.strip().lower()
        if key in _TASK_ALIASES:
            return _TASK_ALIASES[key]
        if key in _UNSUPPORTED_TASKS:
            raise ModelLoadError(f"{_UNSUPPORTED_TASKS[key]} models are not supported yet")
        raise ConfigError(
            f"unknown task {explicit!r}; use 'detection' (or 'yolo', 'detect') or "
            "'classification' (or 'classify', 'classifier')"
        )
    found = metadata.get("task", "").strip().lower()
    if found in _UNSUPPORTED_TASKS:
        raise ModelLoadError(
            f"the model's metadata says task={found!r}: {_UNSUPPORTED_TASKS[found]} models are "
            "not supported yet; cvdeploy serves detection and classification models"
        )
    return _TASK_ALIASES.get(found)


def metadata_names(metadata: Mapping[str, str]) -> list[str] | None:
    """Class names from ``names`` (Ultralytics dict repr, a list, or JSON), else None."""
    for key in ("names", "labels", "classes", "cvdeploy.labels"):
        if key in metadata:
            try:
                return normalise_labels(parse_literal(metadata[key]), source=f"metadata {key!r}")
            except ModelLoadError:
                continue  # a malformed optional key must not stop the model from loading
    return None


def metadata_imgsz(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    value = parse_literal(metadata.get("imgsz", ""))
    if isinstance(value, int) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def load_labels(source: str | Path) -> list[str]:
    """Class names from a file: ``.txt`` (one per line), ``.json`` or ``.yaml``/``.yml``.

    JSON and YAML may hold a list, an ``{id: name}`` mapping, or a mapping with a ``names`` key
    (an Ultralytics ``data.yaml`` works as is).

    Raises:
        ModelLoadError: missing, unreadable or malformed file.
    """
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ModelLoadError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc}") from None
    suffix = path.suffix.lower()
    data: object
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelLoadError(f"labels file {path} is not valid JSON: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ModelLoadError(f"labels file {path} is not valid YAML: {exc}") from None
    else:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    return normalise_labels(data, source=f"labels file {path}")


def normalise_labels(data: object, source: str = "labels") -> list[str]:
    """A list of names from a list or an ``{id: name}`` mapping (gaps named ``class_<i>``).

    Raises:
        ModelLoadError: anything else, naming ``source``.
    """
    if isinstance(data, Mapping) and "names" in data:
        data = data["names"]
    if isinstance(data, (list, tuple)):
        names = [str(item) for item in data]
    elif isinstance(data, Mapping):
        try:
            by_id = {int(key): str(value) for key, value in data.items()}
        except (TypeError, ValueError):
            raise ModelLoadError(
                f"{source}: a mapping of labels needs integer class ids as keys"
            ) from None
        if not by_id or min(by_id) < 0:
            raise ModelLoadError(f"{source}: class ids must be integers >= 0")
        names = [by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1)]
    else:
        raise ModelLoadError(
            f"{source}: expected a list of names or an {{id: name}} mapping, "
            f"got {type(data).__name__}"
        )
    if not names:
        raise ModelLoadError(f"{source}: no class names found")
    return names
