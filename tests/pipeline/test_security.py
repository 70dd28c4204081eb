"""The security stage: pickles, external-data escapes, custom ops, size and digest checks."""

from __future__ import annotations

import os
from pathlib import Path

import model_factory as mf
import pipeline_models as pm
import pytest

from cvdeploy._hashing import file_sha256
from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file
from cvdeploy.pipeline.security import PICKLE_SUFFIXES, assess_security
from cvdeploy.pipeline.stages import StageResult


def check(stage: StageResult, name: str) -> tuple[bool | None, str]:
    found = [c for c in stage.checks if c.name == name]
    assert len(found) == 1, f"{name} not in {[c.name for c in stage.checks]}"
    return found[0].passed, found[0].detail


# --- the demo models -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [CLASSIFIER, DETECTOR])
def test_demo_models_pass_every_check(name: str) -> None:
    path = demo_file(name)
    stage = assess_security(path, expected_sha256=file_sha256(path), max_model_bytes=50 * 2**20)
    assert stage.name == "security"
    assert stage.status == "passed", stage.reasons
    assert [c.name for c in stage.checks] == [
        "format",
        "onnx_checker",
        "external_data",
        "op_domains",
        "size",
        "sha256",
    ]
    assert all(c.passed is True for c in stage.checks)
    assert stage.figures["model_bytes"] == path.stat().st_size
    assert stage.figures["files"] == 1


def test_limits_not_set_are_reported_not_passed(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "m.onnx")
    stage = assess_security(path)
    assert stage.passed
    passed, detail = check(stage, "size")
    assert passed is None
    assert "no limit set" in detail
    assert str(path.stat().st_size) in detail
    assert check(stage, "sha256")[0] is None


def test_registered_model_folder_passes(tmp_path: Path) -> None:
    folder = pm.make_model_folder(
        tmp_path / "v1", demo_file(CLASSIFIER), task="classification", labels=list("0123456789")
    )
    expected = file_sha256(folder / "data" / "model.onnx")
    stage = assess_security(folder, expected_sha256=expected)
    assert stage.status == "passed", stage.reasons
    assert "data/model.onnx" in check(stage, "format")[1]
    assert stage.figures["files"] == 6


# --- pickles ---------------------------------------------------------------------------------


def test_pickle_suffixes_cover_the_usual_formats() -> None:
    assert {".pt", ".pth", ".pkl", ".pickle", ".joblib", ".ckpt"} <= PICKLE_SUFFIXES


def test_pickle_is_refused_by_default(tmp_path: Path) -> None:
    path = pm.write_clean_pickle(tmp_path / "model.pkl")
    stage = assess_security(path)
    passed, detail = check(stage, "format")
    assert passed is False
    assert "model.pkl" in detail
    assert "pickle" in detail
    assert "export the model to ONNX" in detail


def test_pickle_is_found_by_its_bytes_whatever_its_name(tmp_path: Path) -> None:
    pm.make_model_folder(
        tmp_path / "v1", demo_file(CLASSIFIER), task="classification", labels=list("0123456789")
    )
    pm.write_hostile_pickle(tmp_path / "v1" / "data" / "extra_weights.onnx")
    pm.write_clean_pickle(tmp_path / "v1" / "data" / "tokenizer.dat")
    stage = assess_security(tmp_path / "v1")
    passed, detail = check(stage, "format")
    assert passed is False
    assert "extra_weights.onnx (pickle protocol 4 header)" in detail
    assert "tokenizer.dat" in detail


def test_torch_zip_with_data_pkl_is_refused(tmp_path: Path) -> None:
    path = pm.write_torch_style_zip(tmp_path / "weights.bin")
    passed, detail = check(assess_security(path), "format")
    assert passed is False
    assert "data.pkl" in detail


def test_allowed_hostile_pickle_fails_the_scan_naming_the_global(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    pm.write_hostile_pickle(folder / "model.pkl")
    stage = assess_security(folder, allow_pickle=True)
    assert check(stage, "format")[0] is True
    passed, detail = check(stage, "pickle_scan")
    assert passed is False
    assert "model.pkl" in detail
    assert f"{os.system.__module__}.system" in detail  # posix.system on Linux


def test_allowed_hostile_torch_zip_fails_the_scan(tmp_path: Path) -> None:
    path = pm.write_torch_style_zip(tmp_path / "model.pt")
    stage = assess_security(path, allow_pickle=True)
    passed, detail = check(stage, "pickle_scan")
    assert passed is False
    assert "system" in detail


def test_allowed_clean_pickle_passes_the_scan_and_notes_only_onnx_is_served(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    pm.write_clean_pickle(folder / "extras.pkl")
    stage = assess_security(folder, allow_pickle=True)
    assert stage.status == "passed", stage.reasons
    passed, detail = check(stage, "pickle_scan")
    assert passed is True
    assert "extras.pkl scanned clean" in detail
    assert "only ONNX" in detail


def test_folder_without_onnx_fails(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here\n")
    passed, detail = check(assess_security(tmp_path), "format")
    assert passed is False
    assert "no ONNX model" in detail


def test_corrupt_onnx_fails_the_format_check(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    stage = assess_security(path)
    passed, detail = check(stage, "format")
    assert passed is False
    assert "broken.onnx is not a valid ONNX model" in detail


def test_symlink_out_of_the_folder_fails(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    (tmp_path / "outside.txt").write_text("secret\n")
    (folder / "link.txt").symlink_to(tmp_path / "outside.txt")
    passed, detail = check(assess_security(folder), "format")
    assert passed is False
    assert "link.txt is a symlink" in detail


# --- external data -------------------------------------------------------------------------


def test_external_data_inside_the_folder_passes_and_counts(tmp_path: Path) -> None:
    path = pm.make_properly_external_model(tmp_path / "v1")
    stage = assess_security(path)
    assert stage.status == "passed", stage.reasons
    assert check(stage, "external_data") == (True, "1 external tensor(s), all inside the folder")
    data = tmp_path / "v1" / "weights.data"
    assert stage.figures["model_bytes"] == path.stat().st_size + data.stat().st_size


def test_external_data_escaping_with_dotdot_fails_naming_tensor_and_location(
    tmp_path: Path,
) -> None:
    path = pm.make_external_weights_model(
        tmp_path / "v1", "../secret.bin", write_data_to=tmp_path / "secret.bin"
    )
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "tensor 'weights' location '../secret.bin' escapes the model folder" in detail


def test_external_data_at_an_absolute_path_fails(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "w.bin"
    path = pm.make_external_weights_model(tmp_path / "v1", str(target), write_data_to=target)
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "is an absolute path" in detail


def test_external_data_through_a_symlinked_folder_fails(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "inner").symlink_to(tmp_path / "outside")
    path = pm.make_external_weights_model(
        tmp_path / "v1", "inner/w.bin", write_data_to=tmp_path / "outside" / "w.bin"
    )
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "outside the model folder" in detail


def test_missing_external_data_fails(tmp_path: Path) -> None:
    path = pm.make_external_weights_model(tmp_path / "v1", "w.bin", write_data_to=None)
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "'w.bin' does not exist" in detail


def test_external_tensor_attribute_in_a_subgraph_is_checked(tmp_path: Path) -> None:
    path = pm.make_subgraph_constant_escape_model(tmp_path / "branchy.onnx", "../../etc/passwd")
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "tensor 'secret_constant' location '../../etc/passwd'" in detail


# --- operator domains ----------------------------------------------------------------------


def test_custom_op_domain_fails_naming_it(tmp_path: Path) -> None:
    path = pm.make_custom_op_model(tmp_path / "custom.onnx", domain="evil.ops")
    passed, detail = check(assess_security(path), "op_domains")
    assert passed is False
    assert "'evil.ops' (Backdoor)" in detail
    assert "custom-op library" in detail


def test_custom_op_domain_can_be_allowed(tmp_path: Path) -> None:
    path = pm.make_custom_op_model(tmp_path / "custom.onnx", domain="vetted.ops")
    stage = assess_security(path, allowed_op_domains=["vetted.ops"])
    assert check(stage, "op_domains")[0] is True


def test_functions_defined_by_the_model_are_not_custom_ops(tmp_path: Path) -> None:
    path = pm.make_local_function_model(tmp_path / "functions.onnx")
    stage = assess_security(path)
    assert check(stage, "op_domains")[0] is True
    assert stage.status == "passed", stage.reasons


# --- size and digest -----------------------------------------------------------------------


def test_model_over_the_size_limit_fails(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "m.onnx")
    limit = path.stat().st_size - 1
    stage = assess_security(path, max_model_bytes=limit)
    passed, detail = check(stage, "size")
    assert passed is False
    assert f"over the limit of {limit} bytes" in detail
    assert stage.checks[-2].value == path.stat().st_size


def test_sha256_mismatch_says_the_artifact_changed(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "m.onnx")
    stage = assess_security(path, expected_sha256="0" * 64)
    passed, detail = check(stage, "sha256")
    assert passed is False
    assert "changed since registration" in detail
    assert file_sha256(path) in detail


def test_missing_path_fails_cleanly(tmp_path: Path) -> None:
    stage = assess_security(tmp_path / "absent.onnx")
    assert stage.status == "failed"
    assert "does not exist" in stage.reasons[0]


def test_symlinked_folder_out_of_the_model_folder_fails(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    (tmp_path / "outside").mkdir()
    (folder / "extra").symlink_to(tmp_path / "outside")
    passed, detail = check(assess_security(folder), "format")
    assert passed is False
    assert "extra is a symlink" in detail
