"""Fixtures that run the real platform: a registry with the demo classifier, replica processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import DIGITS

from cvdeploy.registry import Registry


@pytest.fixture(scope="module")
def platform_home(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """A ``$CVDEPLOY_HOME`` with ``cv_model`` versions 1 and 2 (the demo digits classifier)."""
    home = tmp_path_factory.mktemp("cvdeploy-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("CVDEPLOY_HOME", str(home))
    registry = Registry(home=home)
    registry.register(DIGITS, "cv_model")
    registry.register(DIGITS, "cv_model")
    yield home
    patch.undo()
