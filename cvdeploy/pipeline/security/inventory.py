"""What the artifact holds, sorted into ONNX files, pickles and everything else.

A single file is classified by its content whatever its suffix. A folder is walked without
following directory symlinks; a symlink (file or folder) that resolves outside the folder is
recorded, never read. A subfolder that cannot be listed or a file whose bytes cannot be
inspected is recorded as ``unreadable``: what cannot be looked at cannot be called safe. Files
an ONNX model names as its external data are raw tensor bytes that may happen to start like a
pickle, so they are not sniffed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import onnx
from onnx import ModelProto

from cvdeploy.pipeline.security.onnx_graph import external_data_files
from cvdeploy.pipeline.security.paths import inside
from cvdeploy.pipeline.security.pickles import pickle_kind

__all__ = ["Inventory", "take_inventory"]

_ONNX_SUFFIXES: Final = frozenset({".onnx"})


@dataclass
class Inventory:
    """The classified files; ``models`` parses each of ``onnx_files`` (external data not loaded)."""

    root: Path
    onnx_files: list[Path] = field(default_factory=list)
    pickles: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it is pickle)
    not_onnx: list[tuple[Path, str]] = field(default_factory=list)  # .onnx that does not parse
    escaping_links: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file or folder, why)
    files: int = 0
    models: dict[Path, ModelProto] = field(default_factory=dict)


def take_inventory(root: Path) -> Inventory:
    """Classify ``root``: one model file, or every file under a model folder."""
    if root.is_file():
        inventory = Inventory(root.parent)
        inventory.files = 1
        _classify(inventory, root, single=True)
        return inventory
    inventory = Inventory(root)
    real_root = root.resolve()
    candidates: list[Path] = []

    def unlistable(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename else root
        inventory.unreadable.append((folder, f"cannot be listed: {exc.strerror or exc}"))

    # os.walk does not follow directory symlinks; a linked file is checked where it points.
    for base, dirs, names in os.walk(root, onerror=unlistable):
        dirs.sort()
        for name in list(dirs):
            folder = Path(base) / name
            if folder.is_symlink() and not inside(folder.resolve(), real_root):
                inventory.escaping_links.append(folder)
                dirs.remove(name)
        for name in sorted(names):
            file = Path(base) / name
            inventory.files += 1
            if file.is_symlink() and not inside(file.resolve(), real_root):
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


def _classify(inventory: Inventory, file: Path, *, single: bool) -> None:
    try:
        why = pickle_kind(file)
    except OSError as exc:
        inventory.unreadable.append((file, f"cannot be read: {exc.strerror or exc}"))
        return
    except ValueError as exc:
        inventory.unreadable.append((file, str(exc)))
        return
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
