"""A loaded model: one ONNX Runtime session plus the task that gives its outputs meaning.

The server drives the four stages separately (``preprocess`` per request in its worker thread,
``infer`` once per batch, ``postprocess`` per item), so batching never re-does per-image work;
``predict`` chains them for scripts and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import onnxruntime as ort

from cvdeploy.errors import InferenceError, InvalidImageError, InvalidParameterError
from cvdeploy.runtime.images import as_rgb_array
from cvdeploy.runtime.onnx import InputSpec, sanitise_error
from cvdeploy.runtime.params import PredictParams
from cvdeploy.runtime.preprocess import Prepared
from cvdeploy.runtime.results import Result
from cvdeploy.runtime.tasks.base import Task, TaskName

__all__ = ["DEFAULT_PREDICT_BATCH", "Model"]

logger = logging.getLogger(__name__)

#: Images per ``session.run`` in :meth:`Model.predict` when the model's batch is dynamic.
DEFAULT_PREDICT_BATCH: Final = 32


class Model:
    """A model ready to serve. Build it with :func:`cvdeploy.runtime.load_model`.

    All methods are thread-safe: ONNX Runtime sessions allow concurrent ``run`` calls and the
    pre/post-processing keeps no state.
    """

    def __init__(
        self,
        *,
        path: Path,
        name: str,
        session: ort.InferenceSession,
        spec: InputSpec,
        task: Task,
        metadata: Mapping[str, str],
        sha256: str,
        default_params: PredictParams,
        latency_session: ort.InferenceSession | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.metadata: dict[str, str] = dict(metadata)
        self.sha256 = sha256
        self.default_params = default_params
        self._session = session
        # Optional twin of ``session`` whose threads spin between operators (see load_model's
        # ``intra_op_spinning="auto"``): used for a lone image when nothing else is waiting.
        self._latency_session = latency_session
        self._spec = spec
        self._task = task
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self.providers: list[str] = list(session.get_providers())

    # --- description -----------------------------------------------------------------------

    @property
    def task(self) -> TaskName:
        return self._task.name

    @property
    def labels(self) -> list[str]:
        return self._task.labels

    @property
    def input_name(self) -> str:
        return self._spec.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The ONNX input shape, None for dynamic dimensions."""
        return self._spec.shape

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) images are resized to."""
        return self._task.preprocessor.input_size

    @property
    def layout(self) -> Literal["NCHW", "NHWC"]:
        return self._spec.layout

    @property
    def max_batch_size(self) -> int | None:
        """The static batch dimension of the input; None when any batch size works."""
        return self._spec.batch

    @property
    def input_dtype(self) -> np.dtype[Any]:
        return np.dtype(self._spec.dtype)

    @property
    def output_layout(self) -> str | None:
        """The detector head layout (see :mod:`cvdeploy.runtime.tasks.layouts`), else None."""
        head = getattr(self._task, "head", None)
        return None if head is None else str(head.layout)

    def __repr__(self) -> str:
        return (
            f"Model(name={self.name!r}, task={self.task!r}, input={list(self.input_shape)}, "
            f"input_size={self.input_size}, providers={self.providers})"
        )

    # --- the four stages ---------------------------------------------------------------------

    @property
    def channels(self) -> int:
        """Colour channels of the model input (3 for RGB models)."""
        return self._spec.channels

    def preprocess(self, image: np.ndarray) -> Prepared:
        """Resize and normalise one ``(H, W, 3)`` uint8 RGB image; ``meta`` maps results back.

        Other arrays :func:`as_rgb_array` accepts (grey, RGBA, uint16) are converted first.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            image = as_rgb_array(image)
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidImageError(f"the image is empty ({image.shape[1]}x{image.shape[0]})")
        return self._task.preprocess(image)

    def prepare_tensor(self, tensor: np.ndarray) -> Prepared:
        """Accept an already-preprocessed single input (``(C, H, W)`` or ``(1, C, H, W)``, or
        channels-last for NHWC models); detections come back in input pixels.

        Raises:
            InvalidParameterError: wrong rank, channels, size or a non-float dtype.
        """
        return self._task.preprocessor.prepare_tensor(tensor, self._spec.spatial)

    def infer(self, batch: np.ndarray, *, latency: bool = False) -> list[np.ndarray]:
        """One ``session.run`` on a stacked batch; a model with a fixed batch size gets the
        batch zero-padded to it and the padding removed from the outputs.

        ``latency=True`` asks for the lowest latency of this one call (the spinning session,
        when the model has one): right for a lone request on an idle server.

        Raises:
            InvalidParameterError: more images than the model's fixed batch size.
            InferenceError: ONNX Runtime failed (the message carries no file paths).
        """
        count = int(batch.shape[0])
        fixed = self._spec.batch
        if batch.dtype != self._spec.dtype:
            batch = batch.astype(self._spec.dtype)
        if fixed is not None and count != fixed:
            if count > fixed:
                raise InvalidParameterError(
                    f"batch of {count} exceeds the fixed batch size {fixed} of model {self.name!r}"
                )
            padding = np.zeros((fixed - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, padding])
        try:
            session = self._latency_session if latency and self._latency_session else self._session
            outputs: list[np.ndarray] = session.run(None, {self._spec.name: batch})
        except Exception as exc:
            # Not logged here: the caller (the server, with its request id) logs it once.
            raise InferenceError(
                f"model {self.name!r} failed during inference: {sanitise_error(exc)}"
            ) from exc
        if fixed is not None and count != fixed:
            outputs = [out[:count] for out in outputs]
        return outputs

    def postprocess(
        self,
        outputs: Sequence[np.ndarray],
        index: int,
        meta: object,
        params: PredictParams | None = None,
    ) -> Result:
        """The result for item ``index`` of ``infer``'s outputs, in original-image pixels."""
        return self._task.postprocess(outputs, index, meta, params or self.default_params)

    def predict(
        self, images: Sequence[np.ndarray], params: PredictParams | None = None
    ) -> list[Result]:
        """Preprocess, infer in chunks of the batch limit (or 32), postprocess; input order."""
        params = params or self.default_params
        prepared = [self.preprocess(image) for image in images]
        return self.predict_prepared(prepared, params)

    def predict_prepared(
        self, prepared: Sequence[Prepared], params: PredictParams | None = None
    ) -> list[Result]:
        """Infer and postprocess already-prepared inputs; those of equal shape share batches."""
        params = params or self.default_params
        chunk = self.max_batch_size or DEFAULT_PREDICT_BATCH
        results: list[Result | None] = [None] * len(prepared)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(prepared):
            groups.setdefault(item.tensor.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                outputs = self.infer(
                    np.stack([prepared[i].tensor for i in part]), latency=len(part) == 1
                )
                for position, i in enumerate(part):
                    results[i] = self.postprocess(outputs, position, prepared[i].meta, params)
        return [r for r in results if r is not None]

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run zero batches so the first real request does not pay for allocation and tuning."""
        height, width = self.input_size
        channels = self._spec.channels
        item = (channels, height, width) if self.layout == "NCHW" else (height, width, channels)
        for size in batch_sizes:
            self.infer(np.zeros((size, *item), dtype=self._spec.dtype))
        if self._latency_session is not None:
            self.infer(np.zeros((1, *item), dtype=self._spec.dtype), latency=True)
