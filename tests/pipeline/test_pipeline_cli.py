"""``cvdeploy pipeline run`` refusals that need no platform: they stop before deploying.

Each checks the exit code CI acts on (2 usage, 3 rejected) and that the message names the
problem; the platform-backed runs are in test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import make_external_weights_model, write_hostile_pickle
from typer.testing import CliRunner

from cvdeploy.cli.app import app
from cvdeploy.demo import CLASSIFIER, demo_file, eval_set
from cvdeploy.registry import Registry, RegistryNotFoundError

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CVDEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CVDEPLOY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["pipeline", "run", *args])
    return result.exit_code, result.output


def _registered(home: Path) -> bool:
    try:
        Registry(home=home).versions("cv_model")
    except RegistryNotFoundError:
        return False
    return True


def test_a_pickle_file_is_refused_before_it_reaches_the_registry(home, tmp_path):
    hostile = write_hostile_pickle(tmp_path / "model.pt")
    code, output = _run("--model-file", str(hostile), "--json")
    assert code == 3
    result = json.loads(output)
    assert result["status"] == "rejected"
    assert any("pickle" in r for r in result["reasons"])
    assert not _registered(home)


def test_an_onnx_whose_external_data_escapes_its_folder_is_refused(home, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "secret.bin"
    model = make_external_weights_model(folder, "../secret.bin", write_data_to=outside)
    code, output = _run("--model-file", str(model), "--json")
    assert code == 3
    result = json.loads(output)
    assert any("external_data" in r or "outside" in r for r in result["reasons"]), result
    assert not _registered(home)


def test_an_unknown_threshold_name_is_a_usage_error_listing_the_valid_names(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model", eval_data=eval_set("digits"))
    code, output = _run("--threshold", "mAP_typo=0.5")
    assert code == 2
    assert "valid names: accuracy, precision, recall, f1" in output


def test_a_malformed_threshold_is_a_usage_error(home):
    code, output = _run("--threshold", "accuracy=high")
    assert code == 2
    assert "METRIC=NUMBER" in output


def test_missing_evaluation_data_is_a_clear_error_before_any_stage_runs(home):
    Registry(home=home).register(demo_file(CLASSIFIER), "cv_model")
    code, output = _run()
    assert code == 2
    assert "no evaluation data for cv_model version 1" in output
    assert "security" not in output


def test_malformed_labels_name_the_file_and_line(home, tmp_path):
    data = tmp_path / "shapes"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    source = eval_set("shapes").parent
    image = next((source / "images" / "val").glob("*.jpg"))
    (data / "images" / image.name).write_bytes(image.read_bytes())
    (data / "labels" / f"{image.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 oops 0.2 0.2\n")
    (data / "data.yaml").write_text("path: .\nval: images\nnames: [circle, square, triangle]\n")
    Registry(home=home).register(demo_file("shapes_detector.onnx"), "shapes")
    code, output = _run("--model", "shapes", "--eval-data", str(data))
    assert code == 2
    assert f"{image.stem}.txt:2" in output.replace("\n", "")
