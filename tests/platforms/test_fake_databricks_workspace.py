"""The fake Databricks workspace, driven by the real ``databricks-sdk``.

These tests pin the fake to Databricks' contract as the SDK encodes it (paths, bodies, state
transitions, error classes); cvdeploy's Databricks backend is then tested against the fake.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fakes.databricks_workspace import FakeWorkspace
from fakes.mlflow_server import MlflowServer, mlflow_server  # noqa: F401 (fixture)

import cvdeploy

sdk = pytest.importorskip("databricks.sdk")
serving = pytest.importorskip("databricks.sdk.service.serving")
errors = pytest.importorskip("databricks.sdk.errors")
from databricks.sdk.errors import OperationFailed  # noqa: E402

DEMO = Path(cvdeploy.__file__).parent / "demo"
WAIT = timedelta(seconds=20)


class Clock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ws(clock: Clock) -> Iterator[FakeWorkspace]:
    with FakeWorkspace(token="dapi-test", clock=clock, update_delay_s=0.3) as workspace:
        yield workspace


@pytest.fixture
def w(ws: FakeWorkspace):
    return sdk.WorkspaceClient(host=ws.url, token=ws.token)


def _entity(version: str = "1", name: str = "main.cv.digits", **extra):
    return serving.ServedEntityInput(
        entity_name=name,
        entity_version=version,
        **({"workload_size": "Small", "scale_to_zero_enabled": False} | extra),
    )


def _config(endpoint: str, *entities, routes=None):
    traffic = None
    if routes is not None:
        traffic = serving.TrafficConfig(
            routes=[serving.Route(served_model_name=n, traffic_percentage=p) for n, p in routes]
        )
    return serving.EndpointCoreConfigInput(
        name=endpoint, served_entities=list(entities) or [_entity()], traffic_config=traffic
    )


def _raw(ws: FakeWorkspace, method: str, path: str, body=None, token: str | None = "same"):
    """(status, headers, parsed body) of a request made without the SDK."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {ws.token if token == 'same' else token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(ws.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


# -- life cycle -------------------------------------------------------------------------


def test_create_goes_in_progress_then_ready(w, ws: FakeWorkspace) -> None:
    waiter = w.serving_endpoints.create(name="digits", config=_config("digits"))
    first = waiter.response
    assert first.state.ready == serving.EndpointStateReady.NOT_READY
    assert first.state.config_update == serving.EndpointStateConfigUpdate.IN_PROGRESS
    assert first.config is None
    assert first.pending_config.config_version == 1
    assert first.pending_config.served_entities[0].state.deployment == (
        serving.ServedModelStateDeployment.DEPLOYMENT_CREATING
    )

    ready = waiter.result(timeout=WAIT)
    assert ready.state.ready == serving.EndpointStateReady.READY
    assert ready.state.config_update == serving.EndpointStateConfigUpdate.NOT_UPDATING
    assert ready.pending_config is None
    assert ready.config.config_version == 1
    (entity,) = ready.config.served_entities
    # A Unity Catalog name's default served-entity name drops the catalog and schema.
    assert entity.name == "digits-1"
    assert entity.entity_name == "main.cv.digits"
    assert entity.workload_type == serving.ServingModelWorkloadType.CPU
    assert entity.state.deployment == serving.ServedModelStateDeployment.DEPLOYMENT_READY
    assert ready.config.traffic_config.routes[0].traffic_percentage == 100


def test_get_list_and_delete(w, ws: FakeWorkspace) -> None:
    assert list(w.serving_endpoints.list()) == []
    assert _raw(ws, "GET", "/api/2.0/serving-endpoints")[2] == {}  # empty list: key omitted
    w.serving_endpoints.create_and_wait(name="a", config=_config("a"), timeout=WAIT)
    w.serving_endpoints.create(name="b", config=_config("b"))
    listed = {e.name: e for e in w.serving_endpoints.list()}
    assert sorted(listed) == ["a", "b"]
    assert listed["a"].config.served_entities[0].name == "digits-1"
    assert w.serving_endpoints.get(name="a").state.ready == serving.EndpointStateReady.READY

    w.serving_endpoints.delete(name="a")
    with pytest.raises(errors.ResourceDoesNotExist, match="Endpoint with name 'a' does not exist"):
        w.serving_endpoints.get(name="a")
    assert [e.name for e in w.serving_endpoints.list()] == ["b"]


def test_update_config_and_wait_splits_traffic(w) -> None:
    w.serving_endpoints.create_and_wait(name="ab", config=_config("ab"), timeout=WAIT)
    updated = w.serving_endpoints.update_config_and_wait(
        name="ab",
        served_entities=[_entity("1"), _entity("2", workload_size="Medium")],
        traffic_config=serving.TrafficConfig(
            routes=[
                serving.Route(served_model_name="digits-1", traffic_percentage=90),
                serving.Route(served_model_name="digits-2", traffic_percentage=10),
            ]
        ),
        timeout=WAIT,
    )
    assert updated.config.config_version == 2
    assert [e.name for e in updated.config.served_entities] == ["digits-1", "digits-2"]
    assert [r.traffic_percentage for r in updated.config.traffic_config.routes] == [90, 10]


def test_update_while_in_progress_is_a_conflict(w) -> None:
    w.serving_endpoints.create_and_wait(name="busy", config=_config("busy"), timeout=WAIT)
    w.serving_endpoints.update_config(name="busy", served_entities=[_entity("2")])
    with pytest.raises(errors.ResourceConflict, match="update in progress"):
        w.serving_endpoints.update_config(name="busy", served_entities=[_entity("3")])


def test_failed_update_keeps_the_old_config_and_logs_the_reason(w, ws: FakeWorkspace) -> None:
    w.serving_endpoints.create_and_wait(name="f", config=_config("f"), timeout=WAIT)
    ws.fail_next_update(reason="pip could not install onnxruntime==0.0.1")
    with pytest.raises(OperationFailed, match="UPDATE_FAILED"):
        w.serving_endpoints.update_config_and_wait(
            name="f", served_entities=[_entity("2")], timeout=WAIT
        )
    got = w.serving_endpoints.get(name="f")
    assert got.state.config_update == serving.EndpointStateConfigUpdate.UPDATE_FAILED
    assert got.state.ready == serving.EndpointStateReady.READY  # the old config still serves
    assert got.config.config_version == 1
    assert got.config.served_entities[0].entity_version == "1"
    assert got.pending_config.config_version == 2
    failed = got.pending_config.served_entities[0]
    assert failed.state.deployment == serving.ServedModelStateDeployment.DEPLOYMENT_FAILED
    logs = w.serving_endpoints.build_logs(name="f", served_model_name="digits-2").logs
    assert "pip could not install onnxruntime==0.0.1" in logs
    # A failed update does not block the next one.
    again = w.serving_endpoints.update_config_and_wait(
        name="f", served_entities=[_entity("3")], timeout=WAIT
    )
    assert again.config.config_version == 3
    assert again.pending_config is None


def test_failed_first_config_leaves_the_endpoint_not_ready(w, ws: FakeWorkspace) -> None:
    ws.fail_next_update(reason="model signature is missing")
    with pytest.raises(OperationFailed):
        w.serving_endpoints.create_and_wait(name="nf", config=_config("nf"), timeout=WAIT)
    got = w.serving_endpoints.get(name="nf")
    assert got.state.ready == serving.EndpointStateReady.NOT_READY
    assert got.config is None
    status, _, body = _raw(ws, "POST", "/serving-endpoints/nf/invocations", {"inputs": ["x"]})
    assert status == 404
    assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "not ready" in body["message"]


# -- metrics and logs -------------------------------------------------------------------


def _families(w, name: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = w.serving_endpoints.export_metrics(name=name).contents.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, entity: str, suffix: str = "", **labels: str) -> float:
    for sample in family.samples:
        if (
            sample.name == family.name + suffix
            and sample.labels.get("served_entity_name") == entity
            and all(sample.labels.get(k) == v for k, v in labels.items())
        ):
            return sample.value
    raise KeyError(f"{family.name}{suffix} {entity} {labels}")


def test_export_metrics_counts_the_last_minute(w, ws: FakeWorkspace, clock: Clock) -> None:
    w.serving_endpoints.create_and_wait(
        name="m",
        config=_config(
            "m", _entity("1"), _entity("2"), routes=[("digits-1", 50), ("digits-2", 50)]
        ),
        timeout=WAIT,
    )
    ws.record_traffic(
        "m",
        "digits-1",
        requests=10,
        errors_4xx=2,
        errors_5xx=1,
        latencies_ms=[4, 20, 20, 300],
        cpu_percent=35.0,
        mem_percent=60.0,
    )
    families = _families(w, "m")
    for name in (
        "cpu_usage_percentage",
        "mem_usage_percentage",
        "provisioned_concurrent_requests_total",
        "request_count_total",
        "request_4xx_count_total",
        "request_5xx_count_total",
    ):
        assert families[name].type == "gauge", name
    assert _value(families["request_count_total"], "digits-1") == 10
    assert _value(families["request_4xx_count_total"], "digits-1") == 2
    assert _value(families["request_5xx_count_total"], "digits-1") == 1
    assert _value(families["request_count_total"], "digits-2") == 0
    assert _value(families["cpu_usage_percentage"], "digits-1") == 35.0
    assert _value(families["provisioned_concurrent_requests_total"], "digits-1") == 4
    latency = families["request_latency_ms"]
    assert latency.type == "histogram"
    assert _value(latency, "digits-1", "_bucket", le="5.0") == 1
    assert _value(latency, "digits-1", "_bucket", le="25.0") == 3
    assert _value(latency, "digits-1", "_bucket", le="+Inf") == 4
    assert _value(latency, "digits-1", "_count") == 4
    assert _value(latency, "digits-1", "_sum") == 344

    clock.offset += 61  # a minute later the window is empty: gauges, not counters
    families = _families(w, "m")
    assert _value(families["request_count_total"], "digits-1") == 0
    assert _value(families["request_latency_ms"], "digits-1", "_count") == 0


def test_logs_of_a_served_entity(w) -> None:
    w.serving_endpoints.create_and_wait(name="lg", config=_config("lg"), timeout=WAIT)
    logs = w.serving_endpoints.logs(name="lg", served_model_name="digits-1").logs
    assert "models:/main.cv.digits/1" in logs
    build = w.serving_endpoints.build_logs(name="lg", served_model_name="digits-1").logs
    assert "Build succeeded" in build
    with pytest.raises(errors.NotFound, match="ghost"):
        w.serving_endpoints.logs(name="lg", served_model_name="ghost")


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("has space", None, "Invalid endpoint name"),
        ("dotted.name", None, "Invalid endpoint name"),
        ("x" * 64, None, "Invalid endpoint name"),
        ("r", _config("r", _entity("1"), _entity("2"), routes=[("digits-1", 50)]), "sum to 100"),
        ("g", _config("g", routes=[("ghost", 100)]), "ghost"),
        ("two", _config("two", _entity("1"), _entity("2")), "traffic_config is required"),
        ("sz", _config("sz", _entity(workload_size="Huge")), "workload_size"),
        (
            "c4",
            _config(
                "c4",
                serving.ServedEntityInput(
                    entity_name="m",
                    entity_version="1",
                    min_provisioned_concurrency=2,
                    max_provisioned_concurrency=8,
                ),
            ),
            "multiple of 4",
        ),
        (
            "cmm",
            _config(
                "cmm",
                serving.ServedEntityInput(
                    entity_name="m",
                    entity_version="1",
                    min_provisioned_concurrency=8,
                    max_provisioned_concurrency=4,
                ),
            ),
            "at least",
        ),
        (
            "both",
            _config("both", _entity(min_provisioned_concurrency=4, max_provisioned_concurrency=4)),
            "cannot be used with",
        ),
        (
            "nov",
            _config("nov", serving.ServedEntityInput(entity_name="m", workload_size="Small")),
            "entity_version",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 12 else None,
)
def test_invalid_requests_are_invalid_parameter_value(w, name, config, match) -> None:
    with pytest.raises(errors.InvalidParameterValue, match=match):
        w.serving_endpoints.create(name=name, config=config or _config(name))


def test_duplicate_name_is_resource_already_exists(w) -> None:
    w.serving_endpoints.create(name="dup", config=_config("dup"))
    with pytest.raises(errors.ResourceAlreadyExists, match="already exists"):
        w.serving_endpoints.create(name="dup", config=_config("dup"))


def _short_retry_client(ws: FakeWorkspace):
    from databricks.sdk.config import Config

    return sdk.WorkspaceClient(config=Config(host=ws.url, token=ws.token, retry_timeout_seconds=1))


def test_quota_is_resource_exhausted_and_not_hammered(ws: FakeWorkspace) -> None:
    # 429 is retried by the SDK (Retry-After); a short retry budget surfaces the cause.
    w = _short_retry_client(ws)
    big = [_entity(str(v), workload_size="Large") for v in range(1, 5)]  # 4 x 64 > 200
    routes = [(f"digits-{v}", 25) for v in range(1, 5)]
    with pytest.raises(TimeoutError) as caught:
        w.serving_endpoints.create(name="big", config=_config("big", *big, routes=routes))
    assert isinstance(caught.value.__cause__, errors.ResourceExhausted)
    assert "quota of 200" in str(caught.value.__cause__)
    assert [s for m, p, s in ws.requests if m == "POST"] == [429]


def test_auth_missing_is_401_and_wrong_is_403(ws: FakeWorkspace) -> None:
    status, _, body = _raw(ws, "GET", "/api/2.0/serving-endpoints", token=None)
    assert status == 401
    assert body["error_code"] == "UNAUTHENTICATED"
    assert set(body) == {"error_code", "message"}
    # The SDK's own unauthenticated client (the one its host-metadata probe uses).
    from databricks.sdk._base_client import _BaseClient

    with pytest.raises(errors.Unauthenticated, match="Credential was not sent"):
        _BaseClient(retry_timeout_seconds=1).do("GET", f"{ws.url}/api/2.0/serving-endpoints")
    status, _, body = _raw(ws, "GET", "/api/2.0/serving-endpoints", token="dapi-wrong")
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    wrong = sdk.WorkspaceClient(host=ws.url, token="dapi-wrong")
    with pytest.raises(errors.PermissionDenied, match="Invalid access token"):
        list(wrong.serving_endpoints.list())
    status, _, body = _raw(ws, "POST", "/serving-endpoints/x/invocations", {}, token=None)
    assert status == 401  # the data plane too


def test_rate_limit_answers_429_with_retry_after_and_the_sdk_backs_off() -> None:
    with FakeWorkspace(rate_limit_per_s=2) as ws:
        w = sdk.WorkspaceClient(host=ws.url, token=ws.token)
        start = time.monotonic()
        for _ in range(3):
            assert list(w.serving_endpoints.list()) == []
        elapsed = time.monotonic() - start
        limited = [entry for entry in ws.requests if entry[2] == 429]
        assert len(limited) == 1, ws.requests  # one refusal, then the SDK waited Retry-After
        assert elapsed >= 1.0
        status, headers, body = _raw(ws, "GET", "/api/2.0/serving-endpoints")
        status2, headers2, body2 = _raw(ws, "GET", "/api/2.0/serving-endpoints")
        assert 429 in (status, status2)
        refused = body if status == 429 else body2
        assert refused["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert (headers if status == 429 else headers2)["Retry-After"] == "1"
        short = _short_retry_client(ws)
        for _ in range(3):
            _raw(ws, "GET", "/api/2.0/serving-endpoints")
        with pytest.raises(TimeoutError) as caught:
            list(short.serving_endpoints.list())
        assert isinstance(caught.value.__cause__, errors.RequestLimitExceeded)


def test_unknown_api_and_unknown_endpoint(ws: FakeWorkspace) -> None:
    status, _, body = _raw(ws, "GET", "/api/2.0/no-such-api")
    assert (status, body["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    status, _, body = _raw(ws, "POST", "/serving-endpoints/nothing/invocations", {"inputs": []})
    assert (status, body["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


def test_query_without_a_registry_is_503_with_the_reason(w, ws: FakeWorkspace) -> None:
    w.serving_endpoints.create_and_wait(name="q", config=_config("q"), timeout=WAIT)
    status, headers, body = _raw(ws, "POST", "/serving-endpoints/q/invocations", {"inputs": []})
    assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert "registry_uri" in body["message"]
    assert headers["Retry-After"] == "1"


def test_the_fake_is_independent_of_cvdeploy() -> None:
    import fakes.databricks

    package = Path(fakes.databricks.__file__).parent
    for source in [*package.glob("*.py"), package.parent / "databricks_workspace.py"]:
        text = source.read_text()
        assert "import cvdeploy" not in text, source
        assert "from cvdeploy" not in text, source


# -- scoring with the real registered model ---------------------------------------------


def _digit(n: int) -> str:
    return base64.b64encode((DEMO / "images" / f"digit_{n}.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def scored(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A fake workspace serving the demo digits classifier registered on a real MLflow server."""
    from cvdeploy.registry import Registry

    registry = Registry(uri=mlflow_server.url, home=tmp_path_factory.mktemp("cvd_home"))
    version = registry.register(DEMO / "digits_classifier.onnx", "digits")
    with FakeWorkspace(registry_uri=mlflow_server.url, update_delay_s=0.2) as ws:
        w = sdk.WorkspaceClient(host=ws.url, token=ws.token)
        w.serving_endpoints.create_and_wait(
            name="digits",
            config=_config("digits", _entity(version.version, name="digits")),
            timeout=timedelta(seconds=60),
        )
        yield ws, w


@pytest.mark.slow
def test_query_dataframe_split_scores_with_the_registered_model(scored) -> None:
    ws, w = scored
    answer = w.serving_endpoints.query(
        name="digits",
        dataframe_split=serving.DataframeSplitInput(columns=["image"], data=[[_digit(3)]]),
    )
    assert answer.predictions[0]["classes"][0]["label"] == "3"
    assert answer.served_model_name == "digits-1"  # the served-model-name header
    assert ("POST", "/serving-endpoints/digits/invocations", 200) in ws.requests
    families = _families(w, "digits")
    assert _value(families["request_count_total"], "digits-1") >= 1
    logs = w.serving_endpoints.logs(name="digits", served_model_name="digits-1").logs
    assert "POST /invocations 200" in logs


@pytest.mark.slow
def test_query_dataframe_records_with_params(scored) -> None:
    _, w = scored
    answer = w.serving_endpoints.query(name="digits", dataframe_records=[{"image": _digit(7)}])
    assert answer.predictions[0]["classes"][0]["label"] == "7"


@pytest.mark.slow
@pytest.mark.parametrize("inputs", [[_digit(3)], {"image": [_digit(3)]}], ids=["list", "column"])
def test_query_inputs_scores_with_the_registered_model(scored, inputs) -> None:
    _, w = scored
    answer = w.serving_endpoints.query(name="digits", inputs=inputs)
    assert answer.predictions[0]["classes"][0]["label"] == "3"


@pytest.mark.slow
def test_bad_input_is_bad_request_from_mlflow(scored) -> None:
    _, w = scored
    with pytest.raises(errors.BadRequest):
        w.serving_endpoints.query(
            name="digits",
            dataframe_split=serving.DataframeSplitInput(columns=["image"], data=[["!!"]]),
        )


@pytest.mark.slow
def test_a_missing_model_version_fails_the_build(scored) -> None:
    _, w = scored
    with pytest.raises(OperationFailed):
        w.serving_endpoints.update_config_and_wait(
            name="digits",
            served_entities=[_entity("99", name="digits")],
            timeout=timedelta(seconds=30),
        )
    logs = w.serving_endpoints.build_logs(name="digits", served_model_name="digits-99").logs
    assert "digits" in logs
    assert "Build failed" in logs
    got = w.serving_endpoints.get(name="digits")
    assert got.config.served_entities[0].entity_version == "1"  # still serving version 1
