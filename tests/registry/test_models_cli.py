"""``cvdeploy models ...`` in-process through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DIGITS, IMAGES, SHAPES
from typer.testing import CliRunner

from cvdeploy.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(home: Path) -> Path:
    for args in (
        ["--name", "cv_model", "--source-commit", "deadbeef"],
        ["--name", "cv_model", "--reference-images", str(IMAGES)],
    ):
        result = runner.invoke(app, ["models", "register", str(DIGITS), *args])
        assert result.exit_code == 0, result.output
    return home


def test_register_prints_the_version(registered: Path):
    result = runner.invoke(
        app, ["models", "register", str(SHAPES), "--name", "det", "--type", "yolo"]
    )
    assert result.exit_code == 0, result.output
    assert "det" in result.output
    assert "version 1" in result.output
    assert "detection" in result.output


def test_register_json(registered: Path):
    result = runner.invoke(app, ["models", "register", str(DIGITS), "--name", "js", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tags"]["task"] == "classification"


def test_list_table_and_json(registered: Path):
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0
    assert "cv_model" in table.output
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert next(m for m in listed if m["name"] == "cv_model")["latest_version"] == "2"


def test_alias_then_show_by_alias(registered: Path):
    result = runner.invoke(app, ["models", "alias", "cv_model", "champion", "1"])
    assert result.exit_code == 0, result.output
    assert "cv_model@champion -> version 1" in result.output
    shown = runner.invoke(app, ["models", "show", "cv_model", "--version", "champion", "--json"])
    payload = json.loads(shown.stdout)
    assert payload["version"] == "1"
    assert payload["aliases"] == ["champion"]
    assert payload["card"]["source_commit"] == "deadbeef"


def test_show_lists_versions(registered: Path):
    result = runner.invoke(app, ["models", "show", "cv_model"])
    assert result.exit_code == 0, result.output
    assert "2 version(s)" in result.output
    one = runner.invoke(app, ["models", "show", "cv_model", "--version", "2"])
    assert "reference images: " in one.output
    assert "input size: 32x32" in one.output


def test_unknown_model_and_version_exit_2(registered: Path):
    missing = runner.invoke(app, ["models", "show", "nope"])
    assert missing.exit_code == 2
    assert "no registered model named 'nope'" in missing.output
    version = runner.invoke(app, ["models", "show", "cv_model", "--version", "9"])
    assert version.exit_code == 2
    assert "no version '9'" in version.output
    alias = runner.invoke(app, ["models", "alias", "cv_model", "champion", "9"])
    assert alias.exit_code == 2


def test_bad_file_exits_2(registered: Path, tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    result = runner.invoke(app, ["models", "register", str(bad), "--name", "bad"])
    assert result.exit_code == 2


def test_delete_version_then_model(registered: Path):
    runner.invoke(app, ["models", "register", str(DIGITS), "--name", "gone"])
    runner.invoke(app, ["models", "register", str(DIGITS), "--name", "gone"])
    result = runner.invoke(app, ["models", "delete", "gone", "--version", "1", "--json"])
    assert json.loads(result.stdout) == {"name": "gone", "version": "1", "deleted": True}
    assert runner.invoke(app, ["models", "delete", "gone"]).exit_code == 0
    assert runner.invoke(app, ["models", "delete", "gone"]).exit_code == 2


def test_metrics_are_recorded_on_a_version_and_shown(registered: Path):
    result = runner.invoke(
        app, ["models", "metrics", "cv_model", "1", "accuracy=0.97", "f1=0.95", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"accuracy": 0.97, "f1": 0.95}
    shown = runner.invoke(app, ["models", "metrics", "cv_model", "1"])
    assert "accuracy" in shown.output
    assert "0.97" in shown.output
    card = json.loads(runner.invoke(app, ["models", "show", "cv_model", "--version", "1",
                                          "--json"]).output)  # fmt: skip
    assert card["metrics"] == {"accuracy": 0.97, "f1": 0.95}
    bad = runner.invoke(app, ["models", "metrics", "cv_model", "1", "accuracy=high"])
    assert bad.exit_code == 2
    assert "not a number" in bad.output
    inf = runner.invoke(app, ["models", "metrics", "cv_model", "1", "loss=inf"])
    assert inf.exit_code == 2
    assert "finite" in inf.output
    missing = runner.invoke(app, ["models", "metrics", "cv_model", "9"])
    assert missing.exit_code == 2


def test_tags_are_set_on_a_version(registered: Path):
    result = runner.invoke(app, ["models", "tag", "cv_model", "2", "dataset=digits-v3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dataset"] == "digits-v3"
    bad = runner.invoke(app, ["models", "tag", "cv_model", "2", "no-equals"])
    assert bad.exit_code == 2
    assert "KEY=VALUE" in bad.output
