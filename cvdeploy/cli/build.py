"""``cvdeploy build``: a Dockerfile and Kubernetes manifests for a model or an endpoint.

Nothing is built or applied: the output is files to review, ``docker build`` and
``kubectl apply`` (see docs/kubernetes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cvdeploy.cli.output import console, err_console, fail
from cvdeploy.errors import ConfigError, CVDeployError

if TYPE_CHECKING:
    from cvdeploy.config import Config
    from cvdeploy.platforms.client import PlatformClient
    from cvdeploy.platforms.kubernetes import BuildResult

__all__ = ["build"]


def _connect(url: str | None, token: str | None) -> PlatformClient:
    """The platform client for ``--endpoint`` (the one seam tests replace)."""
    from cvdeploy.platforms.client import PlatformClient
    from cvdeploy.platforms.local.daemon import platform_url

    return PlatformClient(platform_url(url), token)


def _build_endpoint(
    endpoint: str,
    config: Config,
    *,
    url: str | None,
    token: str | None,
    out: Path,
    image: str | None,
    bake: bool,
    namespace: str,
    wheel: Path | None,
) -> BuildResult:
    from cvdeploy.platforms.kubernetes import plan_for_endpoint, write_endpoint_build

    with _connect(url, token) as client:
        info = client.get_endpoint(endpoint)
    core = info.config or info.pending_config
    if core is None:
        raise ConfigError(f"endpoint {endpoint} has no config yet; wait for it and build again")
    built = plan_for_endpoint(
        endpoint, core, config, image=image, namespace=namespace, bake=bake, wheel=wheel
    )
    return write_endpoint_build(built, out)


def build(
    model: Annotated[
        str | None,
        typer.Argument(help="ONNX file, or registry:NAME/VERSION (the registry's verified file)."),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Build a platform endpoint: one image and Deployment per entity."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config YAML (default: discovered, see docs).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder to write the build context to.")] = Path(
        "build"
    ),
    image: Annotated[
        str | None,
        typer.Option(
            help="Image NAME:TAG (default: cvdeploy-<name>:<version>); with --endpoint a "
            "repository, tagged per served entity."
        ),
    ] = None,
    bake: Annotated[
        bool,
        typer.Option(
            "--bake/--mount", help="Copy the model into the image, or mount it at /models/<name>."
        ),
    ] = True,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    name: Annotated[
        str | None, typer.Option(help="Kubernetes object name (default: the model name).")
    ] = None,
    canary_percent: Annotated[
        int | None,
        typer.Option(help="KServe canaryTrafficPercent for this version (1-99)."),
    ] = None,
    wheel: Annotated[
        Path | None,
        typer.Option(help="cvdeploy wheel to install in the image (default: cvdeploy==<version>)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Platform URL for --endpoint (default: $CVDEPLOY_URL or a running platform)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="CVDEPLOY_TOKEN", help="Platform API token for --endpoint."),
    ] = None,
) -> None:
    """Write a Dockerfile, pinned requirements and Kubernetes/KServe manifests."""
    from cvdeploy.config import Config
    from cvdeploy.platforms.kubernetes import plan_for_model, write_build

    try:
        if (model is None) == (endpoint is None):
            raise ConfigError(
                "give MODEL (an ONNX file or registry:NAME/VERSION) or --endpoint NAME, not both"
            )
        loaded = Config(config)
        if endpoint is not None:
            if name is not None or canary_percent is not None:
                raise ConfigError(
                    "--name and --canary-percent apply to one model; with --endpoint the names "
                    "and the canary come from the endpoint's served entities and routes"
                )
            result = _build_endpoint(
                endpoint,
                loaded,
                url=url,
                token=token,
                out=out,
                image=image,
                bake=bake,
                namespace=namespace,
                wheel=wheel,
            )
        else:
            plan = plan_for_model(
                str(model),
                loaded,
                image=image,
                namespace=namespace,
                bake=bake,
                name=name,
                canary_percent=canary_percent,
                wheel=wheel,
            )
            result = write_build(plan, out)
    except CVDeployError as exc:
        raise fail(exc) from None
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"wrote {len(result.files)} files to [bold]{escape(str(out))}[/]:")
    for relative in result.files:
        console.print(f"  {escape(relative)}")
    console.print("\nnext:")
    for folder, reference in result.images.items():
        console.print(f"  docker build -t {escape(reference)} {escape(str(out / folder))}")
    console.print(
        f"  kubectl apply -f {escape(str(out / 'k8s'))}   "
        f"(or the files in {escape(str(out / 'kserve'))} on a KServe cluster)"
    )
