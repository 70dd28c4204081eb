"""KServe Open Inference Protocol v2 (the Triton HTTP API), so ``tritonclient.http`` works.

Inputs (exactly one per request) may be:

* ``BYTES`` ``[B]`` or ``[B, 1]``: encoded images (JPEG, PNG...); base64 strings in JSON, raw
  in Triton's binary extension;
* ``UINT8`` ``[H, W, 3]`` or ``[B, H, W, 3]``: decoded RGB images of any size;
* ``FP32`` (``FP16``/``FP64`` are cast) ``[B, C, H, W]``: tensors already preprocessed for the
  model's input.

Outputs, padded to the longest result in the batch (``num_detections`` says how many rows of
each image are real), after the convention of TensorRT's EfficientNMS:

* detection: ``num_detections`` INT32 ``[B]``, ``boxes`` FP32 ``[B, K, 4]`` (x1, y1, x2, y2 in
  original-image pixels), ``scores`` FP32 ``[B, K]``, ``class_ids`` INT32 ``[B, K]`` (-1 pads),
  ``labels`` BYTES ``[B, K]``;
* classification: ``class_ids`` INT32 ``[B, k]``, ``scores`` FP32 ``[B, k]``, ``labels`` BYTES
  ``[B, k]`` (top-k, best first).

Request ``parameters`` may carry ``conf``, ``iou``, ``max_det`` and ``top_k``; Triton's reserved
``timeout`` (microseconds) shortens the request deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cvdeploy import __version__
from cvdeploy.errors import InputError, OverloadedError
from cvdeploy.runtime import ClassificationResult, DetectionResult, Result
from cvdeploy.serving.http import JSONResponse, read_body
from cvdeploy.serving.protocols.common import check_model
from cvdeploy.serving.protocols.v2_codec import (
    InferRequest,
    OutputTensor,
    Tensor,
    encode_response,
    output,
    parse_request,
)

if TYPE_CHECKING:
    from cvdeploy.serving.engine import InferenceEngine

__all__ = ["results_to_outputs", "v2_router"]

#: Request parameters that belong to the protocol, not to the model.
_PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
_EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration"]
#: Request bodies below this size are parsed on the event loop (cheaper than a thread hop).
_PARSE_INLINE_BYTES = 256 * 1024


def v2_router(engine: InferenceEngine) -> APIRouter:
    router = APIRouter(tags=["kserve-v2"])

    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "cvdeploy", "version": __version__, "extensions": _EXTENSIONS})

    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready() -> JSONResponse:
        return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)

    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        check_model(engine, name, version)
        return JSONResponse(_model_metadata(engine))

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        check_model(engine, name, version)
        return JSONResponse(
            {"name": engine.name, "ready": engine.ready},
            status_code=200 if engine.ready else 503,
        )

    async def model_config(name: str, version: str | None = None) -> JSONResponse:
        check_model(engine, name, version)
        return JSONResponse(_model_config(engine))

    async def model_stats(name: str, version: str | None = None) -> JSONResponse:
        check_model(engine, name, version)
        return JSONResponse({"model_stats": [_model_stats(engine)]})

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        check_model(engine, name, version)
        limits = engine.settings.limits
        header_length = request.headers.get("inference-header-content-length")
        # Raw tensors may be larger than an image upload; a pure-JSON body may not (JSON
        # tensors cost ~10x their size in memory to parse).
        limit = limits.max_body_bytes
        if header_length is not None:
            limit = max(limit, limits.max_v2_tensor_bytes)
        body = await read_body(request, limit, engine.settings.timeout)

        def parse() -> InferRequest:
            return parse_request(
                body, header_length, limits.max_v2_tensor_bytes, limits.max_images_per_request
            )

        # Parsing megabytes of tensors would stall every other request on the event loop.
        small = len(body) < _PARSE_INLINE_BYTES
        infer_request = parse() if small else await asyncio.to_thread(parse)
        results = await _predict(engine, infer_request)
        payload, json_length = encode_response(
            engine.name, engine.version, results_to_outputs(results), infer_request
        )
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    add = router.add_api_route
    add("/v2", server_metadata, methods=["GET"], summary="Server metadata")
    add("/v2/health/live", live, methods=["GET"], summary="Liveness")
    add("/v2/health/ready", ready, methods=["GET"], summary="Readiness")
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add(prefix, model_metadata, methods=["GET"], summary="Model metadata")
        add(f"{prefix}/ready", model_ready, methods=["GET"], summary="Model readiness")
        add(f"{prefix}/config", model_config, methods=["GET"], summary="Model configuration")
        add(f"{prefix}/stats", model_stats, methods=["GET"], summary="Model statistics")
        add(f"{prefix}/infer", infer, methods=["POST"], summary="Inference")
    return router


async def _predict(engine: InferenceEngine, request: InferRequest) -> list[Result]:
    if len(request.inputs) != 1:
        names = ", ".join(t.name for t in request.inputs)
        raise InputError(
            f"send exactly one input tensor (images); got {len(request.inputs)}: {names}"
        )
    overrides = {k: v for k, v in request.parameters.items() if k not in _PROTOCOL_PARAMETERS}
    params = engine.params(overrides)
    timeout = _timeout_seconds(request.parameters.get("timeout"))
    tensor = request.inputs[0]
    if not tensor.shape or tensor.shape[0] == 0:
        raise InputError(f"input {tensor.name!r} holds no images (shape {list(tensor.shape)})")
    if tensor.datatype == "BYTES":
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InputError(
                f"input {tensor.name!r}: BYTES images must have shape [B] or [B, 1], "
                f"got {list(tensor.shape)}"
            )
        return await engine.predict_encoded(_as_bytes(tensor), params, timeout)
    if tensor.datatype == "UINT8":
        return await engine.predict_arrays(_as_images(tensor), params, timeout)
    if tensor.datatype in ("FP32", "FP16", "FP64"):
        return await engine.predict_tensors(_as_tensors(tensor, engine), params, timeout)
    raise InputError(
        f"input {tensor.name!r}: datatype {tensor.datatype} is not supported; send BYTES "
        "(encoded images), UINT8 [B,H,W,3] images or FP32 [B,C,H,W] model inputs"
    )


def _timeout_seconds(value: object) -> float | None:
    """Triton's ``timeout`` request parameter is in microseconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"parameter 'timeout' must be a non-negative integer (µs), got {value!r}")
    return value / 1_000_000


def _as_bytes(tensor: Tensor) -> list[bytes]:
    data = tensor.data
    if not isinstance(data, list):  # pragma: no cover - the codec always gives lists for BYTES
        raise InputError(f"input {tensor.name!r}: BYTES data must be a list")
    return data


def _as_images(tensor: Tensor) -> list[np.ndarray]:
    array = np.asarray(tensor.data)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"input {tensor.name!r}: UINT8 images must have shape [H, W, 3] or [B, H, W, 3], "
            f"got {list(tensor.shape)}"
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    return [np.ascontiguousarray(image) for image in array]


def _as_tensors(tensor: Tensor, engine: InferenceEngine) -> list[np.ndarray]:
    array = np.asarray(tensor.data)
    model = engine.model
    expected = [d if isinstance(d, int) else -1 for d in model.input_shape[1:]]
    if array.ndim == len(expected):
        array = array[None]
    if array.ndim != len(expected) + 1:
        raise InputError(
            f"input {tensor.name!r}: {tensor.datatype} tensors must have shape "
            f"[B, {', '.join(map(str, expected))}] for this model, got {list(tensor.shape)}"
        )
    array = array.astype(np.float32, copy=False)
    return [np.ascontiguousarray(item) for item in array]


def results_to_outputs(results: Sequence[Result]) -> list[OutputTensor]:
    """Batch results into padded v2 output tensors (see the module docstring)."""
    batch = len(results)
    if all(isinstance(r, DetectionResult) for r in results):
        dets: list[DetectionResult] = [r for r in results if isinstance(r, DetectionResult)]
        width = max((len(r) for r in dets), default=0)
        counts = np.array([len(r) for r in dets], dtype=np.int32)
        boxes = np.zeros((batch, width, 4), dtype=np.float32)
        scores = np.zeros((batch, width), dtype=np.float32)
        class_ids = np.full((batch, width), -1, dtype=np.int32)
        labels: list[bytes] = []
        for i, r in enumerate(dets):
            n = len(r)
            boxes[i, :n] = r.boxes
            scores[i, :n] = r.scores
            class_ids[i, :n] = r.class_ids
            labels.extend(label.encode() for label in r.labels)
            labels.extend(b"" for _ in range(width - n))
        return [
            output("num_detections", counts, (batch,)),
            output("boxes", boxes, (batch, width, 4)),
            output("scores", scores, (batch, width)),
            output("class_ids", class_ids, (batch, width)),
            output("labels", labels, (batch, width)),
        ]
    classes: list[ClassificationResult] = [
        r for r in results if isinstance(r, ClassificationResult)
    ]
    k = max((len(r.class_ids) for r in classes), default=0)
    ids = np.full((batch, k), -1, dtype=np.int32)
    probs = np.zeros((batch, k), dtype=np.float32)
    names: list[bytes] = []
    for i, c in enumerate(classes):
        n = len(c.class_ids)
        ids[i, :n] = c.class_ids
        probs[i, :n] = c.scores
        names.extend(label.encode() for label in c.labels)
        names.extend(b"" for _ in range(k - n))
    return [
        output("class_ids", ids, (batch, k)),
        output("scores", probs, (batch, k)),
        output("labels", names, (batch, k)),
    ]


def _output_specs(engine: InferenceEngine) -> list[dict[str, Any]]:
    if engine.model.task == "detection":
        return [
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_ids", "datatype": "INT32", "shape": [-1, -1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ]
    return [
        {"name": "class_ids", "datatype": "INT32", "shape": [-1, -1]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
    ]


def _input_specs(engine: InferenceEngine) -> list[dict[str, Any]]:
    model = engine.model
    dims = [d if isinstance(d, int) else -1 for d in model.input_shape[1:]]
    return [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": model.input_name, "datatype": "FP32", "shape": [-1, *dims]},
    ]


def _require_ready(engine: InferenceEngine) -> None:
    if not engine.ready:
        raise OverloadedError(f"model {engine.name!r} is not ready yet", retry_after=1.0)


def _model_metadata(engine: InferenceEngine) -> dict[str, Any]:
    _require_ready(engine)
    return {
        "name": engine.name,
        "versions": [engine.version],
        "platform": "onnxruntime_onnx",
        "inputs": _input_specs(engine),
        "outputs": _output_specs(engine),
        "parameters": {"task": engine.model.task, "labels": engine.model.labels},
    }


def _model_config(engine: InferenceEngine) -> dict[str, Any]:
    _require_ready(engine)
    batching = engine.settings.batching
    config: dict[str, Any] = {
        "name": engine.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": engine.batch_limit if batching.enabled else 0,
        "input": [_config_tensor(s) for s in _input_specs(engine)],
        "output": [_config_tensor(s) for s in _output_specs(engine)],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    if batching.enabled:
        config["dynamic_batching"] = {
            # Triton's name for the size the batcher aims for (tuned at start-up).
            "preferred_batch_size": [engine.batcher.max_batch_size],
            "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": batching.max_queue_size},
        }
    return config


def _config_tensor(spec: dict[str, Any]) -> dict[str, Any]:
    # Triton's model config leaves the batch dimension out of ``dims``.
    # Triton calls BYTES tensors TYPE_STRING.
    datatype = "STRING" if spec["datatype"] == "BYTES" else spec["datatype"]
    return {"name": spec["name"], "data_type": f"TYPE_{datatype}", "dims": spec["shape"][1:] or [1]}


def _model_stats(engine: InferenceEngine) -> dict[str, Any]:
    stats = engine.stats
    batch = engine.batcher.stats
    return {
        "name": engine.name,
        "version": engine.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": batch.completed,
        "execution_count": batch.batches,
        "inference_stats": {
            "success": {"count": stats.success_count, "ns": stats.success_ns},
            "fail": {"count": stats.fail_count, "ns": stats.fail_ns},
            "queue": {"count": batch.completed, "ns": int(batch.queue_seconds * 1e9)},
            "compute_input": {"count": stats.success_count, "ns": stats.decode_ns},
            "compute_infer": {"count": batch.batches, "ns": int(batch.compute_seconds * 1e9)},
            "compute_output": {"count": 0, "ns": 0},
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_infer": {"count": count},
            }
            for size, count in sorted(batch.batch_sizes.items())
        ],
    }
