"""MLflow / Databricks scoring: ``POST /invocations`` and ``/serving-endpoints/{name}/invocations``.

Accepts every JSON input format of MLflow's scoring server, with images as base64 strings:

* ``{"dataframe_split": {"columns": ["image"], "data": [["<b64>"], ...]}}``
* ``{"dataframe_records": [{"image": "<b64>"}, ...]}``
* ``{"instances": ["<b64>", ...]}`` or ``[{"image": "<b64>"}]`` or TF-Serving's ``[{"b64": ...}]``
* ``{"inputs": ...}`` with the same shapes as ``instances`` (or ``{"image": [...]}``)

plus optional ``"params": {"conf": 0.5}`` (MLflow 2.x inference params). The answer is
``{"predictions": [...]}`` with one entry per image, as Databricks Model Serving returns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cvdeploy import __version__
from cvdeploy.errors import InputError, UnsupportedMediaTypeError
from cvdeploy.serving.http import JSONResponse, b64decode, parse_json, read_body
from cvdeploy.serving.protocols.common import check_model, query_params

if TYPE_CHECKING:
    from cvdeploy.serving.engine import InferenceEngine

__all__ = ["extract_images", "mlflow_router"]

#: Column / key names taken to hold the image when a record has several fields.
IMAGE_KEYS = ("image", "images", "b64", "image_base64", "content", "data", "bytes")
_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def mlflow_router(engine: InferenceEngine) -> APIRouter:
    router = APIRouter(tags=["mlflow"])

    async def invocations(request: Request) -> JSONResponse:
        return await _invoke(request, engine)

    async def endpoint_invocations(request: Request, name: str) -> JSONResponse:
        check_model(engine, name)
        return await _invoke(request, engine)

    async def ping() -> Response:
        # MLflow's scoring server answers /ping with 200 and a newline when the model is loaded.
        return Response("\n", status_code=200 if engine.ready else 503, media_type="text/plain")

    async def version() -> Response:
        return Response(__version__, media_type="text/plain")

    router.add_api_route("/invocations", invocations, methods=["POST"], summary="MLflow scoring")
    router.add_api_route(
        "/serving-endpoints/{name}/invocations",
        endpoint_invocations,
        methods=["POST"],
        summary="Databricks-style scoring",
    )
    router.add_api_route("/ping", ping, methods=["GET"], summary="MLflow health check")
    router.add_api_route("/health", ping, methods=["GET"], summary="Health check")
    router.add_api_route("/version", version, methods=["GET"], summary="Server version")
    return router


async def _invoke(request: Request, engine: InferenceEngine) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r} is not supported here; send application/json with "
            "one of " + ", ".join(_FORMATS)
        )
    limit, timeout = engine.settings.limits.max_body_bytes, engine.settings.timeout
    payload = parse_json(await read_body(request, limit, timeout))
    images, extra = extract_images(payload)
    params = query_params(request)
    params.update(extra)
    results = await engine.predict_encoded(images, engine.params(params))
    return JSONResponse({"predictions": [r.to_dict() for r in results]})


def extract_images(payload: object) -> tuple[list[bytes], dict[str, object]]:
    """Images and inference params from an MLflow scoring request body."""
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object with one of {', '.join(_FORMATS)}")
    present = [key for key in _FORMATS if key in payload]
    if len(present) != 1:
        raise InputError(
            f"the body must have exactly one of {', '.join(_FORMATS)}; found "
            f"{', '.join(present) or 'none'}"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise InputError("'params' must be a JSON object")
    key = present[0]
    value = payload[key]
    if key == "dataframe_split":
        items = _from_split(value)
    elif key == "dataframe_records":
        if not isinstance(value, list):
            raise InputError("'dataframe_records' must be a list of objects")
        items = [_from_record(record, f"dataframe_records[{i}]") for i, record in enumerate(value)]
    else:
        items = _from_instances(value, key)
    if not items:
        raise InputError(f"'{key}' holds no images")
    return [b64decode(item, f"{key}[{i}]") for i, item in enumerate(items)], params


def _from_split(value: object) -> list[Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InputError("'dataframe_split' must be an object with 'columns' and 'data'")
    columns = value.get("columns") or ["image"]
    if not isinstance(columns, list):
        raise InputError("'dataframe_split.columns' must be a list")
    column = _image_column(columns, "dataframe_split.columns")
    rows = value["data"]
    items = []
    for i, row in enumerate(rows):
        if isinstance(row, list):
            if len(row) != len(columns):
                raise InputError(
                    f"dataframe_split.data[{i}] has {len(row)} values for {len(columns)} columns"
                )
            items.append(row[column])
        else:
            items.append(row)
    return items


def _image_column(columns: list[Any], where: str) -> int:
    if len(columns) == 1:
        return 0
    for key in IMAGE_KEYS:
        if key in columns:
            return columns.index(key)
    raise InputError(f"{where} has no image column; name it one of {', '.join(IMAGE_KEYS)}")


def _from_record(record: object, where: str) -> Any:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict) or not record:
        raise InputError(f"{where} must be an object with an image field or a base64 string")
    if len(record) == 1:
        return next(iter(record.values()))
    for key in IMAGE_KEYS:
        if key in record:
            return record[key]
    raise InputError(f"{where} has no image field; name it one of {', '.join(IMAGE_KEYS)}")


def _from_instances(value: object, key: str) -> list[Any]:
    if isinstance(value, dict):  # columnar: {"image": ["<b64>", ...]}
        column = _image_column(list(value), key)
        items = list(value.values())[column]
        return items if isinstance(items, list) else [items]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InputError(f"'{key}' must be a list of base64 images or of objects")
    return [_from_record(item, f"{key}[{i}]") for i, item in enumerate(value)]
