"""``cvdeploy up``, ``down`` and ``cvdeploy endpoints ...`` through Typer's runner.

The platform is a fake: an in-memory ``FakeClient`` with the methods of ``PlatformClient`` that
the commands call, swapped in at the CLI's one seam (``_connect``), so each command's output,
``--json`` and error exits are checked without a server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cvdeploy.cli import endpoints as endpoints_cli
from cvdeploy.cli.app import app
from cvdeploy.cli.output import console
from cvdeploy.errors import ConfigError, ModelLoadError
from cvdeploy.platforms.base import (
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
    EndpointState,
)
from cvdeploy.platforms.local import daemon

runner = CliRunner()


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeClient:
    """The platform's behaviour, in memory: updates finish when someone waits for them."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointInfo] = {}
        self.history: dict[str, list[EndpointCoreConfig]] = {}
        self.connections: list[tuple[str | None, str | None, Path | None]] = []
        self.fail_next_update = False
        self.images: list[bytes] = []
        self.params: Mapping[str, Any] | None = None

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _get(self, name: str) -> EndpointInfo:
        if name not in self.endpoints:
            raise EndpointNotFoundError(f"endpoint '{name}' does not exist")
        return self.endpoints[name]

    def _start(self, name: str, config: EndpointCoreConfig, current: EndpointInfo | None) -> None:
        state = EndpointState(
            ready="READY" if current and current.config else "NOT_READY",
            config_update="IN_PROGRESS",
        )
        self.endpoints[name] = EndpointInfo(
            name=name,
            config=current.config if current else None,
            pending_config=config,
            state=state,
            creation_timestamp=current.creation_timestamp if current else now_ms(),
            last_updated_timestamp=now_ms(),
        )

    def create_endpoint(self, spec: EndpointSpec) -> EndpointInfo:
        if spec.name in self.endpoints:
            raise EndpointAlreadyExistsError(f"endpoint '{spec.name}' already exists")
        self._start(spec.name, spec.config, None)
        return self.endpoints[spec.name]

    def get_endpoint(self, name: str) -> EndpointInfo:
        return self._get(name)

    def list_endpoints(self) -> list[EndpointInfo]:
        return [self.endpoints[n] for n in sorted(self.endpoints)]

    def update_config(self, name: str, config: EndpointCoreConfig) -> EndpointInfo:
        self._start(name, config, self._get(name))
        return self.endpoints[name]

    def rollback(self, name: str, to_revision: int | None = None) -> EndpointInfo:
        history = self.history[name]
        number = len(history) - 1 if to_revision is None else to_revision
        return self.update_config(name, history[number - 1])

    def delete_endpoint(self, name: str) -> None:
        self._get(name)
        del self.endpoints[name]

    def wait_not_updating(
        self,
        name: str,
        timeout: float = 300,
        poll_s: float = 0.25,
        on_poll: Callable[[EndpointInfo], None] | None = None,
    ) -> EndpointInfo:
        info = self._get(name)
        if on_poll is not None:
            on_poll(info)
        if self.fail_next_update:
            self.fail_next_update = False
            raise ModelLoadError(f"endpoint '{name}': replicas of digits-9 failed to load")
        assert info.pending_config is not None
        self.history.setdefault(name, []).append(info.pending_config)
        self.endpoints[name] = info.model_copy(
            update={
                "config": info.pending_config,
                "pending_config": None,
                "state": EndpointState(ready="READY", config_update="NOT_UPDATING"),
            }
        )
        return self.endpoints[name]

    def revisions(self, name: str) -> list[dict[str, Any]]:
        return [
            {
                "number": i,
                "status": "ACTIVE" if i == len(self.history[name]) else "SUPERSEDED",
                "author": "tester",
                "created_at": 1_700_000_000.0 + i,
                "rollback_of": None,
                "config": config.to_json(),
            }
            for i, config in enumerate(self.history[self._get(name).name], start=1)
        ]

    def logs(self, name: str, served_model_name: str) -> str:
        self._get(name)
        return f"replica 0 of {served_model_name}: loaded\n"

    def metrics(self, name: str) -> str:
        self._get(name)
        return f'cvdeploy_requests_total{{endpoint="{name}"}} 3'

    def predict_images(
        self, name: str, images: Sequence[bytes], params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        self._get(name)
        self.images, self.params = list(images), params
        detection = {
            "task": "detection",
            "image": {"width": 64, "height": 48},
            "detections": [
                {"box": [1, 2, 3, 4], "score": 0.91, "class_id": 0, "label": "cat"},
                {"box": [5, 6, 7, 8], "score": 0.55, "class_id": 0, "label": "cat"},
                {"box": [1, 1, 9, 9], "score": 0.40, "class_id": 1, "label": "dog"},
            ],
        }
        classification = {
            "task": "classification",
            "classes": [{"class_id": 7, "label": "seven", "score": 0.98}],
        }
        return {"predictions": [detection, classification][: len(images)]}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    monkeypatch.setenv("CVDEPLOY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CVDEPLOY_URL", raising=False)
    monkeypatch.delenv("CVDEPLOY_TOKEN", raising=False)
    # Wide enough that table cells are not cut.
    monkeypatch.setattr(console, "_width", 200)
    client = FakeClient()

    def connect(url: str | None, token: str | None, ca_file: Path | None = None) -> FakeClient:
        client.connections.append((url, token, ca_file))
        return client

    monkeypatch.setattr(endpoints_cli, "_connect", connect)
    return client


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def create(name: str = "shop", version: str = "1", *extra: str) -> None:
    code, _, err = invoke(
        "endpoints", "create", name, "--model", "digits", "--version", version, *extra
    )
    assert code == 0, err


# -- up / down -----------------------------------------------------------------------------------


def test_up_runs_the_platform_in_the_foreground(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvdeploy.platforms.local import server

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "run_platform", lambda *a, **kw: calls.append({"a": a, **kw}))
    code, _, err = invoke("up", "--port", "9000", "--config", "p.yaml", "--log-level", "debug")
    assert code == 0, err
    assert calls == [
        {
            "a": ("127.0.0.1", 9000),
            "config_path": Path("p.yaml"),
            "ssl_certfile": None,
            "ssl_keyfile": None,
            "log_level": "debug",
        }
    ]


def test_up_reports_a_config_error_with_exit_2(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvdeploy.platforms.local import server

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConfigError("binding 0.0.0.0 needs a token; create one with `cvdeploy tokens`")

    monkeypatch.setattr(server, "run_platform", refuse)
    code, _, err = invoke("up", "--host", "0.0.0.0")
    assert code == 2
    assert "needs a token" in err


def test_up_refuses_a_second_platform(fake: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "discover", lambda timeout=1.0: "http://127.0.0.1:8080")
    code, _, err = invoke("up")
    assert code == 2
    assert "already running at http://127.0.0.1:8080" in err


def test_up_detach_prints_the_url_and_the_log(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []

    def start(host: str, port: int, **kwargs: Any) -> str:
        calls.append((host, port, kwargs["config_path"], kwargs["timeout"]))
        return f"http://{host}:{port}"

    monkeypatch.setattr(daemon, "start_detached", start)
    code, out, err = invoke("up", "--detach", "--port", "9001", "--timeout", "5")
    assert code == 0, err
    assert out == "http://127.0.0.1:9001\n"
    assert "platform.log" in err
    assert calls == [("127.0.0.1", 9001, None, 5.0)]


def test_up_detach_refuses_port_zero(fake: FakeClient) -> None:
    code, _, err = invoke("up", "--detach", "--port", "0")
    assert code == 2
    assert "--port 0" in err


@pytest.mark.parametrize(("running", "message"), [(True, "stopped"), (False, "no platform")])
def test_down_exits_0_either_way(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch, running: bool, message: str
) -> None:
    monkeypatch.setattr(daemon, "stop", lambda timeout=30.0: running)
    code, out, _ = invoke("down")
    assert code == 0
    assert message in out


# -- create / get / list -------------------------------------------------------------------------


def test_create_waits_and_reports_ready(fake: FakeClient) -> None:
    code, out, err = invoke(
        "endpoints", "create", "shop", "--model", "digits", "--version", "1", "--max-replicas", "3"
    )
    assert code == 0, err
    assert "created endpoint shop" in out
    assert "digits-1:100%" in out
    assert "READY" in out
    config = fake.endpoints["shop"].config
    assert config is not None
    assert config.served_entities[0].replica_bounds == (1, 3)


def test_create_no_wait_json_shows_the_update_in_progress(fake: FakeClient) -> None:
    code, out, err = invoke(
        "endpoints", "create", "shop", "--model", "digits", "--version", "1", "--no-wait", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert data["pending_config"]["served_entities"][0]["entity_name"] == "digits"


def test_create_from_a_yaml_file_takes_the_name_argument(fake: FakeClient, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: other\nconfig:\n  served_entities:\n"
        "    - {entity_name: digits, entity_version: 4, min_replicas: 2}\n"
    )
    code, _, err = invoke("endpoints", "create", "shop", "--file", str(spec))
    assert code == 0, err
    assert list(fake.endpoints) == ["shop"]
    config = fake.endpoints["shop"].config
    assert config is not None
    assert config.served_entities[0].min_replicas == 2


def test_create_needs_model_and_version(fake: FakeClient) -> None:
    code, _, err = invoke("endpoints", "create", "shop", "--model", "digits")
    assert code == 2
    assert "--model and --version" in err


def test_create_rejects_an_invalid_spec_before_sending(fake: FakeClient) -> None:
    code, _, err = invoke(
        "endpoints",
        "create",
        "shop",
        "--model",
        "digits",
        "--version",
        "1",
        "--min-replicas",
        "4",
        "--max-replicas",
        "2",
    )
    assert code == 2
    assert "min_replicas (4) is greater than max_replicas (2)" in err
    assert fake.endpoints == {}


def test_create_reports_a_failed_update(fake: FakeClient) -> None:
    fake.fail_next_update = True
    code, _, err = invoke("endpoints", "create", "shop", "--model", "digits", "--version", "9")
    assert code == 2
    assert "failed to load" in err


def test_create_taken_name_exits_2(fake: FakeClient) -> None:
    create()
    code, _, err = invoke("endpoints", "create", "shop", "--model", "digits", "--version", "2")
    assert code == 2
    assert "already exists" in err


def test_list_shows_state_served_versions_and_traffic(fake: FakeClient) -> None:
    create("shop")
    create("zoo", "2", "--no-wait")
    code, out, err = invoke("endpoints", "list")
    assert code == 0, err
    assert "2 endpoint(s)" in out
    shop = next(line for line in out.splitlines() if "shop" in line)
    assert "READY" in shop
    assert "NOT_UPDATING" in shop
    assert "digits=1" in shop
    assert "digits-1:100%" in shop
    zoo = next(line for line in out.splitlines() if "zoo" in line)
    assert "IN_PROGRESS" in zoo
    listed = json.loads(invoke("endpoints", "list", "--json")[1])
    assert [e["name"] for e in listed] == ["shop", "zoo"]


def test_get_shows_entities_replicas_and_the_pending_config(fake: FakeClient) -> None:
    create("shop", "1", "--max-replicas", "4")
    invoke("endpoints", "update", "shop", "--model", "digits", "--version", "2", "--no-wait")
    code, out, err = invoke("endpoints", "get", "shop")
    assert code == 0, err
    assert "IN_PROGRESS" in out
    assert "serving config" in out
    assert "pending config" in out
    assert "1-4" in out
    assert "digits-2" in out
    data = json.loads(invoke("endpoints", "get", "shop", "--json")[1])
    assert data["pending_config"]["served_entities"][0]["entity_version"] == "2"


def test_get_unknown_endpoint_exits_2_with_the_message(fake: FakeClient) -> None:
    code, out, err = invoke("endpoints", "get", "nope")
    assert code == 2
    assert "endpoint 'nope' does not exist" in err
    assert out == ""


# -- update / rollback / revisions ---------------------------------------------------------------


def split(fake: FakeClient, name: str) -> dict[str, int]:
    config = fake.endpoints[name].config
    assert config is not None
    return {r.served_model_name: r.traffic_percentage for r in config.routes}


def test_update_with_traffic_starts_a_canary(fake: FakeClient) -> None:
    create("shop", "1", "--min-replicas", "2", "--max-replicas", "5")
    code, out, err = invoke(
        "endpoints", "update", "shop", "--model", "digits", "--version", "2", "--traffic", "10"
    )
    assert code == 0, err
    assert "updated endpoint shop" in out
    assert split(fake, "shop") == {"digits-1": 90, "digits-2": 10}
    config = fake.endpoints["shop"].config
    assert config is not None
    assert [e.replica_bounds for e in config.served_entities] == [(2, 5), (2, 5)]


def test_update_defaults_to_full_traffic(fake: FakeClient) -> None:
    create("shop", "1")
    code, _, err = invoke("endpoints", "update", "shop", "--model", "digits", "--version", "2")
    assert code == 0, err
    assert split(fake, "shop") == {"digits-2": 100}


def test_update_from_a_json_config_file(fake: FakeClient, tmp_path: Path) -> None:
    create("shop", "1")
    body = {"served_entities": [{"entity_name": "digits", "entity_version": "5"}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(body))
    code, out, err = invoke("endpoints", "update", "shop", "--file", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["served_entities"][0]["entity_version"] == "5"


def test_update_zero_traffic_for_a_new_version_exits_2(fake: FakeClient) -> None:
    create("shop", "1")
    code, _, err = invoke(
        "endpoints", "update", "shop", "--model", "digits", "--version", "2", "--traffic", "0"
    )
    assert code == 2
    assert "0% traffic" in err


def test_rollback_and_revisions(fake: FakeClient) -> None:
    create("shop", "1")
    invoke("endpoints", "update", "shop", "--model", "digits", "--version", "2")
    code, out, err = invoke("endpoints", "rollback", "shop")
    assert code == 0, err
    assert "rolled back endpoint shop" in out
    assert split(fake, "shop") == {"digits-1": 100}

    code, out, err = invoke("endpoints", "revisions", "shop")
    assert code == 0, err
    assert "3 revision(s)" in out
    assert "2023-11-14 22:13:21" in out  # created_at of revision 1, seconds since the epoch
    assert "digits=2" in out
    listed = json.loads(invoke("endpoints", "revisions", "shop", "--json")[1])
    assert [r["number"] for r in listed] == [1, 2, 3]

    code, _, err = invoke("endpoints", "rollback", "shop", "--to-revision", "2", "--no-wait")
    assert code == 0, err
    pending = fake.endpoints["shop"].pending_config
    assert pending is not None
    assert pending.served_entities[0].entity_version == "2"


# -- delete --------------------------------------------------------------------------------------


def test_delete_asks_first_and_keeps_the_endpoint_on_no(fake: FakeClient) -> None:
    create("shop")
    code, out, _ = invoke("endpoints", "delete", "shop", input="n\n")
    assert code == 1
    assert "Delete endpoint shop?" in out
    assert "shop" in fake.endpoints


def test_delete_on_yes(fake: FakeClient) -> None:
    create("shop")
    code, out, err = invoke("endpoints", "delete", "shop", input="y\n")
    assert code == 0, err
    assert "deleted endpoint shop" in out
    assert fake.endpoints == {}


def test_delete_with_yes_flag_and_json(fake: FakeClient) -> None:
    create("shop")
    code, out, err = invoke("endpoints", "delete", "shop", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out) == {"deleted": True, "name": "shop"}


def test_delete_unknown_exits_2(fake: FakeClient) -> None:
    code, _, err = invoke("endpoints", "delete", "nope", "-y")
    assert code == 2
    assert "does not exist" in err


# -- logs / metrics / query ----------------------------------------------------------------------


def test_logs_and_metrics_print_raw_text(fake: FakeClient) -> None:
    create("shop")
    code, out, err = invoke("endpoints", "logs", "shop", "digits-1")
    assert code == 0, err
    assert out == "replica 0 of digits-1: loaded\n"
    code, out, err = invoke("endpoints", "metrics", "shop")
    assert code == 0, err
    assert out == 'cvdeploy_requests_total{endpoint="shop"} 3\n'


def images(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "street.jpg", tmp_path / "seven.png"
    a.write_bytes(b"jpeg bytes")
    b.write_bytes(b"png bytes")
    return a, b


def test_query_prints_a_summary_per_image(fake: FakeClient, tmp_path: Path) -> None:
    create("shop")
    a, b = images(tmp_path)
    code, out, err = invoke("endpoints", "query", "shop", str(a), str(b), "--conf", "0.3")
    assert code == 0, err
    assert fake.images == [b"jpeg bytes", b"png bytes"]
    assert fake.params == {"conf": 0.3}
    street = next(line for line in out.splitlines() if "street.jpg" in line)
    assert "3 box(es): cat x2, dog x1" in street
    assert "0.910" in street
    seven = next(line for line in out.splitlines() if "seven.png" in line)
    assert "seven" in seven.replace("seven.png", "")
    assert "0.9800" in seven


def test_query_details_reuses_the_predict_tables(fake: FakeClient, tmp_path: Path) -> None:
    create("shop")
    a, _ = images(tmp_path)
    code, out, err = invoke("endpoints", "query", "shop", str(a), "--details")
    assert code == 0, err
    assert "detection(s) in 64x48" in out  # the title wraps before the count
    assert "1.0, 1.0, 9.0, 9.0" in out


def test_query_json(fake: FakeClient, tmp_path: Path) -> None:
    create("shop")
    a, b = images(tmp_path)
    code, out, err = invoke("endpoints", "query", "shop", str(a), str(b), "--json")
    assert code == 0, err
    predictions = json.loads(out)["predictions"]
    assert len(predictions[0]["detections"]) == 3
    assert predictions[1]["classes"][0]["label"] == "seven"
    assert fake.params is None


def test_query_missing_image_is_a_usage_error(fake: FakeClient, tmp_path: Path) -> None:
    create("shop")
    code, _, err = invoke("endpoints", "query", "shop", str(tmp_path / "missing.jpg"))
    assert code == 2
    assert "missing.jpg" in err


# -- connecting ----------------------------------------------------------------------------------


def test_url_and_token_options_reach_the_client(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("endpoints", "list", "--url", "http://h:1", "--token", "cvd_x")
    monkeypatch.setenv("CVDEPLOY_TOKEN", "cvd_env")
    invoke("endpoints", "list")
    assert fake.connections == [("http://h:1", "cvd_x", None), (None, "cvd_env", None)]


def test_ca_file_option_and_env_reach_the_client(
    fake: FakeClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca, other = tmp_path / "ca.pem", tmp_path / "other.pem"
    ca.write_text("pem")
    other.write_text("pem")
    code, _, err = invoke("endpoints", "list", "--url", "https://h:1", "--ca-file", str(ca))
    assert code == 0, err
    monkeypatch.setenv("CVDEPLOY_CA_FILE", str(other))
    code, _, err = invoke("endpoints", "get", "nope", "--url", "https://h:1")
    assert code == 2
    assert "does not exist" in err
    assert fake.connections == [("https://h:1", None, ca), ("https://h:1", None, other)]


def test_a_missing_ca_file_is_a_usage_error(fake: FakeClient, tmp_path: Path) -> None:
    code, _, err = invoke("endpoints", "list", "--ca-file", str(tmp_path / "missing.pem"))
    assert code == 2
    assert "missing.pem" in err
    assert fake.connections == []


def test_connect_resolves_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVDEPLOY_URL", "http://platform.test:8123/")
    with endpoints_cli._connect(None, "cvd_t") as client:
        assert client.url == "http://platform.test:8123"
    with endpoints_cli._connect("http://explicit:1", None) as client:
        assert client.url == "http://explicit:1"


def test_connect_trusts_the_ca_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``--ca-file`` becomes the client's only trust anchor (a self-signed platform)."""
    import ssl

    from cvdeploy.platforms import client as client_module

    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    seen: list[bool | str] = []
    real = client_module.PlatformClient

    def spy(url: str, token: str | None = None, **kwargs: Any) -> Any:
        seen.append(kwargs.get("verify", True))
        kwargs["verify"] = ssl.create_default_context()  # the PEM above is not a real CA
        return real(url, token, **kwargs)

    monkeypatch.setattr(client_module, "PlatformClient", spy)
    with endpoints_cli._connect("https://h:1", None, ca) as client:
        assert client.url == "https://h:1"
    with endpoints_cli._connect("https://h:1", None) as client:
        assert client.url == "https://h:1"
    assert seen == [str(ca), True]
