"""``load_model``: a file and a few options in, a :class:`Model` ready to serve out.

Everything that can be wrong with a model is found here, at start-up, rather than on the first
request: the file, the input, the task, the labels, the input size and the output layout (a
zero-input test run settles output shapes the graph leaves dynamic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cvdeploy.errors import ConfigError, InvalidParameterError, ModelLoadError
from cvdeploy.runtime.metadata import (
    load_labels,
    metadata_imgsz,
    metadata_names,
    normalise_labels,
    resolve_task_name,
)
from cvdeploy.runtime.model import Model
from cvdeploy.runtime.normalization import resolve_normalization
from cvdeploy.runtime.onnx import (
    InputSpec,
    create_session,
    file_sha256,
    image_input,
    output_shapes,
)
from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.preprocess import Preprocessor, round_up
from cvdeploy.runtime.providers import default_intra_op_threads, select_providers
from cvdeploy.runtime.tasks.base import Task
from cvdeploy.runtime.tasks.classify import ClassificationTask
from cvdeploy.runtime.tasks.detect import DetectionTask
from cvdeploy.runtime.tasks.layouts import OutputInfo, resolve_head

__all__ = ["load_model"]

_DEFAULT_STRIDE = 32


def load_model(
    path: str | Path,
    task: str | None = None,
    *,
    labels: Sequence[str] | str | Path | None = None,
    input_size: int | Sequence[int] | None = None,
    providers: str | Sequence[str] | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    intra_op_spinning: bool | str = "auto",
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    top_k: int = 5,
    normalization: Mapping[str, object] | None = None,
    warmup: bool = True,
    name: str | None = None,
    output_layout: str | None = None,
) -> Model:
    """Load an ONNX detector or classifier.

    Args:
        path: the ``.onnx`` file.
        task: ``detection`` (also ``yolo``, ``detect``) or ``classification`` (``classify``,
            ``classifier``); default: the metadata ``task``, else inferred from the outputs.
        labels: class names, or a ``.txt`` / ``.json`` / ``.yaml`` file of them; default: the
            metadata ``names``, else ``class_<i>``.
        input_size: ``int`` or ``(h, w)``; default: the input's static height/width, and
            metadata ``imgsz`` for dimensions the graph leaves dynamic. Detectors' dynamic
            dimensions are rounded up to the stride (metadata ``stride``, default 32).
        providers: ``"auto"``/None (TensorRT, CUDA when present, then CPU) or names.
        intra_op_threads: default :func:`default_intra_op_threads` (all usable cores).
        inter_op_threads: default 1 (the graph runs sequentially).
        intra_op_spinning: whether ONNX Runtime's worker threads spin between operators.
            Spinning saves a wake-up per operator (the lowest latency for a lone request) but
            burns a core while waiting, which starves decoding and HTTP under load. ``"auto"``
            (default) keeps two CPU sessions of a model up to 64 MB: a non-spinning one for
            batches and a spinning one for a lone image on an idle server
            (``Model.infer(..., latency=True)``); larger models, GPU providers and single-thread
            sessions get one non-spinning session.
        conf, iou, max_det, top_k: the default :class:`PredictParams`.
        normalization: preprocessing overrides, see :mod:`cvdeploy.runtime.normalization`.
        warmup: run zero batches now so the first request is not slow.
        name: default: the file stem.
        output_layout: detector layout override: ``v8``, ``v5`` or ``end2end``.

    Raises:
        ModelLoadError: the file or the model is unusable (the message says why).
        ConfigError: an argument is invalid.
    """
    model_path = Path(path).expanduser()
    try:
        default_params = PredictParams(conf=conf, iou=iou, max_det=max_det, top_k=top_k)
    except InvalidParameterError as exc:
        raise ConfigError(exc.message) from None
    chosen = select_providers(providers, ort.get_available_providers())
    intra = default_intra_op_threads() if intra_op_threads is None else intra_op_threads
    inter = 1 if inter_op_threads is None else inter_op_threads
    if intra < 1 or inter < 1:
        raise ConfigError("intra_op_threads and inter_op_threads must be >= 1")

    spinning, twin = _spinning_plan(intra_op_spinning, model_path, chosen, intra)
    session = create_session(model_path, chosen, intra, inter, spinning=spinning)
    latency_session = (
        create_session(model_path, chosen, intra, inter, spinning=True) if twin else None
    )
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    spec = image_input(session, model_path)
    task_name = resolve_task_name(task, metadata)
    user_labels = _user_labels(labels)
    stride = _stride(metadata)
    requested_size = _input_size(input_size, metadata, spec, model_path)
    # Detectors need stride multiples (their feature maps are concatenated); a classifier does
    # not, but probing at the aligned size is valid for both when the task is not known yet.
    aligned = _stride_aligned(requested_size, spec, stride)
    outputs = _observe_outputs(session, spec, aligned, model_path)
    if task_name is None:
        task_name = _infer_task(outputs, model_path)
    size = requested_size if task_name == "classification" else aligned
    norm = resolve_normalization(task_name, metadata, normalization, spec.channels)
    preprocessor = Preprocessor(
        input_size=size,
        layout=spec.layout,
        channels=spec.channels,
        dtype=spec.dtype,
        normalization=norm,
        stride=stride,
    )
    if norm.pad == "stride" and None not in spec.spatial:
        raise ConfigError("normalization pad='stride' needs a model with dynamic height/width")
    task_obj: Task
    if task_name == "classification":
        task_obj = ClassificationTask(
            preprocessor, _classifier_labels(outputs, user_labels, metadata, model_path)
        )
    else:
        task_obj = _detection_task(
            preprocessor, outputs, metadata, user_labels, size, output_layout
        )
    model = Model(
        path=model_path,
        name=name or model_path.stem,
        session=session,
        spec=spec,
        task=task_obj,
        metadata=metadata,
        sha256=file_sha256(model_path),
        default_params=default_params,
        latency_session=latency_session,
    )
    if warmup:
        model.warmup((spec.batch,) if spec.batch is not None else (1,))
    return model


#: Largest model file that gets a second, spinning session under ``intra_op_spinning="auto"``:
#: the per-operator wake-ups that spinning saves matter for small, fast models, and the weights
#: are held twice.
_TWIN_SESSION_MAX_BYTES = 64 * 2**20


def _spinning_plan(
    setting: bool | str, path: Path, providers: Sequence[str], intra_op_threads: int
) -> tuple[bool, bool]:
    """(spinning of the main session, whether to add a spinning latency twin)."""
    if isinstance(setting, bool):
        return setting, False
    if setting != "auto":
        raise ConfigError(f"intra_op_spinning must be true, false or 'auto', got {setting!r}")
    cpu_only = list(providers) == ["CPUExecutionProvider"]
    small = path.is_file() and path.stat().st_size <= _TWIN_SESSION_MAX_BYTES
    return False, cpu_only and small and intra_op_threads > 1


def _user_labels(labels: Sequence[str] | str | Path | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        return load_labels(labels)
    return normalise_labels(list(labels), source="labels argument")


def _stride(metadata: Mapping[str, str]) -> int:
    try:
        stride = int(str(metadata.get("stride", _DEFAULT_STRIDE)).strip())
    except ValueError:
        return _DEFAULT_STRIDE
    return stride if stride > 0 else _DEFAULT_STRIDE


def _input_size(
    requested: int | Sequence[int] | None,
    metadata: Mapping[str, str],
    spec: InputSpec,
    path: Path,
) -> tuple[int, int]:
    static_h, static_w = spec.spatial
    if requested is not None:
        size = _parse_size(requested)
        for got, fixed, axis in zip(size, (static_h, static_w), ("height", "width"), strict=True):
            if fixed is not None and got != fixed:
                raise ConfigError(
                    f"input_size {size} does not fit the model: its input {axis} is fixed at "
                    f"{fixed} (input {list(spec.shape)})"
                )
        return size
    from_meta = metadata_imgsz(metadata)
    height = static_h or (from_meta[0] if from_meta else None)
    width = static_w or (from_meta[1] if from_meta else None)
    if height is None or width is None:
        raise ModelLoadError(
            f"{path}: the input {list(spec.shape)} has a dynamic size and the model's metadata "
            "has no 'imgsz'; pass input_size (e.g. input_size=640)"
        )
    return height, width


def _parse_size(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair: tuple[Any, ...] = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ConfigError(f"input_size must be an int or (height, width), got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ConfigError(f"input_size must hold positive integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def _stride_aligned(size: tuple[int, int], spec: InputSpec, stride: int) -> tuple[int, int]:
    """Round dynamic dimensions up to a stride multiple, as Ultralytics' ``check_imgsz``."""
    static = spec.spatial
    return (
        size[0] if static[0] is not None else round_up(size[0], stride),
        size[1] if static[1] is not None else round_up(size[1], stride),
    )


def _observe_outputs(
    session: ort.InferenceSession, spec: InputSpec, size: tuple[int, int], path: Path
) -> list[OutputInfo]:
    """Output shapes for one image: declared when fully static, else from a zero-input run."""
    names = [o.name for o in session.get_outputs()]
    declared = output_shapes(session)
    if declared is not None:
        types = [o.type.removeprefix("tensor(").removesuffix(")") for o in session.get_outputs()]
        dtypes = ["float32" if t == "float" else t for t in types]
        return [OutputInfo(n, s, d) for n, s, d in zip(names, declared, dtypes, strict=True)]
    batch = spec.batch or 1
    height, width = size
    item = (
        (spec.channels, height, width) if spec.layout == "NCHW" else (height, width, spec.channels)
    )
    probe = np.zeros((batch, *item), dtype=spec.dtype)
    try:
        arrays = session.run(None, {spec.name: probe})
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: a test inference on a zero {list(probe.shape)} input failed: {exc}"
        ) from exc
    return [
        OutputInfo(n, (1, *np.asarray(a).shape[1:]), str(np.asarray(a).dtype))
        for n, a in zip(names, arrays, strict=True)
    ]


def _infer_task(outputs: Sequence[OutputInfo], path: Path) -> str:
    first = outputs[0].shape
    if len(outputs) == 1 and (len(first) == 2 or (len(first) == 4 and math.prod(first[2:]) == 1)):
        return "classification"
    if len(outputs) == 2 and len(outputs[1].shape) == 4:
        raise ModelLoadError(
            f"{path} looks like a segmentation model (a mask-prototype output); only detection "
            "and classification are supported"
        )
    return "detection"


def _classifier_labels(
    outputs: Sequence[OutputInfo],
    user: list[str] | None,
    metadata: Mapping[str, str],
    path: Path,
) -> list[str]:
    classes = math.prod(outputs[0].shape[1:])
    if user is not None:
        if len(user) != classes:
            raise ModelLoadError(
                f"{len(user)} labels were given but {path} outputs {classes} classes"
            )
        return user
    names = metadata_names(metadata)
    if names is not None and len(names) == classes:
        return names
    return [f"class_{i}" for i in range(classes)]


def _detection_task(
    preprocessor: Preprocessor,
    outputs: Sequence[OutputInfo],
    metadata: Mapping[str, str],
    user: list[str] | None,
    size: tuple[int, int],
    output_layout: str | None,
) -> DetectionTask:
    names = user if user is not None else metadata_names(metadata)
    try:
        head = resolve_head(
            outputs, metadata, None if names is None else len(names), size, output_layout
        )
    except ModelLoadError:
        if user is not None or names is None:
            raise
        # Metadata names that disagree with the graph: trust the graph, keep what names fit.
        head = resolve_head(outputs, metadata, None, size, output_layout)
    labels = names or []
    if head.num_classes is not None and len(labels) != head.num_classes:
        labels = [labels[i] if i < len(labels) else f"class_{i}" for i in range(head.num_classes)]
    return DetectionTask(preprocessor, labels, head)
