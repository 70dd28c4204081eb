"""The ``security`` stage: take the inventory of a file or model folder and run every check.

Each risk is its own check, so a report shows all of them at once rather than stopping at the
first: ``format`` (only ONNX is served; pickles, files that do not parse, files or folders that
cannot be read and symlinks out of the folder are refused), ``pickle_scan``, ``onnx_checker``,
``external_data``, ``op_domains``, ``size`` (the ONNX files plus their external data) and
``sha256`` (the served file against its registered digest). A check that cannot run says so
(``None``) instead of passing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cvdeploy._hashing import file_sha256
from cvdeploy.pipeline.security.inventory import Inventory, take_inventory
from cvdeploy.pipeline.security.onnx_graph import (
    check_external_data,
    check_onnx_checker,
    check_op_domains,
    onnx_footprint,
)
from cvdeploy.pipeline.security.paths import relative
from cvdeploy.pipeline.security.pickles import check_pickles
from cvdeploy.pipeline.stages import StageResult, timed_stage

__all__ = ["assess_security"]


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
        inventory = take_inventory(root)
        stage.figures["files"] = float(inventory.files)
        _check_format(stage, inventory, allow_pickle)
        if allow_pickle and inventory.pickles:
            check_pickles(stage, inventory.pickles, inventory.root)
        check_onnx_checker(stage, inventory.models, inventory.root)
        check_external_data(stage, inventory.models, inventory.root)
        check_op_domains(stage, inventory.models, allowed_op_domains)
        _check_size(stage, inventory, max_model_bytes)
        _check_sha256(stage, inventory, expected_sha256)
    return stage


def _check_format(stage: StageResult, inventory: Inventory, allow_pickle: bool) -> None:
    root = inventory.root
    problems: list[str] = []
    for file, error in inventory.not_onnx:
        problems.append(f"{relative(file, root)} is not a valid ONNX model ({error})")
    for item, why in inventory.unreadable:
        problems.append(
            f"{relative(item, root)} could not be inspected ({why}); make it readable, or "
            "remove it from the model folder"
        )
    for link in inventory.escaping_links:
        problems.append(
            f"{relative(link, root)} is a symlink to {link.resolve()}, outside the model folder"
        )
    if inventory.pickles and not allow_pickle:
        listed = ", ".join(f"{relative(f, root)} ({why})" for f, why in inventory.pickles)
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
    names = ", ".join(relative(f, root) for f in inventory.onnx_files)
    stage.check("format", True, f"ONNX model(s): {names}{note}", value=len(inventory.onnx_files))


def _check_size(stage: StageResult, inventory: Inventory, limit: int | None) -> None:
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


def _check_sha256(stage: StageResult, inventory: Inventory, expected: str | None) -> None:
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
    wanted = expected.strip().lower()
    if actual != wanted:
        stage.check(
            "sha256",
            False,
            f"{relative(target, inventory.root)} has sha256 {actual}, not the registered "
            f"{wanted}: the artifact changed since registration; register it again if the "
            "change is intended, else treat the store as tampered",
            value=actual,
            threshold=wanted,
        )
    else:
        stage.check("sha256", True, "sha256 matches the registered digest", actual, wanted)


def _primary_onnx(inventory: Inventory) -> Path | None:
    """The served model: the only ONNX file, else the MLflow folder's ``data/model.onnx``."""
    if len(inventory.onnx_files) == 1:
        return inventory.onnx_files[0]
    card_path = inventory.root / "data" / "model.onnx"
    return card_path if card_path in inventory.onnx_files else None
