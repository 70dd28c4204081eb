"""Checks on the ONNX graph itself: ``onnx.checker``, external data locations, op domains.

The protobuf is parsed, never run. External data is the dangerous part: a tensor's
``location`` is a path the runtime opens, so one pointing at ``../../etc/shadow`` or through a
symlink out of the model folder would have the server read (and serve from) any file. Custom op
domains need a native library loaded into the server. Subgraphs (``If``/``Loop`` bodies) and
model-local functions are walked too, since both hold nodes and tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, SparseTensorProto, TensorProto

from cvdeploy.pipeline.security.paths import inside, relative
from cvdeploy.pipeline.stages import StageResult

__all__ = [
    "STANDARD_OP_DOMAINS",
    "check_external_data",
    "check_onnx_checker",
    "check_op_domains",
    "external_data_files",
    "onnx_footprint",
]

#: Op domains every ONNX Runtime build implements; anything else needs a custom-op library.
STANDARD_OP_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def external_data_files(onnx_path: Path, model: ModelProto | None = None) -> list[Path]:
    """The distinct, safe external data files an ONNX file reads (unsafe references skipped)."""
    if model is None:
        model = onnx.load(str(onnx_path), load_external_data=False)
    seen: dict[Path, None] = {}
    for ref in _external_refs(model, onnx_path.parent):
        if ref.path is not None:
            seen.setdefault(ref.path, None)
    return list(seen)


def onnx_footprint(onnx_path: Path, model: ModelProto | None = None) -> tuple[int, list[Path]]:
    """Bytes of an ONNX file plus its external data, and the files counted."""
    files = [onnx_path, *external_data_files(onnx_path, model)]
    return sum(f.stat().st_size for f in files), files


# --- checks (``models``: each parsed ONNX file, external data not loaded) ----------------------


def check_onnx_checker(stage: StageResult, models: Mapping[Path, ModelProto], root: Path) -> None:
    """The ``onnx_checker`` check: ``onnx.checker.check_model`` on each file, by path."""
    if not models:
        stage.check("onnx_checker", None, "not run: no ONNX model")
        return
    errors: list[str] = []
    for file in models:
        try:
            # The path form reads external data and handles models over 2 GB.
            onnx.checker.check_model(str(file))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{relative(file, root)}: {first}")
    if errors:
        stage.check(
            "onnx_checker",
            False,
            "onnx.checker rejects "
            + "; ".join(errors)
            + "; fix what it names or re-export the model with a "
            "current exporter",
        )
    else:
        stage.check("onnx_checker", True, "onnx.checker.check_model passed")


def check_external_data(stage: StageResult, models: Mapping[Path, ModelProto], root: Path) -> None:
    """The ``external_data`` check: every location a relative path to a file in the folder."""
    if not models:
        stage.check("external_data", None, "not run: no ONNX model")
        return
    problems: list[str] = []
    count = 0
    for file, model in models.items():
        for ref in _external_refs(model, file.parent):
            count += 1
            if ref.problem is not None:
                problems.append(
                    f"{relative(file, root)}: tensor {ref.tensor!r} location "
                    f"{ref.location!r} {ref.problem}"
                )
    if problems:
        stage.check(
            "external_data",
            False,
            "; ".join(problems) + "; external data must be a relative path to a file inside the "
            "model's folder (re-save with onnx.save(..., save_as_external_data=True, "
            "location='model.data'))",
            value=count,
        )
    elif count:
        stage.check(
            "external_data", True, f"{count} external tensor(s), all inside the folder", count
        )
    else:
        stage.check("external_data", True, "no external data", value=0)


def check_op_domains(
    stage: StageResult, models: Mapping[Path, ModelProto], allowed_op_domains: Sequence[str]
) -> None:
    """The ``op_domains`` check: no node outside the standard, allowed or model-local domains."""
    if not models:
        stage.check("op_domains", None, "not run: no ONNX model")
        return
    allowed = STANDARD_OP_DOMAINS | set(allowed_op_domains)
    found: dict[str, set[str]] = {"standard": set(), "allowed": set(), "model functions": set()}
    foreign: dict[str, set[str]] = {}
    for model in models.values():
        own = {f.domain for f in model.functions}
        for node in _all_nodes(model):
            domain = node.domain
            if domain in STANDARD_OP_DOMAINS:
                found["standard"].add(domain or "ai.onnx")
            elif domain in allowed:
                found["allowed"].add(domain)
            elif domain in own:
                found["model functions"].add(domain)
            else:
                foreign.setdefault(domain, set()).add(node.op_type)
    if foreign:
        listed = "; ".join(
            f"{d!r} ({', '.join(sorted(ops))})" for d, ops in sorted(foreign.items())
        )
        stage.check(
            "op_domains",
            False,
            f"custom operator domain(s) {listed}: serving them needs a native custom-op library "
            "loaded into the server, a supply-chain risk; re-export with standard ONNX "
            "operators, or list the domain in allowed_op_domains if its library is vetted",
            value=sorted(foreign),
        )
    else:
        shown = sorted(set().union(*found.values()))
        if not found["allowed"] and not found["model functions"]:
            detail = f"standard domains only: {', '.join(shown)}"
        else:
            listed = "; ".join(f"{kind}: {', '.join(sorted(d))}" for kind, d in found.items() if d)
            detail = f"no domain needs an unvetted custom-op library ({listed})"
        stage.check("op_domains", True, detail, shown)


# --- ONNX graph walking ------------------------------------------------------------------------


@dataclass(frozen=True)
class _ExternalRef:
    tensor: str
    location: str
    path: Path | None  # resolved, when it is safe to look at
    problem: str | None


def _all_graphs(model: ModelProto) -> Iterator[GraphProto]:
    yield from _graph_and_subgraphs(model.graph)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                yield from _attribute_graphs(attr)


def _graph_and_subgraphs(graph: GraphProto) -> Iterator[GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_graphs(attr)


def _attribute_graphs(attr: AttributeProto) -> Iterator[GraphProto]:
    if attr.HasField("g"):
        yield from _graph_and_subgraphs(attr.g)
    for sub in attr.graphs:
        yield from _graph_and_subgraphs(sub)


def _all_nodes(model: ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(name, tensor) of every stored tensor: initializers, sparse initializers and tensor or
    sparse-tensor attributes (``Constant``'s ``value``/``sparse_value``), in the graph, its
    subgraphs and the functions. A sparse tensor is two tensors, each may be external."""
    for graph in _all_graphs(model):
        for tensor in graph.initializer:
            yield tensor.name, tensor
        for sparse in graph.sparse_initializer:
            yield from _sparse_parts(sparse)
    for node in _all_nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t.name or f"{node.name or node.op_type}.{attr.name}", attr.t
            for tensor in attr.tensors:
                yield tensor.name or f"{node.name or node.op_type}.{attr.name}", tensor
            if attr.HasField("sparse_tensor"):
                yield from _sparse_parts(attr.sparse_tensor, f"{node.name or node.op_type}")
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse, f"{node.name or node.op_type}")


def _sparse_parts(sparse: SparseTensorProto, owner: str = "") -> Iterator[tuple[str, TensorProto]]:
    """The values and indices of a sparse tensor, named after the tensor (its values' name)."""
    name = sparse.values.name or sparse.indices.name or owner or "sparse tensor"
    yield f"{name} (sparse values)", sparse.values
    yield f"{name} (sparse indices)", sparse.indices


def _external_refs(model: ModelProto, folder: Path) -> Iterator[_ExternalRef]:
    real_folder = folder.resolve()
    for name, tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        yield _judge_location(name, location, info, real_folder)


def _judge_location(tensor: str, location: str, info: dict[str, str], folder: Path) -> _ExternalRef:
    def bad(problem: str) -> _ExternalRef:
        return _ExternalRef(tensor, location, None, problem)

    if not location:
        return bad("is empty")
    if "\x00" in location:
        return bad("contains a NUL byte")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location.startswith("\\"):
        return bad("is an absolute path")
    if ".." in posix.parts or ".." in windows.parts:
        return bad("escapes the model folder with '..'")
    target = (folder / location).resolve()
    if not inside(target, folder):
        return bad(f"resolves to {target}, outside the model folder (a symlink?)")
    if not target.is_file():
        return bad("does not exist (ship the external data file next to the model)")
    try:
        offset, length = int(info.get("offset", "0")), int(info.get("length", "0"))
    except ValueError:
        return bad("has a non-numeric offset or length")
    if offset < 0 or length < 0:
        return bad(f"has a negative offset ({offset}) or length ({length})")
    end = offset + length
    if end > target.stat().st_size:
        return bad(f"reads up to byte {end}, past the end of the {target.stat().st_size}-byte file")
    return _ExternalRef(tensor, location, target, None)
