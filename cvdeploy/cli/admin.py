"""``cvdeploy audit``, ``cvdeploy backup`` and ``cvdeploy restore``: operating the platform state.

A backup is one ``.tar.gz`` holding ``manifest.json``, ``platform.db`` (endpoints, revisions,
tokens, audit), ``mlflow.db`` (the registry) and ``artifacts/`` (the registry's files). Both
databases are copied with SQLite's online backup, so the platform may keep running; they are
copied before the artifacts, so every version the copied registry names already has its files.

A backup is data from elsewhere, so restore trusts nothing in it: every member must be a plain
file or folder with a relative name inside the archive's known layout, and every file must
match the size and sha256 the manifest lists. The registry stores absolute artifact URIs; when
the archive comes from another ``$CVDEPLOY_HOME`` they are rewritten to the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy import __version__
from cvdeploy._hashing import file_sha256
from cvdeploy.cli.output import console, err_console, fail, print_json, when
from cvdeploy.errors import ConfigError, CVDeployError
from cvdeploy.registry.paths import cvdeploy_home

__all__ = ["audit", "backup", "restore"]

FORMAT = 1
MANIFEST = "manifest.json"
DATABASES = ("platform.db", "mlflow.db")
ARTIFACTS = "artifacts"
_SUMMARY_KEYS = ("config_update", "current_revision", "pending_revision", "scope", "id")


# -- audit -------------------------------------------------------------------------------------


def summarize(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """A one-line ``before -> after`` of the fields an operator scans for.

    Configs are named by their revision numbers (``--json`` has them in full).
    """
    old, new = before or {}, after or {}

    def show(value: Any) -> str:
        return "-" if value is None else str(value)

    parts = [
        f"{key}: {show(old.get(key))} -> {show(new.get(key))}"
        for key in _SUMMARY_KEYS
        if old.get(key) != new.get(key)
    ]
    return "; ".join(parts) or "-"


def audit(
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint's entries.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Entries to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the append-only audit log of management changes, newest first."""
    from cvdeploy.platforms.local import PlatformState

    try:
        with PlatformState() as state:
            entries = state.audit(limit, endpoint=endpoint)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(
            [
                {
                    "seq": e.seq,
                    "at": e.at,
                    "who": e.who,
                    "action": e.action,
                    "endpoint": e.endpoint,
                    "before": e.before,
                    "after": e.after,
                    "summary": summarize(e.before, e.after),
                }
                for e in entries
            ]
        )
        return
    table = Table(title=f"{len(entries)} audit entr(y/ies), newest first", title_justify="left")
    for column in ("when (UTC)", "who", "action", "endpoint", "change"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            when(e.at),
            escape(e.who),
            escape(e.action),
            escape(e.endpoint or "-"),
            escape(summarize(e.before, e.after)),
        )
    console.print(table)


# -- backup ------------------------------------------------------------------------------------


def _sqlite_copy(src: Path, dest: Path) -> None:
    # The online backup API gives a consistent snapshot even while another process writes.
    with (
        contextlib.closing(sqlite3.connect(src)) as source,
        contextlib.closing(sqlite3.connect(dest)) as target,
    ):
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")


def _artifact_files(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                raise ConfigError(
                    f"{path} is a link or special file; the artifact store should hold only "
                    "plain files, remove it and retry"
                )
            files.append(path)
    return files


def create_backup(dest: Path, home: Path, max_bytes: int) -> dict[str, Any]:
    """Write the archive ``dest`` from ``home``; returns the manifest.

    Raises:
        ConfigError: Nothing to back up, ``dest`` exists, or the data exceeds ``max_bytes``.
    """
    from cvdeploy.platforms.local import PlatformState

    if dest.exists():
        raise ConfigError(f"{dest} already exists; pick a new file name")
    present = [name for name in DATABASES if (home / name).is_file()]
    if not present:
        raise ConfigError(f"{home} has no platform state or registry to back up")
    artifacts = home / ARTIFACTS
    artifact_files = _artifact_files(artifacts) if artifacts.is_dir() else []
    total = sum(p.stat().st_size for p in artifact_files)
    total += sum((home / name).stat().st_size for name in present)
    if total > max_bytes:
        raise ConfigError(
            f"the state in {home} is {total} bytes, above --max-bytes {max_bytes}; raise the "
            "limit or back the artifact store up with a tool made for large files"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=dest.parent) as tmp:
        staging = Path(tmp)
        if "platform.db" in present:
            with PlatformState(home / "platform.db") as state:
                state.backup(staging / "platform.db")
        if "mlflow.db" in present:
            _sqlite_copy(home / "mlflow.db", staging / "mlflow.db")
        files: list[tuple[str, Path]] = [(name, staging / name) for name in present]
        files += [(p.relative_to(home).as_posix(), p) for p in artifact_files]
        manifest = {
            "format": FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cvdeploy_version": __version__,
            "artifacts_dir": str((home / ARTIFACTS).resolve()),
            "files": [
                {"path": name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
                for name, path in files
            ],
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        partial = staging / "backup.tar.gz"
        with tarfile.open(partial, "w:gz") as archive:
            archive.add(staging / MANIFEST, MANIFEST)
            for name, path in files:
                archive.add(path, name, recursive=False)
        os.replace(partial, dest)
    return manifest


def backup(
    file: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz).")],
    max_bytes: Annotated[
        int, typer.Option(min=1, help="Refuse when the state is larger [2 GiB].")
    ] = 2 << 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Back up the platform state, the registry database and its artifacts into FILE."""
    try:
        manifest = create_backup(file, cvdeploy_home(), max_bytes)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(manifest)
        return
    size = sum(f["bytes"] for f in manifest["files"])
    console.print(
        f"backed up {len(manifest['files'])} file(s), {size} bytes, to {escape(str(file))}"
    )


# -- restore -----------------------------------------------------------------------------------


def _check_member(member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or "\x00" in name:
        raise ConfigError(f"archive member {name!r} has an absolute or non-POSIX name; refused")
    if ".." in path.parts:
        raise ConfigError(f"archive member {name!r} leaves the target folder; refused")
    if not (member.isfile() or member.isdir()):
        raise ConfigError(f"archive member {name!r} is a link or special file; refused")
    if not (name in (MANIFEST, *DATABASES) or path.parts[0] == ARTIFACTS):
        raise ConfigError(f"archive member {name!r} is not part of a cvdeploy backup; refused")
    return path


def _extract(src: Path, into: Path) -> dict[str, Any]:
    """Check every member, then write them under ``into``; returns the verified manifest."""
    try:
        archive = tarfile.open(src, "r:gz")  # noqa: SIM115 - closed by the `with` below
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"{src} is not a cvdeploy backup archive: {exc}") from None
    with archive:
        try:
            members = archive.getmembers()
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise ConfigError(f"{src} is not a readable backup archive: {exc}") from None
        paths = [_check_member(m) for m in members]
        if MANIFEST not in {m.name for m in members}:
            raise ConfigError(f"{src} has no {MANIFEST}; it is not a cvdeploy backup")
        for member, path in zip(members, paths, strict=True):
            target = into.joinpath(*path.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            stream = archive.extractfile(member)
            if stream is None:
                raise ConfigError(f"archive member {member.name!r} cannot be read")
            with stream, target.open("wb") as out:
                shutil.copyfileobj(stream, out)
    try:
        manifest: dict[str, Any] = json.loads((into / MANIFEST).read_text())
        listed = {f["path"]: f for f in manifest["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{src}: {MANIFEST} is not valid: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{src}: backup format {manifest.get('format')!r} is not supported")
    found = {m.name for m in members if m.isfile()} - {MANIFEST}
    if found != set(listed):
        raise ConfigError(f"{src}: the files do not match {MANIFEST}; the archive is damaged")
    for name, entry in listed.items():
        if file_sha256(into / name) != entry["sha256"]:
            raise ConfigError(f"{src}: {name} does not match its sha256; the archive is damaged")
    return manifest


def _rewrite_prefix(db: Path, old: str, new: str) -> None:
    """Point every text value under ``old`` (a folder, as path and file URI) at ``new``."""
    if old == new:
        return
    pairs = [(old, new), (Path(old).as_uri(), Path(new).as_uri())]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if "CHAR" not in column[2].upper() and "TEXT" not in column[2].upper():
                    continue
                for before, after in pairs:
                    conn.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = ? || substr("{column[1]}", ?)'
                        f' WHERE "{column[1]}" = ? OR substr("{column[1]}", 1, ?) = ?',
                        (after, len(before) + 1, before, len(before) + 1, before + "/"),
                    )
        conn.commit()


def restore_backup(src: Path, home: Path, *, force: bool) -> dict[str, Any]:
    """Replace the state in ``home`` with the archive ``src``; returns its manifest.

    Raises:
        ConfigError: The target has state and ``force`` is off, or the archive is invalid.
    """
    from cvdeploy.platforms.local import PlatformState

    if not src.is_file():
        raise ConfigError(f"backup {src} does not exist")
    existing = [n for n in (*DATABASES, ARTIFACTS) if (home / n).exists()]
    if existing and not force:
        raise ConfigError(
            f"{home} already has {', '.join(existing)}; pass --force to replace it "
            "(stop the platform first)"
        )
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=home) as tmp:
        staging = Path(tmp)
        manifest = _extract(src, staging)
        new_artifacts = str((home / ARTIFACTS).resolve())
        if (staging / "mlflow.db").is_file():
            _rewrite_prefix(staging / "mlflow.db", str(manifest["artifacts_dir"]), new_artifacts)
            # Validate before touching the target: a damaged file must not replace a good one.
            with contextlib.closing(sqlite3.connect(staging / "mlflow.db")) as conn:
                if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    raise ConfigError(f"{src}: mlflow.db is damaged")
        if (staging / "platform.db").is_file():
            PlatformState.restore(staging / "platform.db", home / "platform.db")
        if (staging / "mlflow.db").is_file():
            for suffix in ("-wal", "-shm", "-journal"):
                Path(f"{home / 'mlflow.db'}{suffix}").unlink(missing_ok=True)
            os.replace(staging / "mlflow.db", home / "mlflow.db")
        shutil.rmtree(home / ARTIFACTS, ignore_errors=True)
        if (staging / ARTIFACTS).is_dir():
            os.replace(staging / ARTIFACTS, home / ARTIFACTS)
    return manifest


def restore(
    file: Annotated[Path, typer.Argument(help="Archive written by `cvdeploy backup`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace existing state.")] = False,
) -> None:
    """Restore the platform state, registry and artifacts from FILE (stop the platform first)."""
    home = cvdeploy_home()
    err_console.print(
        "stop the platform and any `cvdeploy` process using "
        f"{escape(str(home))} before restoring; running servers keep the old state"
    )
    try:
        manifest = restore_backup(file, home, force=force)
    except CVDeployError as exc:
        raise fail(exc) from None
    console.print(
        f"restored {len(manifest['files'])} file(s) into {escape(str(home))} "
        f"(backup of {escape(str(manifest.get('created_at')))}, "
        f"cvdeploy {escape(str(manifest.get('cvdeploy_version')))})"
    )
