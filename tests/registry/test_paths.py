"""Artifact paths never leave the store; state lives in $CVDEPLOY_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cvdeploy.registry import UnsafePathError, default_registry_uri, safe_join
from cvdeploy.registry.paths import artifacts_dir, cvdeploy_home, safe_relpath


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "data").mkdir(parents=True)
    (root / "data" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_plain_relative_path_is_joined(store: Path):
    assert safe_join(store, "data/model.onnx") == store / "data" / "model.onnx"


@pytest.mark.parametrize("path", ["../secret.txt", "data/../../secret.txt", "data/.."])
def test_dot_dot_is_refused(store: Path, path: str):
    with pytest.raises(UnsafePathError, match="leaves"):
        safe_join(store, path)


@pytest.mark.parametrize("path", ["/etc/passwd", "//server/share"])
def test_absolute_path_is_refused(store: Path, path: str):
    with pytest.raises(UnsafePathError, match="absolute"):
        safe_join(store, path)


@pytest.mark.parametrize(
    "path", ["%2e%2e/secret.txt", "data%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a%00b"]
)
def test_percent_encoded_path_is_refused(store: Path, path: str):
    with pytest.raises(UnsafePathError, match="percent-encoded"):
        safe_join(store, path)


@pytest.mark.parametrize("path", ["..\\secret.txt", "C:/Windows", "", "data//model.onnx", "./x"])
def test_windows_empty_and_unnormalised_paths_are_refused(store: Path, path: str):
    with pytest.raises(UnsafePathError):
        safe_relpath(path)


def test_symlink_to_a_file_outside_is_refused(store: Path):
    (store / "data" / "link.onnx").symlink_to(store.parent / "secret.txt")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        safe_join(store, "data/link.onnx")


def test_symlinked_folder_is_refused_even_inside_the_store(store: Path):
    (store / "alias").symlink_to(store / "data", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        safe_join(store, "alias/model.onnx")


def test_default_uri_is_an_absolute_sqlite_file_in_home(tmp_path: Path):
    uri = default_registry_uri(tmp_path)
    assert uri == f"sqlite:////{tmp_path.resolve().as_posix().lstrip('/')}/mlflow.db"
    assert artifacts_dir(tmp_path) == tmp_path.resolve() / "artifacts"


def test_home_defaults_to_dot_cvdeploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("CVDEPLOY_HOME", raising=False)
    assert cvdeploy_home() == Path.home() / ".cvdeploy"
    monkeypatch.setenv("CVDEPLOY_HOME", str(tmp_path))
    assert cvdeploy_home() == tmp_path
    assert os.environ["CVDEPLOY_HOME"] == str(tmp_path)
