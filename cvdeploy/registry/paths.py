"""Where registry state lives, and the one gate every artifact path goes through.

A model version's files are addressed by relative paths written in its model card; a card is
data that anyone with write access to the store (or a crafted download) controls, so a path is
accepted only when it is plain, relative, and stays inside the version's folder with no
symbolic link on the way.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from cvdeploy.registry.errors import UnsafePathError

__all__ = ["artifacts_dir", "cvdeploy_home", "default_registry_uri", "safe_join", "safe_relpath"]


def cvdeploy_home() -> Path:
    """``$CVDEPLOY_HOME``, default ``~/.cvdeploy`` (not created here)."""
    value = os.environ.get("CVDEPLOY_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cvdeploy"


def default_registry_uri(home: Path | None = None) -> str:
    """The SQLite registry of ``home``; an absolute SQLite URI has four slashes."""
    root = (home or cvdeploy_home()).expanduser().resolve()
    return f"sqlite:///{root.as_posix()}/mlflow.db"


def artifacts_dir(home: Path | None = None) -> Path:
    return (home or cvdeploy_home()).expanduser().resolve() / "artifacts"


def safe_relpath(relative: str) -> PurePosixPath:
    """Check that ``relative`` is a plain relative path; return it as a POSIX path.

    Raises:
        UnsafePathError: empty, absolute, ``..``, backslashes, NUL, or percent-encoded.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafePathError(f"artifact path {relative!r} is empty or not text")
    if unquote(relative) != relative:
        # An encoded form (%2e%2e%2f) may be decoded by a later layer; refuse it outright.
        raise UnsafePathError(f"artifact path {relative!r} is percent-encoded; use a plain name")
    if "\\" in relative or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePathError(f"artifact path {relative!r} uses Windows separators or a drive")
    path = PurePosixPath(relative)
    if path.is_absolute():
        raise UnsafePathError(f"artifact path {relative!r} is absolute; it must be relative")
    if ".." in path.parts or any(part in ("", ".") for part in relative.split("/")):
        raise UnsafePathError(f"artifact path {relative!r} leaves its folder or is not normalised")
    return path


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` without symbolic links.

    Raises:
        UnsafePathError: the path is unsafe (see :func:`safe_relpath`) or crosses a symlink.
    """
    parts = safe_relpath(relative).parts
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"artifact path {relative!r} crosses a symbolic link")
    resolved_root = root.resolve()
    if not current.resolve().is_relative_to(resolved_root):
        raise UnsafePathError(f"artifact path {relative!r} leaves the store")
    return current
