"""Path helpers the checks share: containment (symlinks, external data) and display names."""

from __future__ import annotations

from pathlib import Path

__all__ = ["inside", "relative"]


def inside(path: Path, root: Path) -> bool:
    """Whether the resolved ``path`` is ``root`` or lies under it."""
    return path == root or path.is_relative_to(root)


def relative(file: Path, root: Path) -> str:
    """``file`` relative to ``root`` for messages, or the full path when it is elsewhere."""
    try:
        return str(file.relative_to(root))
    except ValueError:
        return str(file)
