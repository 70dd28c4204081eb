"""The security stage: pickles, external-data escapes, custom ops, size and digest checks."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import model_factory as mf
import numpy as np
import pipeline_models as pm
import pytest

from cvdeploy._hashing import file_sha256
from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file
from cvdeploy.pipeline.security import (
    PICKLE_SUFFIXES,
    assess_security,
    external_data_files,
    onnx_footprint,
)
from cvdeploy.pipeline.security.pickle_stream import SNIFF_WINDOW
from cvdeploy.pipeline.security.pickles import pickle_kind
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


# --- review fixes: sparse tensors, headerless pickles, object dtypes, unreadable files -----------


@pytest.mark.parametrize("part", ["values", "indices"])
def test_sparse_constant_attribute_with_escaping_external_data_fails_naming_the_tensor(
    tmp_path: Path, part: str
) -> None:
    path = pm.make_sparse_external_model(tmp_path / "v1", "../../etc/passwd", part=part)
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert f"tensor 'secret_sparse (sparse {part})' location '../../etc/passwd' escapes" in detail


def test_sparse_initializer_with_escaping_external_data_fails_naming_the_tensor(
    tmp_path: Path,
) -> None:
    path = pm.make_sparse_external_model(tmp_path / "v1", "../../etc/passwd", where="initializer")
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "tensor 'secret_sparse (sparse values)' location '../../etc/passwd'" in detail


@pytest.mark.parametrize("where", ["attribute", "initializer"])
def test_footprint_and_external_data_files_include_sparse_tensors(
    tmp_path: Path, where: str
) -> None:
    path = pm.make_sparse_external_model(
        tmp_path / "v1", "sparse.data", where=where, write_data=True
    )
    data = (tmp_path / "v1" / "sparse.data").resolve()
    assert external_data_files(path) == [data]
    total, files = onnx_footprint(path)
    assert files == [path, data]
    assert total == path.stat().st_size + data.stat().st_size
    stage = assess_security(path)
    assert check(stage, "external_data") == (True, "1 external tensor(s), all inside the folder")


@pytest.mark.parametrize("protocol", [0, 1])
@pytest.mark.parametrize("name", ["weights.bin", "model.dat", "weights"])
def test_headerless_old_protocol_pickle_is_refused_whatever_its_name(
    tmp_path: Path, protocol: int, name: str
) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    pm.write_old_protocol_pickle(folder / name, protocol)
    passed, detail = check(assess_security(folder), "format")
    assert passed is False
    assert f"{name} (pickle stream of" in detail
    assert "no protocol header" in detail


@pytest.mark.parametrize("protocol", [0, 1])
def test_allowed_headerless_hostile_pickle_fails_the_scan(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    pm.write_old_protocol_pickle(folder / "weights.bin", protocol)
    passed, detail = check(assess_security(folder, allow_pickle=True), "pickle_scan")
    assert passed is False
    assert f"weights.bin imports dangerous globals {os.system.__module__}.system" in detail


def test_headerless_pickle_longer_than_the_sniff_window_is_found(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(pickle.dumps([f"label {i}" for i in range(20_000)], protocol=0))
    assert path.stat().st_size > SNIFF_WINDOW
    why = pickle_kind(path)
    assert why is not None
    assert why.startswith("pickle stream (")
    assert why.endswith(
        f"consistent opcodes in the first {SNIFF_WINDOW} bytes), no protocol header"
    )


def test_hostile_headerless_stub_followed_by_junk_is_found(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    stub = pickle.dumps(pm._RunsAShellCommand(), protocol=0)[:-1]  # no STOP
    path.write_bytes(stub + np.random.default_rng(0).bytes(4096))
    assert pickle_kind(path) == "pickle opcodes that import and call a global, no protocol header"


def test_raw_weight_and_text_files_are_not_taken_for_pickles(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for i in range(300):
        raw = tmp_path / f"w{i}.bin"
        size = 100_000 if i % 10 == 0 else 2048
        raw.write_bytes(rng.standard_normal(size // 4).astype(np.float32).tobytes())
        assert pickle_kind(raw) is None, raw.read_bytes()[:16]
        noise = tmp_path / f"n{i}.bin"
        noise.write_bytes(rng.bytes(2048))
        assert pickle_kind(noise) is None, noise.read_bytes()[:16]
    texts = {
        "requirements.txt": "cvdeploy\nnumpy\nonnx\n",
        "README.md": "# model\n\nExported with torch.onnx.\n",
        "labels.txt": "cat\ndog\n",
        "zeros.bin": "\x00" * 4096,
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
        assert pickle_kind(tmp_path / name) is None, name


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
def test_npy_with_an_object_field_in_a_structured_dtype_is_pickled(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"table{suffix}"
    with path.open("wb") as handle:
        np.save(handle, np.array([(1, "x")], dtype=[("n", "i4"), ("a", "O")]), allow_pickle=True)
    assert pickle_kind(path) == "npy whose dtype holds Python objects (pickled)"
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3, dtype=[("n", "i4"), ("f", "f4")]))
    assert pickle_kind(plain) is None


def test_npz_member_with_an_object_field_is_pickled(tmp_path: Path) -> None:
    path = tmp_path / "bundle.npz"
    np.savez(
        path,
        ok=np.zeros(2),
        table=np.array([(1, None)], dtype=[("n", "i4"), ("a", "O")]),
        allow_pickle=True,
    )
    assert pickle_kind(path) == "npz whose member table.npy holds Python objects (pickled)"


def test_unreadable_subfolder_fails_the_format_check_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "v1"
    (folder / "locked").mkdir(parents=True)
    mf.make_classifier_model(folder / "model.onnx")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    passed, detail = check(assess_security(folder), "format")
    assert passed is False
    assert "locked could not be inspected (cannot be listed: Permission denied)" in detail


@pytest.mark.parametrize("damage", ["deflate", "header"])
def test_corrupt_npz_member_fails_the_format_check(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    mf.make_classifier_model(folder / "model.onnx")
    path = folder / "extras.npz"
    if damage == "deflate":
        np.savez_compressed(path, table=np.arange(1000))
        raw = bytearray(path.read_bytes())
        # The first deflate byte (after the local header, its name and extra field) set to a
        # reserved block type.
        name_len, extra_len = (int.from_bytes(raw[i : i + 2], "little") for i in (26, 28))
        raw[30 + name_len + extra_len] = 0xFF
        path.write_bytes(bytes(raw))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("table.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")
    stage = assess_security(folder)
    passed, detail = check(stage, "format")
    assert passed is False
    assert "extras.npz could not be inspected (zip member table.npy cannot be read" in detail


@pytest.mark.parametrize("key", ["offset", "length"])
def test_negative_external_data_offset_or_length_fails(tmp_path: Path, key: str) -> None:
    path = pm.make_properly_external_model(tmp_path / "v1")
    pm.set_external_field(path, "weights", key, "-4")
    passed, detail = check(assess_security(path), "external_data")
    assert passed is False
    assert "location 'weights.data' has a negative offset" in detail


def test_passing_op_domains_lists_model_functions_not_standard_only(tmp_path: Path) -> None:
    path = pm.make_local_function_model(tmp_path / "functions.onnx", domain="my.functions")
    passed, detail = check(assess_security(path), "op_domains")
    assert passed is True
    assert "standard domains only" not in detail
    assert "model functions: my.functions" in detail


def test_sha256_mismatch_shows_the_normalised_expected_digest(tmp_path: Path) -> None:
    path = mf.make_classifier_model(tmp_path / "m.onnx")
    stage = assess_security(path, expected_sha256="  " + "0" * 62 + "AB\n")
    passed, detail = check(stage, "sha256")
    assert passed is False
    assert f"not the registered {'0' * 62}ab:" in detail
