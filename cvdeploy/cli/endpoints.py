"""``cvdeploy endpoints ...``: create, update, roll back, query and delete endpoints.

The commands talk to a platform over HTTP with :class:`~cvdeploy.platforms.client.PlatformClient`,
so they work the same against any cvdeploy platform given by ``--url`` (``cvdeploy up`` starts a
local one; see :mod:`cvdeploy.cli.platform`). ``--ca-file`` trusts a platform served over TLS with
a certificate of its own (``cvdeploy up --ssl-certfile/--ssl-keyfile``).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.output import JsonOption, console, err_console, fail, print_json, when
from cvdeploy.errors import ConfigError, CVDeployError

if TYPE_CHECKING:
    from cvdeploy.platforms.base import EndpointCoreConfig, EndpointInfo
    from cvdeploy.platforms.client import PlatformClient

__all__ = ["endpoints_app"]


endpoints_app = typer.Typer(
    help="Create, update, roll back, query and delete endpoints on a cvdeploy platform.",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Platform URL [$CVDEPLOY_URL, a running `cvdeploy up`, http://127.0.0.1:8080].",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="CVDEPLOY_TOKEN", help="API token, if the platform has any."),
]
WaitOption = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait until the endpoint is ready.")
]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait with --wait.")]
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar="CVDEPLOY_CA_FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        help="CA bundle (PEM) to trust for an https platform, e.g. its self-signed certificate.",
    ),
]
NameArgument = Annotated[str, typer.Argument(help="Endpoint name.")]


_T = TypeVar("_T")


def _connect(url: str | None, token: str | None, ca_file: Path | None = None) -> PlatformClient:
    """The client for ``--url``, ``--token`` and ``--ca-file`` (the one seam tests replace)."""
    from cvdeploy.platforms.client import PlatformClient
    from cvdeploy.platforms.local.daemon import platform_url

    verify: bool | str = True if ca_file is None else str(ca_file)
    return PlatformClient(platform_url(url), token, verify=verify)


def _call(
    url: str | None, token: str | None, ca_file: Path | None, action: Callable[[Any], _T]
) -> _T:
    """``action(client)`` on a fresh client; a cvdeploy error ends the command with its text."""
    try:
        with _connect(url, token, ca_file) as client:
            return action(client)
    except CVDeployError as exc:
        raise fail(exc) from None


def _print_text(text: str) -> None:
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")


# -- endpoints ---------------------------------------------------------------------------------


@endpoints_app.command("create")
def create(
    name: NameArgument,
    model: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    version: Annotated[str | None, typer.Option(help="Model version.")] = None,
    min_replicas: Annotated[int, typer.Option(help="Replicas kept while busy.")] = 1,
    max_replicas: Annotated[int | None, typer.Option(help="Most replicas [min-replicas].")] = None,
    scale_to_zero: Annotated[
        bool, typer.Option("--scale-to-zero/--no-scale-to-zero", help="Drop to 0 when idle.")
    ] = False,
    workload_size: Annotated[str, typer.Option(help="Small, Medium or Large.")] = "Small",
    spec_file: Annotated[
        Path | None,
        typer.Option("--file", help="Whole spec (JSON/YAML); replaces the options above."),
    ] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 300,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create endpoint NAME serving --model at --version (or the spec in --file)."""
    from cvdeploy.platforms.base import EndpointSpec

    try:
        if spec_file is not None:
            if model is not None or version is not None:
                raise ConfigError("--file gives the whole spec; leave out --model and --version")
            body = _load(spec_file)
            if isinstance(body, dict) and "served_entities" in body:
                body = {"config": body}  # a bare config is accepted too
            if not isinstance(body, dict):
                raise ConfigError(f"{spec_file} must hold a mapping (an endpoint spec)")
            spec = EndpointSpec.parse({**body, "name": name})
        else:
            if model is None or version is None:
                raise ConfigError("give --model and --version, or the whole spec with --file")
            entity: dict[str, Any] = {
                "entity_name": model,
                "entity_version": version,
                "workload_size": workload_size,
                "scale_to_zero_enabled": scale_to_zero,
                "min_replicas": min_replicas,
            }
            if max_replicas is not None:
                entity["max_replicas"] = max_replicas
            spec = EndpointSpec.parse({"name": name, "config": {"served_entities": [entity]}})
        with _connect(url, token, ca_file) as client:
            info = client.create_endpoint(spec)
            if wait:
                info = _wait(client, name, timeout)
    except CVDeployError as exc:
        raise fail(exc) from None
    _report(info, "created", wait, as_json)


@endpoints_app.command("list")
def list_endpoints(
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """List endpoints with their state, served versions and traffic split."""
    infos = _call(url, token, ca_file, lambda client: client.list_endpoints())
    if as_json:
        print_json([i.model_dump(mode="json") for i in infos])
        return
    table = Table(title=f"{len(infos)} endpoint(s)", title_justify="left")
    for column in ("NAME", "STATE", "CONFIG UPDATE", "SERVED", "TRAFFIC", "UPDATED (UTC)"):
        table.add_column(column)
    for i in infos:
        table.add_row(
            escape(i.name),
            i.state.ready,
            i.state.config_update,
            escape(_served(i.config)),
            escape(_traffic(i.config)),
            when(i.last_updated_timestamp / 1000),
        )
    console.print(table)


@endpoints_app.command("get")
def get(
    name: NameArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show endpoint NAME: state, served entities, routes and any pending config."""
    info = _call(url, token, ca_file, lambda client: client.get_endpoint(name))
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    _print_details(info)


@endpoints_app.command("update")
def update(
    name: NameArgument,
    model: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    version: Annotated[str | None, typer.Option(help="Model version to serve.")] = None,
    traffic: Annotated[
        int, typer.Option(help="Percent for this version; the rest stays on the primary.")
    ] = 100,
    config_file: Annotated[
        Path | None,
        typer.Option("--file", help="Whole new config (JSON/YAML) instead of --model/--version."),
    ] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 300,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve --model --version on NAME with --traffic percent (a canary below 100)."""
    from cvdeploy.platforms.base import EndpointCoreConfig
    from cvdeploy.platforms.traffic import next_config

    try:
        with _connect(url, token, ca_file) as client:
            if config_file is not None:
                if model is not None or version is not None:
                    raise ConfigError("--file gives the whole config; leave out --model/--version")
                body = _load(config_file)
                if isinstance(body, dict) and "config" in body:
                    body = body["config"]  # a whole endpoint spec is accepted too
                config = EndpointCoreConfig.parse(body)
            else:
                if model is None or version is None:
                    raise ConfigError("give --model and --version, or the whole config with --file")
                current = client.get_endpoint(name).config
                if current is None:
                    raise ConfigError(
                        f"endpoint '{name}' has no serving config yet; wait for it with "
                        f"`cvdeploy endpoints get {name}`, or give the whole config with --file"
                    )
                config = next_config(current, model, version, traffic)
            info = client.update_config(name, config)
            if wait:
                info = _wait(client, name, timeout)
    except CVDeployError as exc:
        raise fail(exc) from None
    _report(info, "updated", wait, as_json)


@endpoints_app.command("rollback")
def rollback(
    name: NameArgument,
    to_revision: Annotated[
        int | None, typer.Option(help="Revision to return to [the one before the current].")
    ] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 300,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Switch NAME back to an earlier revision of its config (see `revisions`)."""
    try:
        with _connect(url, token, ca_file) as client:
            info = client.rollback(name, to_revision)
            if wait:
                info = _wait(client, name, timeout)
    except CVDeployError as exc:
        raise fail(exc) from None
    _report(info, "rolled back", wait, as_json)


@endpoints_app.command("delete")
def delete(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete endpoint NAME: its replicas stop at once (audit entries remain)."""
    if not yes:
        typer.confirm(f"Delete endpoint {name}? Its replicas stop at once", abort=True)
    try:
        with _connect(url, token, ca_file) as client:
            client.delete_endpoint(name)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json({"name": name, "deleted": True})
        return
    console.print(f"deleted endpoint {escape(name)}")


@endpoints_app.command("revisions")
def revisions(
    name: NameArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the config revisions of NAME, newest last."""
    from cvdeploy.platforms.base import EndpointCoreConfig

    items = _call(url, token, ca_file, lambda client: client.revisions(name))
    if as_json:
        print_json(items)
        return
    table = Table(title=f"{escape(name)}: {len(items)} revision(s)", title_justify="left")
    for column in ("#", "STATUS", "AUTHOR", "CREATED (UTC)", "ROLLBACK OF", "SERVED", "TRAFFIC"):
        table.add_column(column)
    for item in items:
        try:
            config: EndpointCoreConfig | None = EndpointCoreConfig.parse(item.get("config"))
        except ConfigError:
            config = None
        rollback_of = item.get("rollback_of")
        table.add_row(
            str(item.get("number", "?")),
            escape(str(item.get("status", "-"))),
            escape(str(item.get("author", "-"))),
            when(_seconds(item.get("created_at"))),
            "-" if rollback_of is None else str(rollback_of),
            escape(_served(config)),
            escape(_traffic(config)),
        )
    console.print(table)


@endpoints_app.command("logs")
def logs(
    name: NameArgument,
    served_entity: Annotated[str, typer.Argument(help="Served entity name (see `get`).")],
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Print the recent log of SERVED_ENTITY's replicas on endpoint NAME."""
    text = _call(url, token, ca_file, lambda client: client.logs(name, served_entity))
    _print_text(text)


@endpoints_app.command("metrics")
def metrics(
    name: NameArgument,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Print the metrics of endpoint NAME in Prometheus text format."""
    text = _call(url, token, ca_file, lambda client: client.metrics(name))
    _print_text(text)


@endpoints_app.command("query")
def query(
    name: NameArgument,
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files.", exists=True, dir_okay=False, readable=True),
    ],
    conf: Annotated[float | None, typer.Option(help="Confidence threshold.")] = None,
    iou: Annotated[float | None, typer.Option(help="NMS IoU threshold.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Classes to return.")] = None,
    details: Annotated[
        bool, typer.Option("--details", help="A table per image with every box or class.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send IMAGES to endpoint NAME and print the predictions."""
    params = {k: v for k, v in {"conf": conf, "iou": iou, "top_k": top_k}.items() if v is not None}
    try:
        data = [path.read_bytes() for path in images]
        with _connect(url, token, ca_file) as client:
            response = client.predict_images(name, data, params or None)
    except OSError as exc:
        raise fail(ConfigError(f"cannot read an image: {exc}")) from None
    except CVDeployError as exc:
        raise fail(exc) from None
    predictions = response.get("predictions")
    if as_json or not isinstance(predictions, list):
        print_json(response)
        return
    if details:
        from cvdeploy.cli.render import print_result

        for path, prediction in zip(images, predictions, strict=False):
            print_result(console, str(path), prediction)
        return
    table = Table(title=f"{escape(name)}: {len(predictions)} prediction(s)", title_justify="left")
    for column in ("image", "label", "score"):
        table.add_column(column)
    for path, prediction in zip(images, predictions, strict=False):
        label, score = _summary(prediction)
        table.add_row(escape(str(path)), escape(label), score)
    console.print(table)


# -- helpers -----------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    """The JSON or YAML document in ``path``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _wait(client: PlatformClient, name: str, timeout: float) -> EndpointInfo:
    with err_console.status(f"waiting for endpoint {name} to be ready") as status:

        def progress(info: EndpointInfo) -> None:
            state = info.state
            status.update(
                f"waiting for endpoint {escape(name)}: {state.ready}, {state.config_update}"
            )

        return client.wait_not_updating(name, timeout=timeout, on_poll=progress)


def _report(info: EndpointInfo, done: str, waited: bool, as_json: bool) -> None:
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    config = info.config if waited or info.pending_config is None else info.pending_config
    message = f"{done} endpoint [bold]{escape(info.name)}[/]: {escape(_traffic(config))}"
    if waited:
        console.print(f"{message}; {info.state.ready}")
    else:
        console.print(
            f"{message}; {info.state.config_update}, follow it with "
            f"`cvdeploy endpoints get {escape(info.name)}`"
        )


def _print_details(info: EndpointInfo) -> None:
    created, updated = (
        when(info.creation_timestamp / 1000),
        when(info.last_updated_timestamp / 1000),
    )
    console.print(
        f"[bold]{escape(info.name)}[/]: {info.state.ready}, config update "
        f"{info.state.config_update}\ncreator {escape(info.creator)}, created {created}, "
        f"updated {updated} (UTC)"
    )
    if info.config is not None:
        console.print(_config_table("serving config", info.config))
    if info.pending_config is not None:
        console.print(_config_table("pending config", info.pending_config))


def _config_table(title: str, config: EndpointCoreConfig) -> Table:
    share = {r.served_model_name: r.traffic_percentage for r in config.routes}
    table = Table(title=title, title_justify="left")
    for column in ("SERVED ENTITY", "MODEL", "VERSION", "REPLICAS", "WORKLOAD", "TRAFFIC"):
        table.add_column(column)
    for e in config.served_entities:
        low, high = e.replica_bounds
        table.add_row(
            escape(e.name),
            escape(e.entity_name),
            escape(e.entity_version),
            f"{low}-{high}" + (" (to zero)" if e.scale_to_zero_enabled else ""),
            f"{e.workload_size} {e.workload_type}",
            f"{share.get(e.name, 0)}%",
        )
    return table


def _served(config: EndpointCoreConfig | None) -> str:
    if config is None:
        return "-"
    return ", ".join(f"{e.entity_name}={e.entity_version}" for e in config.served_entities)


def _traffic(config: EndpointCoreConfig | None) -> str:
    if config is None:
        return "-"
    return ", ".join(f"{r.served_model_name}:{r.traffic_percentage}%" for r in config.routes)


def _seconds(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    # Databricks timestamps are milliseconds, cvdeploy's records seconds; accept both.
    return value / 1000 if value > 1e11 else float(value)


def _summary(prediction: Any) -> tuple[str, str]:
    """``(label, score)`` of one prediction: the top class, or the boxes and their labels."""
    if not isinstance(prediction, dict):
        return json.dumps(prediction)[:80], "-"
    if prediction.get("task") == "classification" or "classes" in prediction:
        classes = prediction.get("classes") or []
        if not classes:
            return "(no class)", "-"
        top = classes[0]
        return str(top.get("label", top.get("class_id", "?"))), f"{top.get('score', 0):.4f}"
    detections = prediction.get("detections")
    if isinstance(detections, list):
        if not detections:
            return "0 boxes", "-"
        counts = Counter(str(d.get("label", "?")) for d in detections)
        top = ", ".join(f"{label} x{n}" for label, n in counts.most_common(3))
        more = ", ..." if len(counts) > 3 else ""
        best = max(float(d.get("score", 0)) for d in detections)
        return f"{len(detections)} box(es): {top}{more}", f"{best:.3f}"
    return json.dumps(prediction)[:80], "-"
