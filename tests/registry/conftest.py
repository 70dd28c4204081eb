"""A registry in a temporary $CVDEPLOY_HOME, shared by a module to keep MLflow's DB set-up cheap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import cvdeploy

DEMO = Path(cvdeploy.__file__).parent / "demo"
DIGITS = DEMO / "digits_classifier.onnx"
SHAPES = DEMO / "shapes_detector.onnx"
IMAGES = DEMO / "images"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("cvdeploy_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CVDEPLOY_HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def registry(home: Path):
    from cvdeploy.registry import Registry

    return Registry()
