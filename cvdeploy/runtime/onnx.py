"""ONNX Runtime sessions: creation with the options a server wants, load errors that say why.

Load errors name the file (they happen at start-up, on the operator's side); inference errors
never do (they may travel in an HTTP response), see :mod:`cvdeploy.runtime.model`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import onnxruntime as ort

from cvdeploy._hashing import file_sha256
from cvdeploy.errors import ModelLoadError

__all__ = [
    "InputSpec",
    "create_session",
    "file_sha256",
    "image_input",
    "output_shapes",
    "sanitise_error",
]

_DTYPES: Final[dict[str, type[np.floating[Any]]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
_PATHLIKE: Final = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-]+){2,}")
_ORT_STATUS: Final = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+)")
_ORT_NODE: Final = re.compile(r"while running (\w+) node")


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The model's image input."""

    name: str
    shape: tuple[int | None, ...]  # ONNX dims; None where dynamic
    layout: Literal["NCHW", "NHWC"]
    channels: int
    dtype: type[np.floating[Any]]

    @property
    def batch(self) -> int | None:
        return self.shape[0]

    @property
    def spatial(self) -> tuple[int | None, int | None]:
        """Static (height, width), None where dynamic."""
        if self.layout == "NCHW":
            return self.shape[2], self.shape[3]
        return self.shape[1], self.shape[2]


def create_session(
    path: Path,
    providers: Sequence[str],
    intra_op_threads: int,
    inter_op_threads: int,
    spinning: bool = True,
) -> ort.InferenceSession:
    """Open ``path`` in ONNX Runtime.

    Raises:
        ModelLoadError: missing file, not an ONNX model, corrupt or unsupported graph.
    """
    _check_file(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Sequential: a vision graph is a chain; parallel node execution only adds thread contention.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Fatal only: ORT would print run failures to stderr itself; Model.infer logs them once,
    # through logging, with the model name.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... classes
        raise ModelLoadError(f"cannot load ONNX model {path}: {_first_line(exc)}") from exc


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, not an .onnx file: {path}")
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from None
    if not head:
        raise ModelLoadError(f"model file is empty: {path}")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise ModelLoadError(
            f"{path} looks like a PyTorch checkpoint (zip/pickle), not an ONNX model; "
            "export it to ONNX first (Ultralytics: model.export(format='onnx'))"
        )
    if _looks_like_text(head):
        raise ModelLoadError(
            f"{path} is a text file, not an ONNX model (it starts with {head[:24]!r})"
        )


def _looks_like_text(head: bytes) -> bool:
    # A serialized ONNX ModelProto starts with field tags and length varints: never pure text.
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def image_input(session: ort.InferenceSession, path: Path) -> InputSpec:
    """The one image-like input: rank 4, 1 or 3 channels first (NCHW) or last (NHWC).

    Raises:
        ModelLoadError: no such input, extra inputs, or an input type we cannot feed.
    """
    inputs = session.get_inputs()
    candidates = []
    for arg in inputs:
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
        if len(dims) != 4:
            continue
        if dims[1] in (1, 3):
            candidates.append((arg, dims, "NCHW", int(dims[1])))
        elif dims[3] in (1, 3):
            candidates.append((arg, dims, "NHWC", int(dims[3])))
        elif dims[1] is None and dims[3] is None:
            candidates.append((arg, dims, "NCHW", 3))
    described = ", ".join(f"{a.name} {list(a.shape)} {a.type}" for a in inputs)
    if not candidates:
        raise ModelLoadError(
            f"{path} has no image-like input (a 4-D [batch, 1|3, H, W] or [batch, H, W, 1|3] "
            f"tensor); its inputs: {described}"
        )
    arg, dims, layout, channels = candidates[0]
    if len(inputs) > 1:
        raise ModelLoadError(
            f"{path} has {len(inputs)} inputs ({described}); cvdeploy feeds one image tensor"
        )
    dtype = _DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(
            f"{path}: input {arg.name!r} has type {arg.type}; supported: float, float16, double"
        )
    return InputSpec(arg.name, dims, layout, channels, dtype)  # type: ignore[arg-type]


def output_shapes(session: ort.InferenceSession) -> list[tuple[int, ...]] | None:
    """Declared output shapes with batch 1, or None if any other dimension is dynamic."""
    shapes = []
    for arg in session.get_outputs():
        dims = list(arg.shape)
        if not dims:
            return None
        rest = dims[1:]
        if not all(isinstance(d, int) and d > 0 for d in rest):
            return None
        shapes.append((1, *rest))
    return shapes


def sanitise_error(exc: BaseException) -> str:
    """A short, path-free summary of an ORT error, fit for an HTTP response.

    ORT messages carry the C++ source path and function signature of the failing check; what
    helps the reader is the status, the operator and the closing sentence about the tensors.
    """
    text = _first_line(exc)
    status = _ORT_STATUS.search(text)
    node = _ORT_NODE.search(text)
    if status is None:
        return _PATHLIKE.sub("<path>", text)[:300]
    parts = [f"ONNX Runtime {status.group(1)}"]
    if node is not None:
        parts.append(f"in a {node.group(1)} node")
    detail = text.rsplit(" was false. ", 1)[1] if " was false. " in text else ""
    summary = " ".join(parts) + (f": {detail}" if detail else "")
    return _PATHLIKE.sub("<path>", summary)[:300]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
