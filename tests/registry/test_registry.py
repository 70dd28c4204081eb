"""Registering ONNX models as MLflow model versions: versions, aliases, tags, verified loads."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import model_factory
import pytest
import yaml
from conftest import DIGITS, IMAGES, SHAPES

from cvdeploy.errors import ConfigError
from cvdeploy.registry import (
    ModelVersion,
    Registry,
    RegistryError,
    RegistryNotFoundError,
    UnsafePathError,
)
from cvdeploy.registry.card import MAX_REFERENCE_IMAGES
from cvdeploy.runtime.onnx import file_sha256


@pytest.fixture(scope="module")
def digits(registry: Registry) -> tuple[ModelVersion, ModelVersion]:
    first = registry.register(DIGITS, "digits", source_commit="abc123", description="first")
    second = registry.register(DIGITS, "digits", reference_images=IMAGES)
    return first, second


def _model_dir(version: ModelVersion) -> Path:
    return Path(version.source.removeprefix("file://"))


def test_two_versions_are_numbered_in_order(registry: Registry, digits):
    assert [v.version for v in digits] == ["1", "2"]
    assert [v.version for v in registry.versions("digits")] == ["1", "2"]
    assert registry.get_version("digits").version == "2"
    assert "digits" in [m.name for m in registry.list_models()]


def test_tags_record_task_sha256_input_size_and_commit(registry: Registry, digits):
    first = registry.get_version("digits", 1)
    assert first.task == "classification"
    assert first.sha256 == file_sha256(DIGITS)
    assert first.tags["input_size"] == "32x32"
    assert first.tags["source_commit"] == "abc123"
    assert first.description == "first"
    assert "source_commit" not in registry.get_version("digits", 2).tags


def test_state_lives_in_cvdeploy_home(home: Path, registry: Registry, digits):
    assert registry.uri == f"sqlite:////{home.resolve().as_posix().lstrip('/')}/mlflow.db"
    assert (home / "mlflow.db").is_file()
    assert _model_dir(digits[0]).resolve().is_relative_to((home / "artifacts").resolve())


def test_artifact_is_a_code_based_pyfunc_without_pickles(digits):
    folder = _model_dir(digits[0])
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavour = mlmodel["flavors"]["python_function"]
    assert flavour["loader_module"] == "cvdeploy.registry.pyfunc"
    assert flavour["data"] == "data"
    assert "python_model" not in flavour
    assert "cloudpickle_version" not in flavour
    assert json.loads(mlmodel["signature"]["inputs"])[0]["name"] == "image"
    assert (folder / "requirements.txt").read_text().split() == ["cvdeploy"]
    assert not list(folder.rglob("*.pkl"))
    card = json.loads((folder / "data" / "model_card.json").read_text())
    assert card["labels"] == [str(i) for i in range(10)]
    assert card["input_size"] == [32, 32]
    assert card["task"] == "classification"


def test_reference_images_are_copied_under_our_own_names(registry: Registry, digits):
    card = registry.card("digits", 2)
    count = len([p for p in IMAGES.iterdir() if p.is_file()])
    assert len(card.reference_images) == min(count, MAX_REFERENCE_IMAGES)
    assert all(p.startswith("data/reference_images/") for p in card.reference_images)
    assert (_model_dir(digits[1]) / card.reference_images[0]).is_file()
    assert registry.card("digits", 1).reference_images == []


def test_reference_folder_skips_symlinks(registry: Registry, tmp_path: Path):
    folder = tmp_path / "refs"
    folder.mkdir()
    shutil.copy(IMAGES / "digit_1.png", folder / "a.png")
    (folder / "b.png").symlink_to(IMAGES / "digit_2.png")
    version = registry.register(DIGITS, "refs_model", reference_images=folder)
    assert len(registry.card("refs_model", version.version).reference_images) == 1


def test_aliases_champion_and_candidate(registry: Registry, digits):
    registry.set_alias("digits", "champion", 1)
    registry.set_alias("digits", "candidate", "2")
    assert registry.get_version("digits", "champion").version == "1"
    assert registry.get_version("digits", "candidate").aliases == ["candidate"]
    registry.set_alias("digits", "champion", 2)
    assert registry.get_version("digits", "champion").version == "2"
    model = next(m for m in registry.list_models() if m.name == "digits")
    assert model.aliases == {"champion": "2", "candidate": "2"}
    assert model.latest_version == "2"


def test_invalid_alias_and_name_are_config_errors(registry: Registry, digits):
    with pytest.raises(ConfigError, match="alias"):
        registry.set_alias("digits", "7", 1)
    with pytest.raises(ConfigError, match="model name"):
        registry.register(DIGITS, "bad name'")


def test_unknown_model_version_and_alias_are_404(registry: Registry, digits):
    with pytest.raises(RegistryNotFoundError, match="no registered model named 'nope'") as info:
        registry.get_version("nope", 1)
    assert info.value.status_code == 404
    with pytest.raises(RegistryNotFoundError, match="no version '99'"):
        registry.get_version("digits", 99)
    with pytest.raises(RegistryNotFoundError, match="no alias 'staging'"):
        registry.model_path("digits", "staging")


def test_model_path_is_verified_against_the_sha256_tag(registry: Registry, digits):
    path = registry.model_path("digits", "1")
    assert file_sha256(path) == file_sha256(DIGITS)
    assert path.name == "model.onnx"


def test_tampered_artifact_is_refused(registry: Registry):
    version = registry.register(DIGITS, "tampered")
    path = registry.model_path("tampered", version.version)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="sha256") as info:
        registry.model_path("tampered", version.version)
    assert info.value.status_code == 409


@pytest.mark.parametrize("onnx", ["../../../../etc/passwd", "/etc/passwd", "data%2F..%2Fx"])
def test_card_pointing_outside_the_version_is_refused(registry: Registry, onnx: str):
    version = registry.register(DIGITS, "escape")
    card_file = _model_dir(version) / "data" / "model_card.json"
    card = json.loads(card_file.read_text())
    card["onnx"] = onnx
    card_file.write_text(json.dumps(card))
    with pytest.raises(UnsafePathError):
        registry.model_path("escape", version.version)


def test_version_source_outside_the_store_is_refused(registry: Registry, tmp_path: Path):
    version = registry.register(DIGITS, "moved")
    outside = tmp_path / "model"
    shutil.copytree(_model_dir(version), outside)
    with sqlite3.connect(registry.uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE model_versions SET source = ? WHERE name = 'moved'", (outside.as_uri(),))
    with pytest.raises(UnsafePathError, match="outside the artifact store"):
        registry.model_path("moved", version.version)


def test_detector_registers_with_its_task(registry: Registry):
    version = registry.register(SHAPES, "shapes", task="yolo")
    assert version.task == "detection"
    assert registry.card("shapes").labels


def test_fake_model_with_labels_file(registry: Registry, tmp_path: Path):
    onnx = model_factory.make_classifier_model(tmp_path / "colors.onnx", num_classes=3)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    version = registry.register(onnx, "colors", labels=labels)
    assert registry.card("colors", version.version).labels == ["red", "green", "blue"]


def test_broken_file_is_not_registered(registry: Registry, tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match=r"bad\.onnx"):
        registry.register(bad, "broken")
    with pytest.raises(RegistryNotFoundError):
        registry.versions("broken")


def test_delete_version_then_model(registry: Registry):
    registry.register(DIGITS, "doomed")
    registry.register(DIGITS, "doomed")
    registry.delete_version("doomed", 1)
    assert [v.version for v in registry.versions("doomed")] == ["2"]
    registry.delete_model("doomed")
    with pytest.raises(RegistryNotFoundError):
        registry.versions("doomed")
    with pytest.raises(RegistryNotFoundError):
        registry.delete_model("doomed")


def test_importing_the_registry_does_not_import_mlflow():
    code = "import sys, cvdeploy.registry; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
