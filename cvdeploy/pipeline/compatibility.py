"""Compatibility: does the model load and serve here, the way its card says it should?

Everything the server would find at start-up or on the first requests is found here instead:
the execution providers, the opset, a task or label list that does not match the outputs, an
input size that differs from the registered one, and a batch size the graph cannot take. The
batches go through the real ``preprocess`` / ``infer`` / ``postprocess`` path, so a model whose
outputs make no sense for its task fails here rather than in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import onnx

from cvdeploy.errors import CVDeployError
from cvdeploy.pipeline.stages import StageResult, timed_stage
from cvdeploy.runtime.loader import load_model
from cvdeploy.runtime.metadata import resolve_task_name
from cvdeploy.runtime.model import Model

__all__ = ["MIN_OPSET", "check_compatibility"]

#: The oldest default-domain opset ONNX Runtime still loads.
MIN_OPSET: Final = 7
# A bad model can fail postprocessing with these (outputs without a batch axis, wrong rank).
_MODEL_FAULTS: Final = (CVDeployError, IndexError, ValueError)


def check_compatibility(
    onnx_path: Path,
    *,
    task: str | None = None,
    labels: Sequence[str] | None = None,
    input_size: Sequence[int] | None = None,
    providers: Sequence[str] | None = None,
    max_batch_size: int = 8,
    intra_op_threads: int | None = None,
) -> StageResult:
    """Load the model as it will be served and run a batch of 1 and of ``max_batch_size``.

    Args:
        onnx_path: the ONNX file.
        task, labels, input_size: what the model card says (None: not checked).
        providers: execution providers, as :func:`cvdeploy.runtime.load_model` takes them.
        max_batch_size: the largest batch the server will send.
        intra_op_threads: threads of the test session (default: all usable cores).

    Returns:
        The ``compatibility`` stage: checks ``load``, ``opset``, ``task``, ``labels``,
        ``input_size``, ``batch_1``, ``batch_max``; figures ``opset``, ``max_batch_tested``.
    """
    with timed_stage("compatibility") as stage:
        path = Path(onnx_path)
        _check_opset(stage, path)
        model = _check_load_and_task(stage, path, task, providers, intra_op_threads)
        if model is None:
            for name in ("labels", "input_size", "batch_1", "batch_max"):
                stage.check(name, None, "not run: the model did not load")
            return stage
        _check_labels(stage, model, labels)
        _check_input_size(stage, model, input_size)
        _check_batches(stage, model, max_batch_size)
    return stage


def _load(
    path: Path, task: str | None, providers: Sequence[str] | None, threads: int | None
) -> Model | str:
    """The model, or the loader's message when it refuses it."""
    try:
        return load_model(
            path,
            task,
            providers=None if providers is None else list(providers),
            intra_op_threads=threads,
            intra_op_spinning=False,
            warmup=False,
        )
    except CVDeployError as exc:
        return exc.message


def _check_opset(stage: StageResult, path: Path) -> None:
    supported = onnx.defs.onnx_opset_version()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        stage.check("opset", False, f"{path.name} is not a readable ONNX file: {exc}")
        return
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        stage.check("opset", False, "the model imports no default-domain opset; re-export it")
        return
    stage.figures["opset"] = float(opset)
    bounds = f"supported: {MIN_OPSET} to {supported}, the installed onnx's newest"
    if opset < MIN_OPSET:
        stage.check(
            "opset",
            False,
            f"opset {opset} is too old for ONNX Runtime ({bounds}); re-export with a newer opset "
            "or convert it with onnx.version_converter",
            value=opset,
            threshold=[MIN_OPSET, supported],
        )
    elif opset > supported:
        stage.check(
            "opset",
            False,
            f"opset {opset} is newer than this install supports ({bounds}); upgrade "
            f"onnxruntime and onnx, or re-export with opset <= {supported}",
            value=opset,
            threshold=[MIN_OPSET, supported],
        )
    else:
        stage.check("opset", True, f"opset {opset} ({bounds})", opset, [MIN_OPSET, supported])


def _check_load_and_task(
    stage: StageResult,
    path: Path,
    task: str | None,
    providers: Sequence[str] | None,
    threads: int | None,
) -> Model | None:
    """Load as configured; compare the task with what the outputs themselves say."""
    wanted: str | None = None
    task_error: str | None = None
    if task is not None:
        try:
            wanted = resolve_task_name(task, {})
        except CVDeployError as exc:
            task_error = exc.message
    configured = _load(path, wanted, providers, threads)
    # Without a task the loader reads the metadata, else infers it from the outputs: that is
    # what the graph says it is, whatever the card claims.
    natural = configured if wanted is None else _load(path, None, providers, threads)
    model = configured if isinstance(configured, Model) else natural
    if not isinstance(model, Model):
        stage.check(
            "load",
            False,
            f"{path.name} does not load: {configured}",
            value=list(providers) if providers else "auto",
        )
        stage.check("task", None, "not run: the model did not load")
        return None
    stage.check("load", True, f"loaded on {', '.join(model.providers)}", value=model.providers)
    if task_error is not None:
        stage.check("task", False, task_error, value=model.task, threshold=task)
    elif wanted is None:
        stage.check("task", None, f"no task given; the model loads as {model.task!r}", model.task)
    elif isinstance(natural, Model) and natural.task != wanted:
        served = (
            f"loading it as {wanted!r} fails: {configured}"
            if isinstance(configured, str)
            else f"as {wanted!r} its results would be meaningless"
        )
        stage.check(
            "task",
            False,
            f"the outputs do not match the task: the model's outputs load as {natural.task!r}, "
            f"not {wanted!r} ({served}); fix the task in the model card or register the right "
            "model",
            value=natural.task,
            threshold=wanted,
        )
    elif isinstance(configured, str):
        stage.check(
            "task",
            False,
            f"the outputs do not match the task {wanted!r}: {configured}",
            value=None,
            threshold=wanted,
        )
    else:
        stage.check("task", True, f"the model is a {wanted} model", value=wanted, threshold=wanted)
    return model


def _check_labels(stage: StageResult, model: Model, labels: Sequence[str] | None) -> None:
    if labels is None:
        stage.check("labels", None, f"no labels given; the model has {len(model.labels)}")
        return
    given = len(labels)
    if model.task == "detection" and (model.output_layout or "").startswith("end2end"):
        stage.check(
            "labels",
            None,
            f"{given} labels given; an end-to-end detector outputs class ids, not one score per "
            "class, so its class count cannot be checked",
            value=given,
        )
        return
    classes = len(model.labels)
    if given != classes:
        stage.check(
            "labels",
            False,
            f"{given} labels given but the model outputs {classes} classes; fix the labels "
            "list (one per class, in class-id order)",
            value=given,
            threshold=classes,
        )
    else:
        stage.check("labels", True, f"{given} labels, one per class", given, classes)


def _check_input_size(stage: StageResult, model: Model, size: Sequence[int] | None) -> None:
    actual = list(model.input_size)
    if size is None:
        stage.check("input_size", None, f"no input size given; the model takes {actual}", actual)
        return
    expected = [int(v) for v in size]
    if len(expected) == 1:
        expected = expected * 2
    if expected != actual:
        stage.check(
            "input_size",
            False,
            f"the model takes {actual} (height, width), the card says {expected}; re-register "
            "with the model's input size or re-export the model",
            value=actual,
            threshold=expected,
        )
    else:
        stage.check("input_size", True, f"input size {actual}", actual, expected)


def _check_batches(stage: StageResult, model: Model, max_batch_size: int) -> None:
    stage.figures["max_batch_tested"] = 0.0
    ok = _run_batch(stage, "batch_1", model, 1)
    if ok:
        stage.figures["max_batch_tested"] = 1.0
    fixed = model.max_batch_size
    if max_batch_size <= 1:
        stage.check("batch_max", None, f"max_batch_size is {max_batch_size}: batch 1 covers it")
    elif fixed is not None and fixed < max_batch_size:
        stage.check(
            "batch_max",
            False,
            f"the model's batch dimension is fixed at {fixed}, smaller than max_batch_size "
            f"{max_batch_size}; re-export with a dynamic batch axis or set max_batch_size to "
            f"{fixed}",
            value=fixed,
            threshold=max_batch_size,
        )
    elif _run_batch(stage, "batch_max", model, max_batch_size):
        stage.figures["max_batch_tested"] = float(max_batch_size)


def _run_batch(stage: StageResult, name: str, model: Model, size: int) -> bool:
    """Random images through preprocess, one ``infer`` and ``postprocess`` per item."""
    rng = np.random.default_rng(size)
    height, width = model.input_size
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(size)]
    try:
        prepared = [model.preprocess(image) for image in images]
        outputs = model.infer(np.stack([p.tensor for p in prepared]))
        results = [model.postprocess(outputs, i, p.meta) for i, p in enumerate(prepared)]
    except _MODEL_FAULTS as exc:
        message = exc.message if isinstance(exc, CVDeployError) else f"{type(exc).__name__}: {exc}"
        stage.check(name, False, f"a batch of {size} failed: {message}", value=0, threshold=size)
        return False
    batches = sorted({int(np.asarray(o).shape[0]) if np.ndim(o) else 0 for o in outputs})
    if batches != [size] or len(results) != size:
        stage.check(
            name,
            False,
            f"a batch of {size} gave outputs with leading axes {batches}; every output's first "
            "axis must be the batch (re-export with a batch axis)",
            value=batches,
            threshold=size,
        )
        return False
    stage.check(name, True, f"a batch of {size} gave one result per image", size, size)
    return True
