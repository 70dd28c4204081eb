"""The image endpoint: ``POST /v1/models/{name}/predict``.

Three ways to send images, so ``curl -F``, ``curl --data-binary`` and a browser ``fetch`` all work:

* ``multipart/form-data``: every file part is an image (any field names), in order;
* a raw ``image/*`` (or ``application/octet-stream``) body: one image;
* ``application/json``: ``{"images": ["<base64>", ...]}`` or ``{"image": "<base64>"}``, with
  optional ``"parameters": {"conf": 0.5}``.

Per-request parameters (``conf``, ``iou``, ``max_det``, ``top_k``) come from the query string
or the JSON ``parameters``; they are bounded and validated by the runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from cvdeploy.errors import InputError, UnsupportedMediaTypeError
from cvdeploy.serving.http import JSONResponse, b64decode, parse_json, read_body
from cvdeploy.serving.protocols.common import check_model, query_params

if TYPE_CHECKING:
    from cvdeploy.serving.engine import InferenceEngine

__all__ = ["image_router"]

_EXAMPLE = {
    "model": "shapes_detector",
    "version": "1",
    "predictions": [
        {
            "task": "detection",
            "image": {"width": 640, "height": 480},
            "detections": [
                {
                    "box": [12.5, 30.0, 200.25, 180.0],
                    "score": 0.91,
                    "class_id": 0,
                    "label": "circle",
                }
            ],
        }
    ],
}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                    "image": {"type": "string", "format": "byte"},
                    "parameters": {"type": "object"},
                },
            }
        },
    },
}


def image_router(engine: InferenceEngine) -> APIRouter:
    router = APIRouter(tags=["images"])

    async def predict(request: Request, name: str) -> JSONResponse:
        check_model(engine, name)
        images, params = await _read_images(request, engine)
        results = await engine.predict_encoded(images, engine.params(params))
        return JSONResponse(
            {
                "model": engine.name,
                "version": engine.version,
                "predictions": [r.to_dict() for r in results],
            }
        )

    router.add_api_route(
        "/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        summary="Predict on one or more uploaded images",
        openapi_extra={"requestBody": _REQUEST_BODY},
        responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}},
    )

    async def list_models() -> JSONResponse:
        return JSONResponse({"models": [_describe(engine)]})

    async def describe(name: str) -> JSONResponse:
        check_model(engine, name)
        return JSONResponse(_describe(engine))

    router.add_api_route("/v1/models", list_models, methods=["GET"], summary="List models")
    router.add_api_route("/v1/models/{name}", describe, methods=["GET"], summary="Describe a model")
    return router


def _describe(engine: InferenceEngine) -> dict[str, Any]:
    info: dict[str, Any] = {"name": engine.name, "version": engine.version, "ready": engine.ready}
    if engine.ready:
        model = engine.model
        info.update(
            task=model.task,
            labels=model.labels,
            input_size=list(model.input_size),
            providers=model.providers,
            sha256=model.sha256,
        )
    return info


async def _read_images(
    request: Request, engine: InferenceEngine
) -> tuple[list[bytes], dict[str, object]]:
    limits = engine.settings.limits
    params: dict[str, object] = query_params(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limits.max_body_bytes, engine.settings.timeout)
    if not body:
        raise InputError("the request body is empty; send an image file, raw image bytes or JSON")

    if content_type == "multipart/form-data":
        request._body = body  # let Starlette's parser read the bytes already checked
        try:
            form = await request.form(max_files=limits.max_images_per_request, max_fields=32)
        except HTTPException as exc:
            if "Too many files" in str(exc.detail):
                engine.check_count(limits.max_images_per_request + 1)
            raise InputError(f"the multipart body could not be parsed: {exc.detail}") from None
        try:
            files = [part for _, part in form.multi_items() if isinstance(part, UploadFile)]
            images = [await part.read() for part in files]
        finally:
            await form.close()
        if not images:
            raise InputError("the multipart form has no file parts; attach images as files")
        return images, params

    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [body], params

    if content_type == "application/json":
        payload = parse_json(body)
        if not isinstance(payload, dict):
            raise InputError('the JSON body must be an object like {"images": ["<base64>"]}')
        extra = payload.get("parameters") or payload.get("params") or {}
        if not isinstance(extra, dict):
            raise InputError("'parameters' must be a JSON object")
        params.update(extra)
        if "images" in payload:
            items = payload["images"]
            if not isinstance(items, list) or not items:
                raise InputError("'images' must be a non-empty list of base64 strings")
        elif "image" in payload:
            items = [payload["image"]]
        else:
            raise InputError('the JSON body needs "images" (a list) or "image" (base64)')
        engine.check_count(len(items))
        return [b64decode(item, f"images[{i}]") for i, item in enumerate(items)], params

    raise UnsupportedMediaTypeError(
        f"content type {content_type or '(none)'!r} is not supported; send multipart/form-data, "
        "image/* or application/json"
    )
