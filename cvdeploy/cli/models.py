"""``cvdeploy models ...``: the model registry from the command line."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cvdeploy.cli.output import JsonOption, console, fail, print_json
from cvdeploy.errors import ConfigError, CVDeployError

if TYPE_CHECKING:
    from cvdeploy.registry import ModelVersion, Registry

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Register, list, inspect, alias and delete model versions (MLflow Model Registry).",
    no_args_is_help=True,
)

UriOption = Annotated[
    str | None,
    typer.Option(
        "--registry-uri",
        envvar="CVDEPLOY_REGISTRY_URI",
        help="MLflow registry URI [SQLite file in $CVDEPLOY_HOME].",
    ),
]


def _registry(uri: str | None) -> Registry:
    from cvdeploy.registry import Registry

    return Registry(uri)


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _versions_table(name: str, versions: list[ModelVersion]) -> Table:
    table = Table(title=f"{escape(name)}: {len(versions)} version(s)", title_justify="left")
    for column in ("version", "aliases", "task", "sha256", "source commit", "created (UTC)"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            escape(", ".join(v.aliases)),
            escape(v.task or "-"),
            (v.sha256 or "-")[:12],
            escape(v.tags.get("source_commit", "-")[:12]),
            _when(v.created_ms),
        )
    return table


@models_app.command("register")
def register(
    path: Annotated[Path, typer.Argument(help="ONNX model file.")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "cv_model",
    model_type: Annotated[
        str | None,
        typer.Option("--type", help="yolo/detection or classification; default: metadata."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Class names file (.txt, .json or .yaml).")
    ] = None,
    reference_images: Annotated[
        Path | None, typer.Option(help="Folder of sample images stored with the version.")
    ] = None,
    source_commit: Annotated[
        str | None, typer.Option(help="Commit or training-script hash it was built from.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Version description.")] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(help="Labelled images the pipeline evaluates this version on."),
    ] = None,
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate PATH and register it as a new version of --name."""
    try:
        version = _registry(uri).register(
            path,
            name,
            task=model_type,
            labels=labels,
            reference_images=reference_images,
            source_commit=source_commit,
            description=description,
            eval_data=eval_data,
        )
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(version.to_dict())
        return
    console.print(
        f"registered [bold]{escape(name)}[/] version {version.version} "
        f"({escape(version.task or '?')}, sha256 {(version.sha256 or '')[:12]})"
    )


@models_app.command("list")
def list_models(uri: UriOption = None, as_json: JsonOption = False) -> None:
    """List registered models."""
    try:
        models = _registry(uri).list_models()
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json([m.to_dict() for m in models])
        return
    table = Table(title=f"{len(models)} registered model(s)", title_justify="left")
    for column in ("name", "latest", "aliases", "updated (UTC)"):
        table.add_column(column)
    for m in models:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(m.aliases.items()))
        table.add_row(escape(m.name), m.latest_version or "-", escape(aliases), _when(m.updated_ms))
    console.print(table)


@models_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[
        str | None, typer.Option(help="A version number or alias; default: all versions.")
    ] = None,
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the versions of NAME, or one version with its model card."""
    try:
        registry = _registry(uri)
        if version is None:
            versions = registry.versions(name)
            if as_json:
                print_json([v.to_dict() for v in versions])
            else:
                console.print(_versions_table(name, versions))
            return
        found = registry.get_version(name, version)
        card = registry.card(name, found.version)
        recorded = registry.metrics(name, found.version)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json({**found.to_dict(), "card": json.loads(card.to_json()), "metrics": recorded})
        return
    console.print(_versions_table(name, [found]))
    console.print(
        f"labels: {escape(', '.join(card.labels[:20]))}"
        f"{' ...' if len(card.labels) > 20 else ''}\n"
        f"input size: {card.input_size[0]}x{card.input_size[1]}; "
        f"reference images: {len(card.reference_images)}\nsource: {escape(found.source)}"
    )
    if recorded:
        shown = ", ".join(f"{k}={v:g}" for k, v in recorded.items())
        console.print(f"metrics: {escape(shown)}")


@models_app.command("alias")
def alias(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. champion, candidate.")],
    version: Annotated[str, typer.Argument(help="Version number.")],
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point ALIAS of NAME at VERSION."""
    try:
        found = _registry(uri).set_alias(name, alias_name, version)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(found.to_dict())
        return
    console.print(f"{escape(name)}@{escape(alias_name)} -> version {found.version}")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


@models_app.command("metrics")
def metrics(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    values: Annotated[
        list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="Metrics to record.")
    ] = None,
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record metrics (e.g. accuracy=0.97) on a version, or show them."""
    try:
        registry = _registry(uri)
        if values:
            given: dict[str, float] = {}
            for key, text in _pairs(values, "metric").items():
                try:
                    given[key] = float(text)
                except ValueError:
                    raise ConfigError(f"metric {key}={text!r} is not a number") from None
            found = registry.log_metrics(name, version, given)
        else:
            found = registry.metrics(name, version)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(found)
        return
    table = Table(title=f"{escape(name)} {escape(version)}: metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in found.items():
        table.add_row(escape(key), f"{value:g}")
    console.print(table)


@models_app.command("tag")
def tag(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")],
    values: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="Tags to set.")],
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set tags (e.g. dataset=v3) on a version."""
    try:
        registry = _registry(uri)
        for key, value in _pairs(values, "tag").items():
            registry.set_tag(name, version, key, value)
        found = registry.get_version(name, version)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json(found.tags)
        return
    for key, value in sorted(found.tags.items()):
        console.print(f"{escape(key)} = {escape(value)}")


@models_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[
        str | None, typer.Option(help="Delete only this version; default: the whole model.")
    ] = None,
    uri: UriOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a version of NAME, or NAME with all its versions."""
    try:
        registry = _registry(uri)
        if version is None:
            registry.delete_model(name)
        else:
            registry.delete_version(name, version)
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        print_json({"name": name, "version": version, "deleted": True})
        return
    console.print(f"deleted {escape(name)}" + (f" version {escape(version)}" if version else ""))
