"""Tensors of the KServe Open Inference Protocol v2, in JSON and Triton's binary extension.

Pure functions from bytes to numpy and back, so every validation rule is unit-testable
without a server. The binary extension puts a JSON header first (its length in the
``Inference-Header-Content-Length`` header) and the raw tensor bytes after it, in input
order; ``BYTES`` elements are each prefixed by a 4-byte little-endian length.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from cvdeploy.errors import InputError, PayloadTooLargeError
from cvdeploy.serving.http import b64decode

__all__ = [
    "DTYPES",
    "InferRequest",
    "OutputTensor",
    "Tensor",
    "encode_response",
    "parse_request",
]

#: v2 datatype name -> numpy dtype (BYTES is handled separately as a list of bytes).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


@dataclass
class Tensor:
    """One decoded input: a numpy array, or a list of bytes for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any]
    #: Output names asked for, with whether each wants binary data; None = all outputs.
    outputs: dict[str, bool] | None
    binary_output: bool = False


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes] = field(repr=False)


def parse_request(
    body: bytes,
    header_length: str | None,
    max_tensor_bytes: int,
    max_bytes_elements: int | None = None,
) -> InferRequest:
    """Parse a v2 infer request body (JSON, or JSON + binary tensors).

    ``max_bytes_elements`` bounds the element count of a ``BYTES`` input (images per request):
    it is checked from the declared shape, before any element is split or decoded.
    """
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise InputError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < json_size <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length is {json_size} but the body has {len(body)} bytes"
            )
        header_bytes, binary = body[:json_size], memoryview(body)[json_size:]
    else:
        header_bytes, binary = body, memoryview(b"")
    if not header_bytes:
        raise InputError("the request body is empty; send a v2 inference request")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InputError("the inference request must be a JSON object with an 'inputs' list")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InputError("the inference request needs a non-empty 'inputs' list")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError("'parameters' must be a JSON object")

    offset = 0
    inputs = []
    for index, raw in enumerate(raw_inputs):
        tensor, used = _parse_input(
            raw, index, binary[offset:], max_tensor_bytes, max_bytes_elements
        )
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InputError(
            f"the body has {len(binary) - offset} binary bytes that no input's "
            "binary_data_size accounts for"
        )
    request_id = header.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        parameters=parameters,
        outputs=_requested_outputs(header.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
    )


def _requested_outputs(raw: object) -> dict[str, bool] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InputError("'outputs' must be a list of {'name': ...} objects")
    wanted: dict[str, bool] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError("each entry of 'outputs' must be an object with a 'name'")
        params = item.get("parameters") or {}
        wanted[item["name"]] = bool(isinstance(params, dict) and params.get("binary_data"))
    return wanted


def _parse_input(
    raw: object, index: int, binary: memoryview, max_bytes: int, max_elements: int | None
) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InputError(f"inputs[{index}] must be a JSON object")
    name = raw.get("name")
    where = f"input {name!r}" if isinstance(name, str) else f"inputs[{index}]"
    if not isinstance(name, str) or not name:
        raise InputError(f"{where} needs a 'name'")
    datatype = raw.get("datatype")
    if datatype != "BYTES" and datatype not in DTYPES:
        raise InputError(
            f"{where}: datatype {datatype!r} is not a v2 datatype; use one of "
            f"BYTES, {', '.join(DTYPES)}"
        )
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InputError(f"{where}: 'shape' must be a non-empty list of non-negative integers")
    count = math.prod(shape)
    if datatype == "BYTES" and max_elements is not None and count > max_elements:
        raise PayloadTooLargeError(
            f"{where}: shape {shape} holds {count} images; the limit is {max_elements} per "
            "request (split the request, or raise limits.max_images_per_request)"
        )
    params = raw.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None

    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0:
            raise InputError(f"{where}: binary_data_size must be a non-negative integer")
        if binary_size > len(binary):
            raise InputError(
                f"{where}: binary_data_size is {binary_size} but only {len(binary)} binary "
                "bytes follow the header"
            )
        if binary_size > max_bytes:
            raise PayloadTooLargeError(f"{where}: {binary_size} bytes exceeds the tensor limit")
        chunk = binary[:binary_size]
        if datatype == "BYTES":
            data: np.ndarray | list[bytes] = _split_bytes(chunk, count, where)
        else:
            data = _binary_array(chunk, DTYPES[datatype], shape, count, where)
        return Tensor(name, datatype, tuple(shape), data), binary_size

    if "data" not in raw:
        raise InputError(f"{where} has neither 'data' nor a binary_data_size parameter")
    if datatype == "BYTES":
        data = _json_bytes(raw["data"], count, where, len(shape))
    else:
        data = _json_array(raw["data"], DTYPES[datatype], shape, count, where, max_bytes)
    return Tensor(name, datatype, tuple(shape), data), 0


def _binary_array(
    chunk: memoryview, dtype: np.dtype[Any], shape: list[int], count: int, where: str
) -> np.ndarray:
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InputError(
            f"{where}: shape {shape} of {dtype.name} needs {expected} bytes, got {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _split_bytes(chunk: memoryview, count: int, where: str) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InputError(f"{where}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + size > len(chunk):
            raise InputError(f"{where}: BYTES element of {size} bytes runs past the data")
        items.append(bytes(chunk[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InputError(f"{where}: shape holds {count} elements but {len(items)} were sent")
    return items


def _flatten(data: object, depth: int) -> list[Any]:
    """Flatten nested lists up to ``depth`` levels (the tensor's rank), without recursion."""
    items = data if isinstance(data, list) else [data]
    for _ in range(depth):
        if not any(isinstance(item, list) for item in items):
            return items
        flat: list[Any] = []
        for item in items:
            if isinstance(item, list):
                flat.extend(item)
            else:
                flat.append(item)
        items = flat
    if any(isinstance(item, list) for item in items):
        raise InputError("BYTES data is nested deeper than the tensor's shape")
    return items


def _json_bytes(data: object, count: int, where: str, rank: int) -> list[bytes]:
    items = _flatten(data, rank)
    if len(items) != count:
        raise InputError(f"{where}: shape holds {count} elements but {len(items)} were sent")
    # JSON cannot carry raw bytes, so encoded images travel as base64 strings.
    return [b64decode(item, f"{where}[{i}]") for i, item in enumerate(items)]


def _json_array(
    data: object,
    dtype: np.dtype[Any],
    shape: list[int],
    count: int,
    where: str,
    max_bytes: int,
) -> np.ndarray:
    if count * dtype.itemsize > max_bytes:
        raise PayloadTooLargeError(f"{where}: shape {shape} exceeds the tensor size limit")
    try:
        # numpy parses flat or nested lists in C; a ragged nesting raises ValueError.
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: data is not a regular array of {dtype.name} numbers") from None
    if array.size != count:
        raise InputError(f"{where}: shape {shape} holds {count} elements but {array.size} sent")
    return array.reshape(shape)


# -- responses ---------------------------------------------------------------------------------


def _datatype_of(data: np.ndarray | list[bytes]) -> str:
    if isinstance(data, list):
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype == data.dtype:
            return name
    raise TypeError(f"no v2 datatype for {data.dtype}")


def encode_response(
    model_name: str,
    model_version: str,
    outputs: Sequence[OutputTensor],
    request: InferRequest,
) -> tuple[bytes, int | None]:
    """Encode outputs as the request asked (JSON, or JSON header + binary).

    Returns the body and, when binary data follows, the JSON header length for the
    ``Inference-Header-Content-Length`` response header.
    """
    wanted: Mapping[str, bool] | None = request.outputs
    if wanted is not None:
        known = {o.name for o in outputs}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise InputError(
                f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(sorted(known))}"
            )
        outputs = [o for o in outputs if o.name in wanted]
    entries: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
        }
        as_binary = request.binary_output if wanted is None else wanted[out.name]
        if as_binary:
            raw = _tensor_bytes(out.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        elif isinstance(out.data, list):
            entry["data"] = [item.decode("utf-8", "replace") for item in out.data]
        else:
            entry["data"] = out.data.reshape(-1)
        entries.append(entry)
    header: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": entries,
    }
    if request.id is not None:
        header["id"] = request.id
    header_bytes = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header_bytes, None
    return header_bytes + b"".join(binary), len(header_bytes)


def _tensor_bytes(data: np.ndarray | list[bytes]) -> bytes:
    if isinstance(data, list):
        return b"".join(struct.pack("<I", len(item)) + item for item in data)
    return np.ascontiguousarray(data).tobytes()


def output(name: str, data: np.ndarray | list[bytes], shape: Sequence[int]) -> OutputTensor:
    """Build an output tensor, deriving its v2 datatype from the data."""
    return OutputTensor(name, _datatype_of(data), tuple(shape), data)
