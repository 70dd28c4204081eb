"""Security assessment: is this artifact safe to hand to a model server?

A model file is code-adjacent: a pickle runs arbitrary code when it is loaded, an ONNX file can
point its external data at any file on the server (``../../etc/shadow``) and can need custom
operators that only a native library the server would have to load can run. This stage reads the
artifact without executing any of it (the ONNX protobuf is parsed, never run; pickles are
disassembled by ``picklescan``, never unpickled) and reports each risk as its own check.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from cvdeploy._hashing import file_sha256
from cvdeploy.pipeline.stages import StageResult, timed_stage

__all__ = [
    "PICKLE_SUFFIXES",
    "STANDARD_OP_DOMAINS",
    "assess_security",
    "external_data_files",
    "onnx_footprint",
]

#: Suffixes of pickle-based formats (PyTorch, joblib, scikit-learn, NumPy object arrays,
#: Keras' legacy ``.h5`` is not pickle and not listed). ``.bin``, ``.npy`` and ``.npz`` are
#: pickle only when their content says so (see :func:`_pickle_kind`).
PICKLE_SUFFIXES: Final = frozenset(
    {
        ".pt",
        ".pth",
        ".pkl",
        ".pickle",
        ".joblib",
        ".ckpt",
        ".dill",
        ".sav",
        ".mar",
        ".bin",
        ".npy",
        ".npz",
    }
)
#: Op domains every ONNX Runtime build implements; anything else needs a custom-op library.
STANDARD_OP_DOMAINS: Final = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_ONNX_SUFFIXES: Final = frozenset({".onnx"})
# Suffixes that may be pickle or not: refused only when the bytes say pickle.
_SNIFFED_SUFFIXES: Final = frozenset({".bin", ".npy", ".npz"})
_ZIP_MAGIC: Final = b"PK\x03\x04"
_NPY_MAGIC: Final = b"\x93NUMPY"


@dataclass
class _Inventory:
    """What the artifact holds, sorted into ONNX files, pickles and everything else."""

    root: Path
    onnx_files: list[Path] = field(default_factory=list)
    pickles: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it is pickle)
    not_onnx: list[tuple[Path, str]] = field(default_factory=list)  # .onnx that does not parse
    escaping_links: list[Path] = field(default_factory=list)
    files: int = 0
    models: dict[Path, ModelProto] = field(default_factory=dict)


def assess_security(
    path: Path,
    *,
    expected_sha256: str | None = None,
    allow_pickle: bool = False,
    max_model_bytes: int | None = None,
    allowed_op_domains: Sequence[str] = (),
) -> StageResult:
    """Check a model file, or a registered version's MLflow model folder, before serving it.

    Args:
        path: an ``.onnx`` file (or any model file), or a folder to inspect recursively.
        expected_sha256: the ONNX file's registered digest; a mismatch means it changed.
        allow_pickle: scan pickle-based files with picklescan instead of refusing them (they are
            still never served: only ONNX is).
        max_model_bytes: limit on the ONNX files plus their external data.
        allowed_op_domains: custom-op domains the server is known to have a library for.

    Returns:
        The ``security`` stage: checks ``format``, ``pickle_scan`` (only with pickles and
        ``allow_pickle``), ``onnx_checker``, ``external_data``, ``op_domains``, ``size`` and
        ``sha256``; figures ``model_bytes`` and ``files``.
    """
    with timed_stage("security") as stage:
        root = Path(path)
        if not root.exists():
            stage.check(
                "format", False, f"{root} does not exist; pass the model file or model folder"
            )
            return stage
        inventory = _take_inventory(root)
        stage.figures["files"] = float(inventory.files)
        _check_format(stage, inventory, allow_pickle)
        if allow_pickle and inventory.pickles:
            _check_pickles(stage, inventory)
        _check_onnx_checker(stage, inventory)
        _check_external_data(stage, inventory)
        _check_op_domains(stage, inventory, allowed_op_domains)
        _check_size(stage, inventory, max_model_bytes)
        _check_sha256(stage, inventory, expected_sha256)
    return stage


# --- inventory ---------------------------------------------------------------------------------


def _take_inventory(root: Path) -> _Inventory:
    if root.is_file():
        inventory = _Inventory(root.parent)
        inventory.files = 1
        _classify(inventory, root, single=True)
        return inventory
    inventory = _Inventory(root)
    real_root = root.resolve()
    candidates: list[Path] = []
    # os.walk does not follow directory symlinks; a linked file is checked where it points.
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in list(dirs):
            folder = Path(base) / name
            if folder.is_symlink() and not _inside(folder.resolve(), real_root):
                inventory.escaping_links.append(folder)
                dirs.remove(name)
        for name in sorted(names):
            file = Path(base) / name
            inventory.files += 1
            if file.is_symlink() and not _inside(file.resolve(), real_root):
                inventory.escaping_links.append(file)
            elif file.suffix.lower() in _ONNX_SUFFIXES:
                _classify(inventory, file, single=False)
            else:
                candidates.append(file)
    # External data is raw tensor bytes that may happen to start like a pickle: not sniffed.
    data_files = {
        f
        for model_file in inventory.onnx_files
        for f in external_data_files(model_file, inventory.models[model_file])
    }
    for file in candidates:
        if file.resolve() not in data_files:
            _classify(inventory, file, single=False)
    return inventory


def _classify(inventory: _Inventory, file: Path, *, single: bool) -> None:
    why = _pickle_kind(file)
    if why is not None:
        inventory.pickles.append((file, why))
        return
    if file.suffix.lower() in _ONNX_SUFFIXES or single:
        try:
            model = onnx.load(str(file), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            inventory.not_onnx.append((file, f"{type(exc).__name__}: {exc}"))
            return
        if not model.graph.node and not model.graph.output:
            # Protobuf parses many byte strings as an empty message; that is not a model.
            inventory.not_onnx.append((file, "it parses as an empty ONNX graph"))
            return
        inventory.onnx_files.append(file)
        inventory.models[file] = model


def _pickle_kind(file: Path) -> str | None:
    """Why ``file`` is pickle-based, by its bytes first and its suffix second; else None."""
    try:
        with file.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    suffix = file.suffix.lower()
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]} header"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        pickled = [n for n in names if n.endswith((".pkl", ".pickle")) or n == "data.pkl"]
        if pickled:
            return f"zip archive holding {pickled[0]} (PyTorch's format)"
        if suffix == ".npz" and any(
            _npy_member_has_objects(archive_file=file, name=n) for n in names
        ):
            return "npz with object arrays (pickled)"
        return None
    if head.startswith(_NPY_MAGIC):
        return "npy with object arrays (pickled)" if _npy_has_objects(file) else None
    if suffix in PICKLE_SUFFIXES and suffix not in _SNIFFED_SUFFIXES:
        return f"{suffix} suffix"
    return None


def _npy_header_has_objects(header: bytes) -> bool:
    return b"'descr': '|O'" in header or b"'descr': 'O'" in header


def _npy_has_objects(file: Path) -> bool:
    with file.open("rb") as handle:
        return _npy_header_has_objects(handle.read(256))


def _npy_member_has_objects(*, archive_file: Path, name: str) -> bool:
    with zipfile.ZipFile(archive_file) as archive, archive.open(name) as member:
        return _npy_header_has_objects(member.read(256))


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _relative(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root))
    except ValueError:
        return str(file)


# --- checks ------------------------------------------------------------------------------------


def _check_format(stage: StageResult, inventory: _Inventory, allow_pickle: bool) -> None:
    root = inventory.root
    problems: list[str] = []
    for file, error in inventory.not_onnx:
        problems.append(f"{_relative(file, root)} is not a valid ONNX model ({error})")
    for link in inventory.escaping_links:
        problems.append(
            f"{_relative(link, root)} is a symlink to {link.resolve()}, outside the model folder"
        )
    if inventory.pickles and not allow_pickle:
        listed = ", ".join(f"{_relative(f, root)} ({why})" for f, why in inventory.pickles)
        problems.append(
            f"pickle-based file(s) refused: {listed}; unpickling runs arbitrary code, so export "
            "the model to ONNX and ship only the .onnx (allow_pickle=True scans them instead)"
        )
    if not inventory.onnx_files:
        problems.append(f"no ONNX model found in {root}; export the model to ONNX")
    if problems:
        stage.check("format", False, "; ".join(problems), value=len(inventory.onnx_files))
        return
    note = (
        f" ({len(inventory.pickles)} pickle file(s) allowed for scanning; only ONNX is served)"
        if inventory.pickles
        else ""
    )
    names = ", ".join(_relative(f, root) for f in inventory.onnx_files)
    stage.check("format", True, f"ONNX model(s): {names}{note}", value=len(inventory.onnx_files))


def _check_pickles(stage: StageResult, inventory: _Inventory) -> None:
    from picklescan.scanner import SafetyLevel, scan_file_path

    bad: list[str] = []
    clean: list[str] = []
    for file, _why in inventory.pickles:
        name = _relative(file, inventory.root)
        result = scan_file_path(str(file))
        dangerous = sorted(
            {f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous}
        )
        if dangerous:
            bad.append(f"{name} imports dangerous globals {', '.join(dangerous)}")
        elif result.scan_err:
            bad.append(f"{name} could not be fully parsed as pickle (treat it as hostile)")
        else:
            suspicious = sorted(
                {
                    f"{g.module}.{g.name}"
                    for g in result.globals
                    if g.safety == SafetyLevel.Suspicious
                }
            )
            extra = f"; unrecognised: {', '.join(suspicious)}" if suspicious else ""
            clean.append(f"{name} scanned clean ({len(result.globals)} globals{extra})")
    if bad:
        stage.check(
            "pickle_scan",
            False,
            "; ".join(bad) + "; never load these files: rebuild the model from trusted code and "
            "export it to ONNX",
            value=len(bad),
        )
    else:
        stage.check(
            "pickle_scan",
            True,
            "; ".join(clean) + "; only ONNX files are served",
            value=0,
        )


def _check_onnx_checker(stage: StageResult, inventory: _Inventory) -> None:
    if not inventory.onnx_files:
        stage.check("onnx_checker", None, "not run: no ONNX model")
        return
    errors: list[str] = []
    for file in inventory.onnx_files:
        try:
            # The path form reads external data and handles models over 2 GB.
            onnx.checker.check_model(str(file))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{_relative(file, inventory.root)}: {first}")
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


def _check_external_data(stage: StageResult, inventory: _Inventory) -> None:
    if not inventory.onnx_files:
        stage.check("external_data", None, "not run: no ONNX model")
        return
    problems: list[str] = []
    count = 0
    for file in inventory.onnx_files:
        for ref in _external_refs(inventory.models[file], file.parent):
            count += 1
            if ref.problem is not None:
                problems.append(
                    f"{_relative(file, inventory.root)}: tensor {ref.tensor!r} location "
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


def _check_op_domains(
    stage: StageResult, inventory: _Inventory, allowed_op_domains: Sequence[str]
) -> None:
    if not inventory.onnx_files:
        stage.check("op_domains", None, "not run: no ONNX model")
        return
    allowed = STANDARD_OP_DOMAINS | set(allowed_op_domains)
    found: set[str] = set()
    foreign: dict[str, set[str]] = {}
    for file in inventory.onnx_files:
        model = inventory.models[file]
        own = {f.domain for f in model.functions}
        for node in _all_nodes(model):
            found.add(node.domain)
            if node.domain not in allowed and node.domain not in own:
                foreign.setdefault(node.domain, set()).add(node.op_type)
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
        shown = sorted(d or "ai.onnx" for d in found)
        stage.check("op_domains", True, f"standard domains only: {', '.join(shown)}", shown)


def _check_size(stage: StageResult, inventory: _Inventory, limit: int | None) -> None:
    total = sum(onnx_footprint(f, inventory.models[f])[0] for f in inventory.onnx_files)
    stage.figures["model_bytes"] = float(total)
    shown = f"{total / 2**20:.2f} MiB ({total} bytes)"
    if limit is None:
        stage.check("size", None, f"no limit set; the model is {shown}", value=total)
    elif total > limit:
        stage.check(
            "size",
            False,
            f"the model is {shown}, over the limit of {limit} bytes; shrink it (quantise, "
            "prune, a smaller architecture) or raise max_model_bytes",
            value=total,
            threshold=limit,
        )
    else:
        stage.check("size", True, f"the model is {shown}", value=total, threshold=limit)


def _check_sha256(stage: StageResult, inventory: _Inventory, expected: str | None) -> None:
    if expected is None:
        stage.check("sha256", None, "no expected sha256 given")
        return
    target = _primary_onnx(inventory)
    if target is None:
        stage.check(
            "sha256",
            False,
            f"cannot tell which of {len(inventory.onnx_files)} ONNX files to hash; pass the "
            "model file itself",
        )
        return
    actual = file_sha256(target)
    if actual != expected.strip().lower():
        stage.check(
            "sha256",
            False,
            f"{_relative(target, inventory.root)} has sha256 {actual}, not the registered "
            f"{expected}: the artifact changed since registration; register it again if the "
            "change is intended, else treat the store as tampered",
            value=actual,
            threshold=expected,
        )
    else:
        stage.check("sha256", True, "sha256 matches the registered digest", actual, expected)


def _primary_onnx(inventory: _Inventory) -> Path | None:
    """The served model: the only ONNX file, else the MLflow folder's ``data/model.onnx``."""
    if len(inventory.onnx_files) == 1:
        return inventory.onnx_files[0]
    card_path = inventory.root / "data" / "model.onnx"
    return card_path if card_path in inventory.onnx_files else None


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


def _all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Initializers and tensor attributes, in the graph, its subgraphs and the functions."""
    for graph in _all_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in _all_nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _external_refs(model: ModelProto, folder: Path) -> Iterator[_ExternalRef]:
    real_folder = folder.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        yield _judge_location(tensor.name, location, info, real_folder)


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
    if not _inside(target, folder):
        return bad(f"resolves to {target}, outside the model folder (a symlink?)")
    if not target.is_file():
        return bad("does not exist (ship the external data file next to the model)")
    try:
        end = int(info.get("offset", "0")) + max(0, int(info.get("length", "0")))
    except ValueError:
        return bad("has a non-numeric offset or length")
    if end > target.stat().st_size:
        return bad(f"reads up to byte {end}, past the end of the {target.stat().st_size}-byte file")
    return _ExternalRef(tensor, location, target, None)


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
