"""Which detector output layout a model has, decided once at load time.

Layouts (``b`` batch, ``nc`` classes, ``N`` anchors, ``k`` kept detections):

==============  ===========================================  =================================
name            outputs                                      from
==============  ===========================================  =================================
``v8``          one ``[b, 4+nc, N]``: cx, cy, w, h, scores    Ultralytics YOLOv8/v9/v11
``v8t``         one ``[b, N, 4+nc]`` (the transpose)          re-exported / TensorRT-friendly v8
``v5``          one ``[b, N, 5+nc]``: cx, cy, w, h, obj, cls  YOLOv5/v7, YOLOX (decoded)
``end2end``     one ``[b, k, 6]``: x1, y1, x2, y2, score, id  ``nms=True``, YOLOv10, YOLO26
``end2end4``    ``num [b,1]``, ``boxes [b,k,4]``,             TensorRT EfficientNMS-style
                ``scores [b,k]``, ``classes [b,k]``
==============  ===========================================  =================================

The rule, first match wins:

1. ``output_layout`` given to ``load_model`` (``v8``, ``v5``, ``end2end``; ``v8`` picks the
   orientation from the shape).
2. Three or more outputs, one of them ``[b, k, 4]``: ``end2end4``.
3. Ultralytics metadata saying the graph holds NMS (``args`` with ``nms: True``, or
   ``end2end: True``) and a last dim of 6: ``end2end``.
4. The number of classes is known (labels argument or metadata ``names``):
   ``d1 == 4+nc`` -> ``v8``; ``d2 == 4+nc`` -> ``v8t``; ``d2 == 5+nc`` -> ``v5``;
   ``d2 == 6`` -> ``end2end``; otherwise the labels do not fit and loading fails.
5. Otherwise, by shape: ``d1 < d2`` -> ``v8``. With ``S`` the anchor count of strides
   8/16/32 at the input size: ``d1 == S`` -> ``v8t``; ``d1 == 3*S`` -> ``v5`` (three anchors
   per cell); else ``d2 == 6`` -> ``end2end``; else ``v5``.

Ultralytics models (metadata ``version``) never emit ``v8t`` or ``v5``, so rule 4 is narrowed to
``v8`` or ``end2end`` for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cvdeploy.errors import ConfigError, ModelLoadError
from cvdeploy.runtime.metadata import parse_literal

__all__ = ["DetectionHead", "HeadLayout", "OutputInfo", "resolve_head"]

HeadLayout = Literal["v8", "v8t", "v5", "end2end", "end2end4"]

_REQUEST_ALIASES: dict[str, str] = {
    "v8": "v8",
    "yolov8": "v8",
    "v11": "v8",
    "yolo11": "v8",
    "ultralytics": "v8",
    "v5": "v5",
    "yolov5": "v5",
    "end2end": "end2end",
    "e2e": "end2end",
    "nms": "end2end",
}


@dataclass(frozen=True, slots=True)
class OutputInfo:
    name: str
    shape: tuple[int, ...]  # as observed on a batch-1 run
    dtype: str  # numpy dtype name


@dataclass(frozen=True, slots=True)
class DetectionHead:
    """The resolved layout; for ``end2end4`` the indices of the four outputs."""

    layout: HeadLayout
    num_classes: int | None  # None for end2end layouts, which carry class ids
    count_index: int = -1
    boxes_index: int = 0
    scores_index: int = -1
    classes_index: int = -1


def resolve_head(
    outputs: Sequence[OutputInfo],
    metadata: Mapping[str, str],
    num_classes: int | None,
    input_size: tuple[int, int],
    requested: str | None = None,
) -> DetectionHead:
    """Apply the rule in this module's docstring.

    Raises:
        ConfigError: ``requested`` is not a known layout name.
        ModelLoadError: the outputs fit no layout, or not the requested one / the labels.
    """
    layout = _normalise_request(requested)
    multi = _find_multi(outputs)
    if layout == "end2end" and multi is not None:
        return multi
    if layout is None and multi is not None:
        return multi
    first = outputs[0]
    if len(first.shape) != 3:
        raise ModelLoadError(
            f"detector output {first.name!r} has shape {list(first.shape)}; expected a 3-D "
            "[batch, a, b] tensor (YOLOv5/v8 or end-to-end) or the 4 outputs of an NMS graph"
        )
    _, d1, d2 = first.shape
    if layout is not None:
        return _requested(layout, first, num_classes)
    ultralytics = "version" in metadata and "names" in metadata
    if d2 == 6 and _metadata_says_nms(metadata):
        return DetectionHead("end2end", None)
    if num_classes is not None:
        return _by_classes(first, num_classes, ultralytics)
    if d1 < d2 and d1 > 4:
        return DetectionHead("v8", d1 - 4)
    anchors = _anchor_count(input_size)
    if d1 == anchors and d2 > 4:
        return DetectionHead("v8t", d2 - 4)
    if d1 == 3 * anchors and d2 > 5:
        return DetectionHead("v5", d2 - 5)
    if d2 == 6:
        return DetectionHead("end2end", None)
    if d2 > 5:
        return DetectionHead("v5", d2 - 5)
    raise ModelLoadError(
        f"cannot tell the layout of detector output {first.name!r} {list(first.shape)}; "
        "pass output_layout='v8', 'v5' or 'end2end' to load_model"
    )


def _normalise_request(requested: str | None) -> str | None:
    if requested is None:
        return None
    layout = _REQUEST_ALIASES.get(requested.strip().lower())
    if layout is None:
        raise ConfigError(f"unknown output_layout {requested!r}; use one of 'v8', 'v5', 'end2end'")
    return layout


def _requested(layout: str, first: OutputInfo, num_classes: int | None) -> DetectionHead:
    _, d1, d2 = first.shape
    shape = list(first.shape)
    if layout == "end2end":
        if d2 != 6:
            raise ModelLoadError(
                f"output_layout='end2end' needs a [batch, k, 6] output; {first.name!r} is {shape}"
            )
        return DetectionHead("end2end", None)
    if layout == "v5":
        if d2 < 6 or (num_classes is not None and d2 != 5 + num_classes):
            raise ModelLoadError(
                f"output_layout='v5' needs a [batch, anchors, 5+classes] output; "
                f"{first.name!r} is {shape}" + _classes_hint(num_classes)
            )
        return DetectionHead("v5", d2 - 5)
    if num_classes is not None:
        if d1 == 4 + num_classes:
            return DetectionHead("v8", num_classes)
        if d2 == 4 + num_classes:
            return DetectionHead("v8t", num_classes)
        raise ModelLoadError(
            f"output_layout='v8' needs a [batch, 4+classes, anchors] output; "
            f"{first.name!r} is {shape}" + _classes_hint(num_classes)
        )
    if min(d1, d2) < 5:
        raise ModelLoadError(f"output_layout='v8' does not fit output {first.name!r} {shape}")
    return DetectionHead("v8", d1 - 4) if d1 <= d2 else DetectionHead("v8t", d2 - 4)


def _by_classes(first: OutputInfo, num_classes: int, ultralytics: bool) -> DetectionHead:
    _, d1, d2 = first.shape
    if d1 == 4 + num_classes:
        return DetectionHead("v8", num_classes)
    if not ultralytics:
        if d2 == 4 + num_classes:
            return DetectionHead("v8t", num_classes)
        if d2 == 5 + num_classes:
            return DetectionHead("v5", num_classes)
    if d2 == 6:
        return DetectionHead("end2end", None)
    raise ModelLoadError(
        f"detector output {first.name!r} {list(first.shape)} does not fit {num_classes} "
        f"classes (expected [batch, {4 + num_classes}, anchors], [batch, anchors, "
        f"{4 + num_classes}], [batch, anchors, {5 + num_classes}] or [batch, k, 6]); check the "
        "labels, or pass output_layout"
    )


def _classes_hint(num_classes: int | None) -> str:
    return "" if num_classes is None else f" with {num_classes} classes from the labels"


def _find_multi(outputs: Sequence[OutputInfo]) -> DetectionHead | None:
    """The EfficientNMS-style four outputs, matched by shape, then name, then position."""
    if len(outputs) < 3:
        return None
    boxes = [i for i, o in enumerate(outputs) if len(o.shape) == 3 and o.shape[2] == 4]
    if len(boxes) != 1:
        return None
    k = outputs[boxes[0]].shape[1]
    per_det = [i for i, o in enumerate(outputs) if len(o.shape) == 2 and o.shape[1] == k]
    counts = [
        i
        for i, o in enumerate(outputs)
        if i not in per_det and (o.shape[1:] in ((), (1,))) and len(o.shape) <= 2
    ]
    if len(per_det) < 2:
        return None
    scores = _pick(outputs, per_det, ("score", "conf"), want_float=True)
    classes = _pick(
        outputs, [i for i in per_det if i != scores], ("class", "label", "cls"), want_float=False
    )
    return DetectionHead(
        "end2end4",
        None,
        count_index=counts[0] if counts else -1,
        boxes_index=boxes[0],
        scores_index=scores,
        classes_index=classes,
    )


def _pick(
    outputs: Sequence[OutputInfo], candidates: list[int], words: tuple[str, ...], want_float: bool
) -> int:
    for i in candidates:
        if any(word in outputs[i].name.lower() for word in words):
            return i
    for i in candidates:
        if outputs[i].dtype.startswith("float") == want_float:
            return i
    return candidates[0]


def _metadata_says_nms(metadata: Mapping[str, str]) -> bool:
    if str(metadata.get("end2end", "")).strip().lower() == "true":
        return True
    args = parse_literal(metadata.get("args", ""))
    return isinstance(args, dict) and bool(args.get("nms"))


def _anchor_count(input_size: tuple[int, int]) -> int:
    height, width = input_size
    return sum(math.ceil(height / s) * math.ceil(width / s) for s in (8, 16, 32))
