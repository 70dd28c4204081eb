"""PlatformClient against a fake control plane speaking the serving-endpoints wire protocol."""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cvdeploy.errors import (
    ConfigError,
    CVDeployError,
    DeadlineExceededError,
    InputError,
    InvalidImageError,
    ModelLoadError,
    ModelNotFoundError,
    NotAvailableError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
)
from cvdeploy.platforms.base import (
    ConflictError,
    EndpointAlreadyExistsError,
    EndpointCoreConfig,
    EndpointInfo,
    EndpointNotFoundError,
    EndpointSpec,
)
from cvdeploy.platforms.client import PlatformClient
from cvdeploy.serving.protocols.mlflow import extract_images

URL = "http://platform.test:8080"
API = "/api/2.0/serving-endpoints"
CONFIG = {"served_entities": [{"entity_name": "yolo", "entity_version": "1"}]}


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error_code": code, "message": message}, headers=headers)


class FakePlatform:
    """The control plane's wire protocol, with endpoints in a dict and every request recorded."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.endpoints: dict[str, dict[str, Any]] = {}
        # Successive states GET returns for an endpoint (the last one repeats).
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.token: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if (
            self.token is not None
            and request.headers.get("authorization") != f"Bearer {self.token}"
        ):
            return error(401, "UNAUTHENTICATED", "missing or unknown token")
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "endpoints": len(self.endpoints)})
        if path == API and method == "POST":
            return self.create(body)
        if path == API and method == "GET":
            return httpx.Response(200, json={"endpoints": list(self.endpoints.values())})
        if path.startswith("/serving-endpoints/") and path.endswith("/invocations"):
            name = path.split("/")[2]
            if name not in self.endpoints:
                return error(404, "RESOURCE_DOES_NOT_EXIST", f"no endpoint named '{name}'")
            images, params = extract_images(body)
            return httpx.Response(
                200, json={"predictions": [{"size": len(i), "params": params} for i in images]}
            )
        parts = path.removeprefix(API + "/").split("/")
        name, rest = parts[0], "/".join(parts[1:])
        if name not in self.endpoints:
            return error(404, "RESOURCE_DOES_NOT_EXIST", f"no endpoint named '{name}'")
        return self.endpoint(name, method, rest, body)

    def create(self, body: Any) -> httpx.Response:
        try:
            spec = EndpointSpec.parse(body)
        except ConfigError as exc:
            return error(400, exc.error_code, exc.message)
        if spec.name in self.endpoints:
            return error(409, "RESOURCE_ALREADY_EXISTS", f"endpoint '{spec.name}' exists")
        info = {
            "name": spec.name,
            "pending_config": spec.config.to_json(),
            "state": {"ready": "NOT_READY", "config_update": "IN_PROGRESS"},
            "creation_timestamp": 1,
            "last_updated_timestamp": 1,
        }
        self.endpoints[spec.name] = info
        return httpx.Response(200, json=info)

    def endpoint(self, name: str, method: str, rest: str, body: Any) -> httpx.Response:
        info = self.endpoints[name]
        if method == "GET" and rest == "":
            states = self.states.get(name)
            if states:
                info = {**info, "state": states.pop(0) if len(states) > 1 else states[0]}
            return httpx.Response(200, json=info)
        if method == "DELETE" and rest == "":
            del self.endpoints[name]
            return httpx.Response(200, json={})
        if method == "PUT" and rest == "config":
            info = {**info, "pending_config": EndpointCoreConfig.parse(body).to_json()}
            return httpx.Response(200, json=info)
        if method == "POST" and rest == "rollback":
            return httpx.Response(200, json={**info, "rolled_back_to": body.get("to_revision")})
        if method == "GET" and rest == "revisions":
            return httpx.Response(200, json={"revisions": [{"revision": 1}, {"revision": 2}]})
        if method == "GET" and rest == "stats":
            return httpx.Response(200, json={"requests": 3, "replicas": {"yolo-1": 1}})
        if method == "GET" and rest == "metrics":
            return httpx.Response(200, text="# TYPE cvdeploy_requests_total counter\n")
        if method == "GET" and rest.startswith("served-models/") and rest.endswith("/logs"):
            served = rest.split("/")[1]
            if served != "yolo-1":
                return error(404, "RESOURCE_DOES_NOT_EXIST", f"no served model '{served}'")
            return httpx.Response(200, json={"logs": "replica started\n"})
        return error(404, "ENDPOINT_NOT_FOUND", f"no route {method} {rest}")

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content)


@pytest.fixture
def fake() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def client(fake: FakePlatform) -> Iterator[PlatformClient]:
    with PlatformClient(URL, transport=httpx.MockTransport(fake)) as c:
        yield c


@pytest.fixture
def created(client: PlatformClient) -> EndpointInfo:
    return client.create_endpoint({"name": "det", "config": CONFIG})


def answering(response: httpx.Response) -> PlatformClient:
    return PlatformClient(URL, transport=httpx.MockTransport(lambda _: response))


# Methods, paths and bodies


def test_create_endpoint_posts_the_spec(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    assert (fake.last.method, fake.last.url.path) == ("POST", API)
    assert fake.last_json() == {"name": "det", "config": CONFIG}
    assert created.name == "det"
    assert created.state.config_update == "IN_PROGRESS"
    assert created.pending_config is not None


def test_create_endpoint_sends_a_spec_model_as_databricks_json(
    client: PlatformClient, fake: FakePlatform
) -> None:
    client.create_endpoint(EndpointSpec.parse({"name": "det", "config": CONFIG}))
    body = fake.last_json()
    assert body["name"] == "det"
    assert body["config"]["served_entities"][0]["name"] == "yolo-1"
    assert body["config"]["traffic_config"] == {
        "routes": [{"served_model_name": "yolo-1", "traffic_percentage": 100}]
    }
    # None-valued extensions are left out rather than sent as null.
    assert "max_replicas" not in body["config"]["served_entities"][0]


def test_get_endpoint(client: PlatformClient, fake: FakePlatform, created: EndpointInfo) -> None:
    info = client.get_endpoint("det")
    assert (fake.last.method, fake.last.url.path) == ("GET", f"{API}/det")
    assert info == created


def test_list_endpoints(client: PlatformClient, fake: FakePlatform, created: EndpointInfo) -> None:
    assert [e.name for e in client.list_endpoints()] == ["det"]
    assert (fake.last.method, fake.last.url.path) == ("GET", API)


def test_list_endpoints_without_the_key_is_empty() -> None:
    with answering(httpx.Response(200, json={})) as client:
        assert client.list_endpoints() == []


def test_update_config_puts_the_config(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    config = {"served_entities": [{"entity_name": "yolo", "entity_version": "2"}]}
    info = client.update_config("det", config)
    assert (fake.last.method, fake.last.url.path) == ("PUT", f"{API}/det/config")
    assert fake.last_json() == config
    assert info.pending_config is not None
    assert info.pending_config.served_entities[0].entity_version == "2"


def test_update_config_accepts_a_config_model(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    client.update_config("det", EndpointCoreConfig.parse(CONFIG))
    assert fake.last_json()["served_entities"][0]["entity_name"] == "yolo"


def test_delete_endpoint(client: PlatformClient, fake: FakePlatform, created: EndpointInfo) -> None:
    client.delete_endpoint("det")
    assert (fake.last.method, fake.last.url.path) == ("DELETE", f"{API}/det")
    assert fake.endpoints == {}


def test_rollback_to_a_revision(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    assert client.rollback("det", to_revision=3).name == "det"
    assert (fake.last.method, fake.last.url.path) == ("POST", f"{API}/det/rollback")
    assert fake.last_json() == {"to_revision": 3}


def test_rollback_to_previous_sends_an_empty_object(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    client.rollback("det")
    assert fake.last_json() == {}


def test_revisions(client: PlatformClient, fake: FakePlatform, created: EndpointInfo) -> None:
    assert client.revisions("det") == [{"revision": 1}, {"revision": 2}]
    assert (fake.last.method, fake.last.url.path) == ("GET", f"{API}/det/revisions")


def test_stats_pass_through(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    assert client.stats("det") == {"requests": 3, "replicas": {"yolo-1": 1}}
    assert fake.last.url.path == f"{API}/det/stats"


def test_metrics_are_prometheus_text(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    assert client.metrics("det").startswith("# TYPE cvdeploy_requests_total")
    assert fake.last.url.path == f"{API}/det/metrics"


def test_logs_of_a_served_model(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    assert client.logs("det", "yolo-1") == "replica started\n"
    assert fake.last.url.path == f"{API}/det/served-models/yolo-1/logs"


def test_query_posts_the_payload(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    image = base64.b64encode(b"abc").decode()
    answer = client.query("det", {"instances": [image]})
    assert (fake.last.method, fake.last.url.path) == ("POST", "/serving-endpoints/det/invocations")
    assert fake.last_json() == {"instances": [image]}
    assert answer == {"predictions": [{"size": 3, "params": {}}]}


def test_predict_images_sends_a_body_the_server_accepts(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    answer = client.predict_images("det", [b"one", b"three"], params={"conf": 0.5})
    body = fake.last_json()
    assert fake.last.url.path == "/serving-endpoints/det/invocations"
    assert body == {
        "inputs": [base64.b64encode(b"one").decode(), base64.b64encode(b"three").decode()],
        "params": {"conf": 0.5},
    }
    # The server's own parser reads the images back byte for byte.
    assert extract_images(body) == ([b"one", b"three"], {"conf": 0.5})
    assert [p["size"] for p in answer["predictions"]] == [3, 5]


def test_predict_images_without_params_sends_no_params(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    client.predict_images("det", [b"x"])
    assert "params" not in fake.last_json()


def test_predict_images_needs_an_image(client: PlatformClient) -> None:
    with pytest.raises(InputError, match="at least one image"):
        client.predict_images("det", [])


def test_health(client: PlatformClient, fake: FakePlatform) -> None:
    assert client.health() == {"status": "ok", "endpoints": 0}
    assert (fake.last.method, fake.last.url.path) == ("GET", "/health")


def test_plain_text_health_counts_as_up() -> None:
    with answering(httpx.Response(200, text="\n")) as client:
        assert client.health() == {"status": "ok"}


def test_health_raises_when_unhealthy() -> None:
    with (
        answering(error(503, "TEMPORARILY_UNAVAILABLE", "starting")) as client,
        pytest.raises(OverloadedError, match="starting"),
    ):
        client.health()


def test_endpoint_names_are_quoted_in_paths(client: PlatformClient, fake: FakePlatform) -> None:
    with pytest.raises(EndpointNotFoundError):
        client.get_endpoint("a/b")
    assert fake.last.url.raw_path == f"{API}/a%2Fb".encode()


# Auth


def test_token_is_sent_as_bearer(fake: FakePlatform) -> None:
    fake.token = "cvd_secret"
    with PlatformClient(URL, "cvd_secret", transport=httpx.MockTransport(fake)) as client:
        assert client.list_endpoints() == []
    assert fake.last.headers["authorization"] == "Bearer cvd_secret"


def test_no_token_sends_no_authorization(client: PlatformClient, fake: FakePlatform) -> None:
    client.list_endpoints()
    assert "authorization" not in fake.last.headers


def test_missing_token_is_unauthenticated(client: PlatformClient, fake: FakePlatform) -> None:
    fake.token = "cvd_secret"
    with pytest.raises(UnauthenticatedError, match="missing or unknown token"):
        client.list_endpoints()


# Error mapping


def test_unknown_endpoint_is_endpoint_not_found(client: PlatformClient) -> None:
    with pytest.raises(EndpointNotFoundError, match="no endpoint named 'nope'") as info:
        client.get_endpoint("nope")
    assert info.value.status_code == 404


def test_unknown_endpoint_on_invocations_is_endpoint_not_found(client: PlatformClient) -> None:
    with pytest.raises(EndpointNotFoundError):
        client.predict_images("nope", [b"x"])


def test_duplicate_name_is_already_exists(client: PlatformClient, created: EndpointInfo) -> None:
    with pytest.raises(EndpointAlreadyExistsError, match="'det' exists"):
        client.create_endpoint({"name": "det", "config": CONFIG})


def test_invalid_spec_is_config_error_with_the_servers_message(client: PlatformClient) -> None:
    bad = {"name": "det", "config": {**CONFIG, "max_replica": 2}}
    with pytest.raises(ConfigError, match="max_replica"):
        client.create_endpoint(bad)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "INVALID_PARAMETER_VALUE", ConfigError),
        (400, "INVALID_IMAGE", InvalidImageError),
        (401, "UNAUTHENTICATED", UnauthenticatedError),
        (403, "PERMISSION_DENIED", PermissionDeniedError),
        (409, "RESOURCE_CONFLICT", ConflictError),
        (409, "RESOURCE_ALREADY_EXISTS", EndpointAlreadyExistsError),
        (500, "MODEL_LOAD_FAILED", ModelLoadError),
        (500, "INTERNAL_ERROR", CVDeployError),
        (501, "NOT_IMPLEMENTED", NotAvailableError),
        (503, "TEMPORARILY_UNAVAILABLE", OverloadedError),
        (504, "DEADLINE_EXCEEDED", DeadlineExceededError),
        # Codes cvdeploy does not define fall back to the status.
        (400, "SOMETHING_NEW", ConfigError),
        (404, "SOMETHING_NEW", ModelNotFoundError),
        (409, "SOMETHING_NEW", ConflictError),
        (418, "SOMETHING_NEW", CVDeployError),
        (429, "REQUEST_LIMIT_EXCEEDED", RateLimitedError),
        (429, "SOMETHING_NEW", RateLimitedError),
    ],
)
def test_error_code_maps_to_its_class(status: int, code: str, expected: type[Exception]) -> None:
    with (
        answering(error(status, code, "the server's words")) as client,
        pytest.raises(CVDeployError, match="the server's words") as info,
    ):
        client.stats("det")
    assert type(info.value) is expected


def test_not_found_outside_endpoints_is_model_not_found() -> None:
    with (
        answering(error(404, "RESOURCE_DOES_NOT_EXIST", "no model 'yolo'")) as client,
        pytest.raises(ModelNotFoundError) as info,
    ):
        client.create_endpoint({"name": "det", "config": CONFIG})
    assert type(info.value) is ModelNotFoundError


def test_rate_limit_carries_retry_after() -> None:
    response = error(429, "REQUEST_LIMIT_EXCEEDED", "slow down", **{"Retry-After": "2.5"})
    with answering(response) as client, pytest.raises(RateLimitedError) as info:
        client.query("det", {"inputs": ["eA=="]})
    assert info.value.retry_after == 2.5


def test_mlflow_style_error_field_is_the_message() -> None:
    response = httpx.Response(400, json={"error_code": "INVALID_IMAGE", "error": "not a JPEG"})
    with answering(response) as client, pytest.raises(InvalidImageError, match="not a JPEG"):
        client.predict_images("det", [b"x"])


def test_non_json_error_names_the_status_and_body() -> None:
    with (
        answering(httpx.Response(502, text="<html>Bad Gateway</html>")) as client,
        pytest.raises(CVDeployError, match="502: <html>Bad Gateway") as info,
    ):
        client.list_endpoints()
    assert type(info.value) is CVDeployError


def test_non_json_success_is_an_error() -> None:
    with (
        answering(httpx.Response(200, text="hello")) as client,
        pytest.raises(CVDeployError, match="is that URL a cvdeploy platform"),
    ):
        client.list_endpoints()


def test_unreadable_endpoint_is_an_error() -> None:
    with (
        answering(httpx.Response(200, json={"name": "det"})) as client,
        pytest.raises(CVDeployError, match="cannot read"),
    ):
        client.get_endpoint("det")


def test_connection_refused_says_to_start_a_platform() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with (
        PlatformClient(URL, transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(NotAvailableError) as info,
    ):
        client.list_endpoints()
    assert info.value.message == (
        f"no cvdeploy platform answers at {URL}; start one with `cvdeploy up`"
    )


def test_connection_refused_on_a_real_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    # A port just bound and released has no listener: a real refused connection.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (
        PlatformClient(url + "/", timeout=5) as client,
        pytest.raises(NotAvailableError, match=re.escape(f"at {url};")),
    ):
        client.health()


def test_read_timeout_is_deadline_exceeded() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        PlatformClient(URL, timeout=1.5, transport=httpx.MockTransport(stall)) as client,
        pytest.raises(DeadlineExceededError, match=r"within 1\.5 s"),
    ):
        client.get_endpoint("det")


# wait_not_updating


def test_wait_polls_until_not_updating_and_ready(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    fake.states["det"] = [
        {"ready": "NOT_READY", "config_update": "IN_PROGRESS"},
        {"ready": "NOT_READY", "config_update": "IN_PROGRESS"},
        # Update over but replicas not yet serving: keep waiting.
        {"ready": "NOT_READY", "config_update": "NOT_UPDATING"},
        {"ready": "READY", "config_update": "NOT_UPDATING"},
    ]
    seen: list[str] = []
    info = client.wait_not_updating(
        "det", timeout=10, poll_s=0.001, on_poll=lambda i: seen.append(i.state.config_update)
    )
    assert info.state.ready == "READY"
    assert seen == ["IN_PROGRESS", "IN_PROGRESS", "NOT_UPDATING", "NOT_UPDATING"]
    assert all(r.url.path == f"{API}/det" for r in fake.requests[1:])


def test_wait_raises_model_load_error_with_the_servers_message(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    fake.states["det"] = [
        {"ready": "READY", "config_update": "IN_PROGRESS"},
        {"ready": "READY", "config_update": "UPDATE_FAILED", "message": "yolo-2: bad ONNX"},
    ]
    with pytest.raises(ModelLoadError) as info:
        client.wait_not_updating("det", timeout=10, poll_s=0.001)
    assert "yolo-2: bad ONNX" in info.value.message
    assert "cvdeploy endpoints logs" in info.value.message


def test_wait_failure_without_a_message_still_points_at_logs(
    client: PlatformClient, fake: FakePlatform, created: EndpointInfo
) -> None:
    fake.states["det"] = [{"ready": "NOT_READY", "config_update": "UPDATE_FAILED"}]
    with pytest.raises(ModelLoadError, match=r"update failed; .*`cvdeploy endpoints logs`"):
        client.wait_not_updating("det", timeout=10, poll_s=0.001)


def test_wait_times_out(client: PlatformClient, fake: FakePlatform, created: EndpointInfo) -> None:
    fake.states["det"] = [{"ready": "NOT_READY", "config_update": "IN_PROGRESS"}]
    with pytest.raises(DeadlineExceededError, match=r"'det' is not ready after 0\.02 s") as info:
        client.wait_not_updating("det", timeout=0.02, poll_s=0.001)
    assert "IN_PROGRESS" in info.value.message
    assert len(fake.requests) > 2


def test_wait_on_unknown_endpoint_is_not_found(client: PlatformClient) -> None:
    with pytest.raises(EndpointNotFoundError):
        client.wait_not_updating("nope", timeout=1, poll_s=0.001)
