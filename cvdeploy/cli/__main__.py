"""``python -m cvdeploy.cli``: the same as the ``cvdeploy`` console script."""

from __future__ import annotations

from cvdeploy.cli import main

main()
