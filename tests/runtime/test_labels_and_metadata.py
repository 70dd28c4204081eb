from __future__ import annotations

import json
from pathlib import Path

import model_factory as mf
import pytest

from cvdeploy.errors import ConfigError, ModelLoadError
from cvdeploy.runtime import load_model
from cvdeploy.runtime.metadata import (
    load_labels,
    metadata_imgsz,
    metadata_names,
    normalise_labels,
    parse_literal,
    resolve_task_name,
)


def test_txt_labels_one_per_line_skipping_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("\ufeffcat\r\n dog \n\nbird\n")
    assert load_labels(path) == ["cat", "dog", "bird"]


def test_json_list_and_id_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "b.json").write_text(json.dumps({"1": "dog", "0": "cat", "3": "fish"}))
    assert load_labels(tmp_path / "a.json") == ["cat", "dog"]
    assert load_labels(tmp_path / "b.json") == ["cat", "dog", "class_2", "fish"]


def test_yaml_list_mapping_and_ultralytics_data_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- cat\n- dog\n")
    (tmp_path / "b.yml").write_text("0: cat\n1: dog\n")
    (tmp_path / "data.yaml").write_text(
        "path: ../datasets\ntrain: images\nnames:\n  0: cat\n  1: dog\n"
    )
    for name in ("a.yaml", "b.yml", "data.yaml"):
        assert load_labels(tmp_path / name) == ["cat", "dog"]


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="labels file not found"):
        load_labels(tmp_path / "absent.txt")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.yaml", "a: [unclosed", "not valid YAML"),
        ("words.json", json.dumps({"cat": "dog"}), "integer class ids"),
        ("scalar.json", "42", "expected a list"),
        ("empty.txt", "\n\n", "no class names"),
        ("negative.json", json.dumps({"-1": "x"}), ">= 0"),
    ],
)
def test_malformed_labels_files_name_the_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_labels(path)
    assert str(path) in str(info.value)


def test_labels_file_argument_to_load_model(tmp_path: Path) -> None:
    labels = tmp_path / "names.txt"
    labels.write_text("r\ng\nb\n")
    path = mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3)
    assert load_model(path, labels=labels).labels == ["r", "g", "b"]
    assert load_model(path, labels=str(labels)).labels == ["r", "g", "b"]


def test_labels_argument_beats_metadata(tmp_path: Path) -> None:
    meta = mf.ultralytics_metadata(task="classify", names=["x", "y", "z"])
    path = mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3, metadata=meta)
    assert load_model(path, labels=["a", "b", "c"]).labels == ["a", "b", "c"]


def test_classifier_labels_count_must_match(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "c.onnx", num_classes=3)
    with pytest.raises(ModelLoadError, match=r"2 labels were given but .* outputs 3 classes"):
        load_model(path, labels=["a", "b"])


def test_ultralytics_names_repr_is_parsed() -> None:
    meta = {"names": "{0: 'person', 1: 'bicycle', 2: \"it's\"}"}
    assert metadata_names(meta) == ["person", "bicycle", "it's"]


def test_json_names_are_parsed() -> None:
    assert metadata_names({"names": '["a", "b"]'}) == ["a", "b"]


def test_malformed_names_are_ignored() -> None:
    assert metadata_names({"names": "{0: person}"}) is None
    assert metadata_names({}) is None


def test_parse_literal_never_evaluates_code() -> None:
    assert parse_literal("__import__('os').system('echo pwned')") is None
    assert parse_literal("[1, 2]") == [1, 2]
    assert parse_literal("true") is True
    assert parse_literal("x" * 2_000_000) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[640, 480]", (640, 480)), ("320", (320, 320)), ("[0, 1]", None), ("", None)],
)
def test_metadata_imgsz(text: str, expected: tuple[int, int] | None) -> None:
    assert metadata_imgsz({"imgsz": text}) == expected


def test_task_resolution_order() -> None:
    assert resolve_task_name("classifier", {"task": "detect"}) == "classification"
    assert resolve_task_name(None, {"task": "detect"}) == "detection"
    assert resolve_task_name(None, {"task": "classify"}) == "classification"
    assert resolve_task_name(None, {}) is None
    with pytest.raises(ConfigError):
        resolve_task_name("bogus", {})


def test_normalise_labels_rejects_non_lists() -> None:
    with pytest.raises(ModelLoadError, match="labels argument"):
        normalise_labels(3, source="labels argument")
