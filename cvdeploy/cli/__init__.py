"""The ``cvdeploy`` command line."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """Entry point of the ``cvdeploy`` console script."""
    from cvdeploy.cli.app import app

    app()
