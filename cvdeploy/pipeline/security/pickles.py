"""Pickle-based files: found by their bytes, refused, or scanned by picklescan when allowed.

Unpickling runs arbitrary code, so a pickle is never loaded here: the bytes say whether a file is
pickle (a protocol header, a pickle stream that parses without one, a zip archive holding
``data.pkl``, an ``.npy``/``.npz`` whose dtype holds Python objects), the suffix only where the
bytes cannot, and ``picklescan`` disassembles the opcodes to list the globals a pickle would
import. A file whose bytes cannot be inspected (unreadable, a corrupt zip member or ``.npy``
header) raises, so the caller can fail the check instead of passing it.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

import numpy as np

from cvdeploy.pipeline.security.paths import relative
from cvdeploy.pipeline.security.pickle_stream import SNIFF_WINDOW, pickle_stream_kind
from cvdeploy.pipeline.stages import StageResult

__all__ = ["PICKLE_SUFFIXES", "check_pickles", "pickle_kind"]

#: Suffixes of pickle-based formats (PyTorch, joblib, scikit-learn, NumPy object arrays,
#: Keras' legacy ``.h5`` is not pickle and not listed). ``.bin``, ``.npy`` and ``.npz`` are
#: pickle only when their content says so (see :func:`pickle_kind`).
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
# Suffixes that may be pickle or not: refused only when the bytes say pickle.
_SNIFFED_SUFFIXES: Final = frozenset({".bin", ".npy", ".npz"})
_ZIP_MAGIC: Final = b"PK\x03\x04"
_NPY_MAGIC: Final = b"\x93NUMPY"
# What reading a damaged zip archive or member raises (RuntimeError: an encrypted member).
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)


def pickle_kind(file: Path) -> str | None:
    """Why ``file`` is pickle-based, by its bytes first and its suffix second; else None.

    Raises:
        OSError: the file cannot be read.
        ValueError: a zip archive or ``.npy`` header that does not parse, so it cannot be
            inspected (``numpy.load`` or ``torch.load`` would not read it either, but nothing
            here can tell what it holds).
    """
    with file.open("rb") as handle:
        head = handle.read(SNIFF_WINDOW + 1)
    truncated = len(head) > SNIFF_WINDOW
    head = head[:SNIFF_WINDOW]
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]} header"
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(file)
    if head.startswith(_NPY_MAGIC):
        with file.open("rb") as handle:
            objects = _npy_has_objects(handle)
        return "npy whose dtype holds Python objects (pickled)" if objects else None
    stream = pickle_stream_kind(head, truncated=truncated)
    if stream is not None:
        return f"{stream}, no protocol header"
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES and suffix not in _SNIFFED_SUFFIXES:
        return f"{suffix} suffix"
    return None


def _zip_kind(file: Path) -> str | None:
    """PyTorch's zip (a ``.pkl`` member) or an ``.npz`` with object arrays (any suffix)."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            pickled = [n for n in names if n.endswith((".pkl", ".pickle"))]
            if pickled:
                return f"zip archive holding {pickled[0]} (PyTorch's format)"
            for name in names:
                if not name.endswith(".npy"):
                    continue
                try:
                    with archive.open(name) as member:
                        objects = _npy_has_objects(member)
                except _ZIP_ERRORS as exc:
                    raise ValueError(
                        f"zip member {name} cannot be read ({type(exc).__name__}: {exc})"
                    ) from exc
                if objects:
                    return f"npz whose member {name} holds Python objects (pickled)"
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"corrupt zip archive ({type(exc).__name__}: {exc})") from exc
    return None


def _npy_has_objects(handle: IO[bytes]) -> bool:
    """Whether an ``.npy`` stream's dtype holds objects anywhere (structured fields too).

    Raises:
        ValueError: the header does not parse (numpy's own reader; never ``allow_pickle``).
    """
    try:
        version = np.lib.format.read_magic(handle)
        # Format 3.0 only differs from 2.0 by a UTF-8 header, which latin-1 still parses.
        if version == (1, 0):
            _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            _shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError:
        raise
    except Exception as exc:  # literal_eval of untrusted text raises tokenize/syntax errors too
        raise ValueError(f"npy header does not parse ({type(exc).__name__}: {exc})") from exc
    return bool(dtype.hasobject)


def check_pickles(stage: StageResult, pickles: Sequence[tuple[Path, str]], root: Path) -> None:
    """The ``pickle_scan`` check: fails on dangerous globals or a pickle that does not parse."""
    from picklescan.scanner import SafetyLevel, scan_file_path

    bad: list[str] = []
    clean: list[str] = []
    for file, _why in pickles:
        name = relative(file, root)
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
