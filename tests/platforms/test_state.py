"""The local platform's SQLite state: revisions, rollback, conflicts, tokens, audit, backups."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvdeploy.errors import ConfigError, ModelNotFoundError
from cvdeploy.platforms.base import (
    ConflictError,
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointNotFoundError,
    EndpointSpec,
    PermissionDeniedError,
    UnauthenticatedError,
)
from cvdeploy.platforms.local import PlatformState
from cvdeploy.platforms.local.tokens import TokenNotFoundError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def config(*versions: int, split: tuple[int, ...] | None = None) -> EndpointCoreConfig:
    entities = [{"entity_name": "cv_model", "entity_version": v} for v in versions]
    body: dict[str, object] = {"served_entities": entities}
    if split is not None:
        body["traffic_config"] = {
            "routes": [
                {"served_model_name": f"cv_model-{v}", "traffic_percentage": p}
                for v, p in zip(versions, split, strict=True)
            ]
        }
    return EndpointCoreConfig.parse(body)


def create(state: PlatformState, name: str = "det", version: int = 1) -> None:
    state.create_endpoint(EndpointSpec(name=name, config=config(version)))
    state.finish_update(name, ok=True)


def versions_of(state: PlatformState, name: str = "det") -> list[str]:
    current = state.get_endpoint(name).config
    assert current is not None
    return [e.entity_version for e in current.served_entities]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PlatformState]:
    with PlatformState(tmp_path / "platform.db", clock=FakeClock()) as st:
        yield st


# -- endpoints and revisions ------------------------------------------------------------------


def test_create_is_pending_until_the_platform_reports_ready(state: PlatformState) -> None:
    record = state.create_endpoint(EndpointSpec(name="det", config=config(1)))
    assert record.config_update == "IN_PROGRESS"
    assert record.config is None
    assert record.pending_config == config(1)
    done = state.finish_update("det", ok=True)
    assert (done.config_update, done.current_revision, done.pending_revision) == (
        "NOT_UPDATING",
        1,
        None,
    )
    info = done.to_info(ready=True).model_dump(mode="json")
    assert info["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert info["config"]["served_entities"][0]["name"] == "cv_model-1"


def test_every_update_appends_a_revision(state: PlatformState) -> None:
    create(state)
    revision = state.update_config("det", config(1, 2, split=(90, 10)), author="tok1")
    assert (revision.number, revision.status, revision.author) == (2, "PENDING", "tok1")
    assert versions_of(state) == ["1"]  # the old config serves until the switch is done
    state.finish_update("det", ok=True)
    assert versions_of(state) == ["1", "2"]
    assert [r.number for r in state.revisions("det")] == [1, 2]
    assert [r.status for r in state.revisions("det")] == ["APPLIED", "APPLIED"]


def test_failed_update_keeps_the_old_revision_serving(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    record = state.finish_update("det", ok=False, message="version 2 failed to load")
    assert record.config_update == "UPDATE_FAILED"
    assert record.current_revision == 1
    assert record.message == "version 2 failed to load"
    assert versions_of(state) == ["1"]
    assert state.revision("det", 2).status == "FAILED"
    state.update_config("det", config(3))  # a failed update does not block the next one


def test_rollback_to_previous_writes_a_new_revision(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    state.finish_update("det", ok=True)
    revision = state.rollback("det")
    assert (revision.number, revision.rollback_of) == (3, 1)
    state.finish_update("det", ok=True)
    assert versions_of(state) == ["1"]
    history = state.revisions("det")
    assert [r.number for r in history] == [1, 2, 3]
    assert history[1].config == config(2)  # history is never rewritten


def test_rollback_to_a_named_revision(state: PlatformState) -> None:
    create(state)
    for v in (2, 3):
        state.update_config("det", config(v))
        state.finish_update("det", ok=True)
    revision = state.rollback("det", to_revision=1)
    assert (revision.number, revision.rollback_of) == (4, 1)
    state.finish_update("det", ok=True)
    assert versions_of(state) == ["1"]


def test_rollback_of_a_rollback_returns_to_the_version_rolled_back(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    state.finish_update("det", ok=True)
    state.rollback("det")
    state.finish_update("det", ok=True)
    assert versions_of(state) == ["1"]
    revision = state.rollback("det")
    assert (revision.number, revision.rollback_of) == (4, 2)
    state.finish_update("det", ok=True)
    assert versions_of(state) == ["2"]


def test_rollback_skips_a_failed_revision(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    state.finish_update("det", ok=True)
    state.update_config("det", config(3))
    state.finish_update("det", ok=False)
    assert state.rollback("det").rollback_of == 1


def test_rollback_without_an_earlier_revision_is_400(state: PlatformState) -> None:
    create(state)
    with pytest.raises(ConfigError, match="no applied revision before 1"):
        state.rollback("det")


def test_rollback_to_unknown_revision_is_404(state: PlatformState) -> None:
    create(state)
    with pytest.raises(EndpointNotFoundError, match="has no revision 9"):
        state.rollback("det", to_revision=9)
    assert state.get_endpoint("det").config_update == "NOT_UPDATING"


def test_update_while_an_update_is_in_progress_is_409(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    with pytest.raises(ConflictError) as info:
        state.update_config("det", config(3))
    assert info.value.status_code == 409
    assert info.value.error_code == "RESOURCE_CONFLICT"
    assert "already switching to revision 2" in info.value.message
    with pytest.raises(ConflictError):
        state.rollback("det")
    assert [r.number for r in state.revisions("det")] == [1, 2]


def test_concurrent_updates_from_two_threads_let_exactly_one_through(tmp_path: Path) -> None:
    path = tmp_path / "platform.db"
    with PlatformState(path) as first, PlatformState(path) as second:
        create(first)
        barrier = threading.Barrier(8)
        outcomes: list[str] = []

        def attempt(st: PlatformState, version: int) -> None:
            barrier.wait()
            try:
                st.update_config("det", config(version))
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("409")

        threads = [
            threading.Thread(target=attempt, args=(first if i % 2 else second, i + 2))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["409"] * 7 + ["ok"]


def test_duplicate_create_is_409_already_exists(state: PlatformState) -> None:
    create(state)
    with pytest.raises(EndpointAlreadyExistsError) as info:
        state.create_endpoint(EndpointSpec(name="det", config=config(2)))
    assert (info.value.status_code, info.value.error_code) == (409, "RESOURCE_ALREADY_EXISTS")


def test_unknown_endpoint_is_404_resource_does_not_exist(state: PlatformState) -> None:
    for call in (
        lambda: state.get_endpoint("nope"),
        lambda: state.update_config("nope", config(1)),
        lambda: state.rollback("nope"),
        lambda: state.delete_endpoint("nope"),
        lambda: state.revisions("nope"),
    ):
        with pytest.raises(EndpointNotFoundError) as info:
            call()
        assert isinstance(info.value, ModelNotFoundError)
        assert (info.value.status_code, info.value.error_code) == (404, "RESOURCE_DOES_NOT_EXIST")
        assert "endpoint 'nope' does not exist" in info.value.message


def test_deleted_endpoint_is_gone_and_its_name_reusable(state: PlatformState) -> None:
    create(state)
    state.delete_endpoint("det")
    with pytest.raises(EndpointNotFoundError):
        state.get_endpoint("det")
    assert state.list_endpoints() == []
    create(state, version=5)
    assert [r.number for r in state.revisions("det")] == [1]
    assert versions_of(state) == ["5"]


def test_finish_without_a_pending_update_is_409(state: PlatformState) -> None:
    create(state)
    with pytest.raises(ConflictError, match="no config update in progress"):
        state.finish_update("det", ok=True)


def test_revisions_and_audit_cannot_be_rewritten_in_the_file(state: PlatformState) -> None:
    create(state)
    raw = sqlite3.connect(state.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="immutable"):
            raw.execute("UPDATE revisions SET config = '{}'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE audit SET who = 'someone else'")
    finally:
        raw.close()


def test_endpoints_and_revisions_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "platform.db"
    with PlatformState(path) as st:
        create(st, "a")
        create(st, "b", version=4)
        st.update_config("a", config(1, 2, split=(50, 50)))
        st.finish_update("a", ok=True)
        st.update_config("b", config(5))  # left in progress across the restart
        before = (st.list_endpoints(), st.revisions("a"), st.revisions("b"), st.audit())
    with PlatformState(path) as st:
        after = (st.list_endpoints(), st.revisions("a"), st.revisions("b"), st.audit())
        assert after == before
        assert st.get_endpoint("b").config_update == "IN_PROGRESS"
        assert st.path.stat().st_mode & 0o077 == 0


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "platform.db"
    PlatformState(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE schema_version SET version = 99")
    raw.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        PlatformState(path)


# -- tokens -----------------------------------------------------------------------------------


def test_token_lifecycle_and_scopes(state: PlatformState) -> None:
    assert not state.tokens_exist()
    query = state.create_token("query", "dashboard")
    manage = state.create_token("manage", "ci")
    assert query.startswith("cvd_")
    assert state.tokens_exist()
    query_id = state.check_token(query, "query")
    assert state.check_token(manage, "query") != query_id  # manage implies query
    assert state.check_token(manage, "manage")
    with pytest.raises(PermissionDeniedError) as denied:
        state.check_token(query, "manage")
    assert (denied.value.status_code, denied.value.error_code) == (403, "PERMISSION_DENIED")
    state.revoke_token(query_id)
    with pytest.raises(UnauthenticatedError):
        state.check_token(query, "query")
    assert [t.comment for t in state.list_tokens() if t.revoked_at is None] == ["ci"]


@pytest.mark.parametrize(
    "secret", [None, "", "nonsense", "cvd_0123456789abcdef_wrong", "cvd_zzzzzzzzzzzzzzzz_x"]
)
def test_missing_or_unknown_token_is_401(state: PlatformState, secret: str | None) -> None:
    state.create_token("manage")
    with pytest.raises(UnauthenticatedError) as info:
        state.check_token(secret, "query")
    assert (info.value.status_code, info.value.error_code) == (401, "UNAUTHENTICATED")


def test_right_id_with_a_wrong_secret_is_401(state: PlatformState) -> None:
    secret = state.create_token("manage")
    state.check_token(secret, "manage")  # warms the verified cache
    forged = secret[:21] + ("A" if secret[21] != "A" else "B") + secret[22:]
    with pytest.raises(UnauthenticatedError):
        state.check_token(forged, "manage")


def test_only_salted_hashes_are_stored(state: PlatformState) -> None:
    first = state.create_token("query")
    second = state.create_token("query")
    raw = sqlite3.connect(state.path)
    try:
        rows = raw.execute("SELECT id, salt, hash FROM tokens").fetchall()
        dump = "\n".join(raw.iterdump())
    finally:
        raw.close()
    assert len(rows) == 2
    for secret in (first, second):
        assert secret not in dump
        assert secret.split("_", 2)[2] not in dump
        assert all(secret.encode() not in bytes(r[2]) for r in rows)
    assert rows[0][1] != rows[1][1]  # a salt per token


def test_unknown_token_id_revoke_is_404(state: PlatformState) -> None:
    with pytest.raises(TokenNotFoundError) as info:
        state.revoke_token("0123456789abcdef")
    assert info.value.status_code == 404


# -- audit ------------------------------------------------------------------------------------


def test_audit_records_before_and_after_of_every_change(state: PlatformState) -> None:
    state.create_endpoint(EndpointSpec(name="det", config=config(1)), author="tokA")
    state.finish_update("det", ok=True)
    state.update_config("det", config(2), author="tokB")
    state.finish_update("det", ok=True)
    state.rollback("det")
    state.finish_update("det", ok=True)
    state.delete_endpoint("det", author="tokA")
    entries = list(reversed(state.audit(limit=100, endpoint="det")))
    assert [(e.action, e.who) for e in entries] == [
        ("create_endpoint", "tokA"),
        ("config_applied", "local"),
        ("update_config", "tokB"),
        ("config_applied", "local"),
        ("rollback", "local"),
        ("config_applied", "local"),
        ("delete_endpoint", "tokA"),
    ]
    create_, _, update, _, rollback, _, delete = entries
    assert create_.before is None
    assert create_.after is not None
    assert create_.after["pending_config"]["served_entities"][0]["entity_version"] == "1"
    assert update.before is not None
    assert update.after is not None
    assert update.before["config"]["served_entities"][0]["entity_version"] == "1"
    assert update.after["pending_config"]["served_entities"][0]["entity_version"] == "2"
    assert rollback.before is not None
    assert rollback.after is not None
    assert rollback.before["config"]["served_entities"][0]["entity_version"] == "2"
    assert rollback.after["pending_config"]["served_entities"][0]["entity_version"] == "1"
    assert delete.before is not None
    assert delete.before["current_revision"] == 3
    assert delete.after is None
    assert all(a.at < b.at for a, b in itertools.pairwise(entries))


def test_a_refused_change_leaves_no_audit_entry(state: PlatformState) -> None:
    create(state)
    state.update_config("det", config(2))
    count = len(state.audit())
    with pytest.raises(ConflictError):
        state.update_config("det", config(3))
    assert len(state.audit()) == count


def test_audit_limit_and_token_actions(state: PlatformState) -> None:
    create(state, "a")
    create(state, "b")
    token = state.create_token("manage", "ops")
    token_id = state.check_token(token, "manage")
    state.revoke_token(token_id, author=token_id)
    latest = state.audit(limit=2)
    assert [e.action for e in latest] == ["revoke_token", "create_token"]
    assert latest[0].who == token_id
    assert latest[0].before == {"id": token_id, "scope": "manage", "comment": "ops"}
    assert token not in repr(state.audit())
    assert {e.endpoint for e in state.audit(endpoint="a")} == {"a"}


# -- backups ----------------------------------------------------------------------------------


def test_backup_while_another_connection_writes_is_consistent(tmp_path: Path) -> None:
    path = tmp_path / "platform.db"
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with PlatformState(path) as other:
                i = 0
                while not stop.is_set() and i < 400:
                    create(other, f"e{i}")
                    i += 1
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    with PlatformState(path) as st:
        create(st, "first")
        thread = threading.Thread(target=writer)
        thread.start()
        backups = [st.backup(tmp_path / f"backup{i}.db") for i in range(5)]
        stop.set()
        thread.join()
    assert errors == []
    for backup in backups:
        with PlatformState(backup) as copy:
            endpoints = copy.list_endpoints()
            assert "first" in {e.name for e in endpoints}
            for record in endpoints:
                # Never half a change: each step is there with its audit entry, or neither is.
                assert copy.revisions(record.name)
                applied = record.current_revision is not None
                assert len(copy.audit(endpoint=record.name)) == 1 + applied


def test_restore_brings_back_the_backed_up_state(tmp_path: Path) -> None:
    path = tmp_path / "platform.db"
    with PlatformState(path) as st:
        create(st, "keep")
        secret = st.create_token("manage")
        st.backup(tmp_path / "backup.db")
        create(st, "later")
    PlatformState.restore(tmp_path / "backup.db", path)
    with PlatformState(path) as st:
        assert [e.name for e in st.list_endpoints()] == ["keep"]
        assert st.check_token(secret, "manage")


def test_restore_refuses_a_file_that_is_not_a_state_backup(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a cvdeploy platform state backup"):
        PlatformState.restore(junk, tmp_path / "platform.db")
    with pytest.raises(ConfigError, match="does not exist"):
        PlatformState.restore(tmp_path / "missing.db", tmp_path / "platform.db")
    assert not (tmp_path / "platform.db").exists()
