"""``cvdeploy tokens``, ``audit``, ``backup`` and ``restore`` in-process through Typer's runner."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cvdeploy
from cvdeploy.cli.app import app
from cvdeploy.platforms.base import EndpointCoreConfig, EndpointSpec
from cvdeploy.platforms.local import PlatformState

runner = CliRunner()
DIGITS = Path(cvdeploy.__file__).parent / "demo" / "digits_classifier.onnx"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("CVDEPLOY_HOME", str(folder))
    return folder


def spec(name: str, version: int = 1) -> EndpointSpec:
    entity = {"entity_name": "digits", "entity_version": version}
    return EndpointSpec.parse({"name": name, "config": {"served_entities": [entity]}})


def make_endpoint(state: PlatformState, name: str) -> None:
    state.create_endpoint(spec(name))
    state.finish_update(name, ok=True)
    entity = {"entity_name": "digits", "entity_version": 2}
    state.update_config(name, EndpointCoreConfig.parse({"served_entities": [entity]}))
    state.finish_update(name, ok=True)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- tokens ------------------------------------------------------------------------------------


def test_token_create_list_revoke_round_trip(home: Path):
    code, out, err = invoke("tokens", "create", "--scope", "manage", "--comment", "ci", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["scope"] == "manage"
    with PlatformState() as state:
        assert state.check_token(created["token"], "manage") == created["id"]

    code, out, _ = invoke("tokens", "list")
    assert code == 0
    assert created["id"] in out
    assert "ci" in out
    assert created["token"] not in out
    listed = json.loads(invoke("tokens", "list", "--json")[1])
    assert [t["id"] for t in listed] == [created["id"]]
    assert created["token"] not in json.dumps(listed)

    code, out, _ = invoke("tokens", "revoke", created["id"])
    assert code == 0
    assert "revoked" in out
    assert json.loads(invoke("tokens", "list", "--json")[1]) == []
    assert created["id"] in invoke("tokens", "list", "--all")[1]
    with PlatformState() as state:
        assert not state.tokens_exist()


def test_token_create_prints_the_secret_once_with_a_warning(home: Path):
    code, out, err = invoke("tokens", "create", "--scope", "query")
    assert code == 0, err
    assert out.startswith("cvd_")
    assert "cannot be shown again" in err
    with PlatformState() as state:
        state.check_token(out.strip(), "query")


def test_unknown_scope_exits_2(home: Path):
    code, _, err = invoke("tokens", "create", "--scope", "admin")
    assert code == 2
    assert "'query' or 'manage'" in err


def test_revoke_unknown_id_exits_2(home: Path):
    code, _, err = invoke("tokens", "revoke", "0123456789abcdef")
    assert code == 2
    assert "no active token with id '0123456789abcdef'" in err


# -- audit -------------------------------------------------------------------------------------


def test_audit_lists_state_changes_newest_first(home: Path):
    with PlatformState() as state:
        state.create_endpoint(spec("det"))
        state.finish_update("det", ok=True)
        state.create_endpoint(spec("cls"))
        state.create_token("query", "reader")

    entries = json.loads(invoke("audit", "--json")[1])
    assert [e["action"] for e in entries] == [
        "create_token",
        "create_endpoint",
        "config_applied",
        "create_endpoint",
    ]
    det = json.loads(invoke("audit", "--endpoint", "det", "--json")[1])
    assert [e["action"] for e in det] == ["config_applied", "create_endpoint"]
    assert len(json.loads(invoke("audit", "--limit", "1", "--json")[1])) == 1

    code, out, _ = invoke("audit", "--endpoint", "det")
    assert code == 0
    assert "config_applied" in out
    assert "local" in out
    assert "cls" not in out
    assert det[0]["summary"] == (
        "config_update: IN_PROGRESS -> NOT_UPDATING; current_revision: - -> 1; "
        "pending_revision: 1 -> -"
    )
    assert "cls" not in out


# -- backup and restore ------------------------------------------------------------------------


def test_backup_then_restore_into_a_fresh_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from cvdeploy.registry import Registry

    Registry().register(DIGITS, "digits")
    with PlatformState() as state:
        make_endpoint(state, "det")
        secret = state.create_token("manage", "ops")
        before = state.revisions("det")
    archive = tmp_path / "state.tar.gz"
    code, out, err = invoke("backup", str(archive), "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["cvdeploy_version"] == cvdeploy.__version__
    files = {f["path"] for f in manifest["files"]}
    assert {"platform.db", "mlflow.db"} <= files
    assert any(f.startswith("artifacts/") for f in files)

    fresh = tmp_path / "fresh"
    monkeypatch.setenv("CVDEPLOY_HOME", str(fresh))
    code, out, err = invoke("restore", str(archive))
    assert code == 0, err
    assert "stop the platform" in err
    with PlatformState() as state:
        assert [e.name for e in state.list_endpoints()] == ["det"]
        assert state.revisions("det") == before
        assert state.check_token(secret, "manage")
    registry = Registry()
    assert registry.get_version("digits").version == "1"
    # Its artifact URIs now point into the fresh home, and the file passes its sha256 check.
    assert registry.model_path("digits").is_relative_to(fresh.resolve())

    code, _, err = invoke("restore", str(archive))
    assert code == 2
    assert "--force" in err
    assert invoke("restore", str(archive), "--force")[0] == 0


def test_backup_refuses_above_max_bytes(home: Path, tmp_path: Path):
    with PlatformState() as state:
        state.create_token("query")
    code, _, err = invoke("backup", str(tmp_path / "b.tar.gz"), "--max-bytes", "100")
    assert code == 2
    assert "--max-bytes" in err
    assert not (tmp_path / "b.tar.gz").exists()


def test_backup_of_an_empty_home_exits_2(home: Path, tmp_path: Path):
    code, _, err = invoke("backup", str(tmp_path / "b.tar.gz"))
    assert code == 2
    assert "nothing" in err.lower() or "no platform state" in err


def _evil_archive(path: Path, member: tarfile.TarInfo, *, manifest: bool = True) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        if manifest:
            body = json.dumps({"format": 1, "artifacts_dir": "/x", "files": []}).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
        archive.addfile(member, io.BytesIO(b"pwned") if member.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 5
    return info


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("artifacts/../../escaped"), "leaves the target folder"),
        (_file("/tmp/cvdeploy-absolute-member"), "absolute"),
        (_symlink("artifacts/link", "/etc/passwd"), "link or special file"),
        (_file("elsewhere.txt"), "not part of a cvdeploy backup"),
    ],
    ids=["dotdot", "absolute", "symlink", "unknown-member"],
)
def test_restore_refuses_a_malicious_archive(
    home: Path, tmp_path: Path, member: tarfile.TarInfo, message: str
):
    archive = _evil_archive(tmp_path / "evil.tar.gz", member)
    code, _, err = invoke("restore", str(archive))
    assert code == 2
    assert message in err
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/cvdeploy-absolute-member").exists()
    assert not (home / "artifacts").exists()


def test_restore_refuses_an_archive_without_manifest(home: Path, tmp_path: Path):
    archive = _evil_archive(tmp_path / "bare.tar.gz", _file("platform.db"), manifest=False)
    code, _, err = invoke("restore", str(archive))
    assert code == 2
    assert "manifest.json" in err


def test_restore_refuses_a_file_the_manifest_does_not_list(home: Path, tmp_path: Path):
    archive = _evil_archive(tmp_path / "extra.tar.gz", _file("artifacts/extra.bin"))
    code, _, err = invoke("restore", str(archive))
    assert code == 2
    assert "damaged" in err
    assert not (home / "artifacts").exists()


def test_restore_refuses_something_that_is_not_an_archive(home: Path, tmp_path: Path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    code, _, err = invoke("restore", str(junk))
    assert code == 2
    assert "not a" in err
