"""The ``cvdeploy`` command line (Typer + Rich)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cvdeploy import __version__
from cvdeploy.cli.admin import audit, backup, restore
from cvdeploy.cli.build import build
from cvdeploy.cli.endpoints import endpoints_app
from cvdeploy.cli.logs import logs
from cvdeploy.cli.models import models_app
from cvdeploy.cli.monitor import alerts, monitor
from cvdeploy.cli.output import console, err_console, fail
from cvdeploy.cli.pipeline import pipeline_app
from cvdeploy.cli.platform import down, up
from cvdeploy.cli.tokens import tokens_app
from cvdeploy.errors import CVDeployError

app = typer.Typer(
    name="cvdeploy",
    help="Serve computer-vision models: from an ONNX file to a fast, monitored HTTP endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.add_typer(tokens_app, name="tokens")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(pipeline_app, name="pipeline")


@app.command()
def version() -> None:
    """Print the cvdeploy version."""
    console.print(f"cvdeploy {__version__}")


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="ONNX model file to serve.")],
    task: Annotated[
        str | None, typer.Option(help="yolo/detection or classification; default: metadata.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name on the routes (file stem).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8000].")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes [1].")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Config YAML (default: discovered, see docs).")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Dynamic batch size.")] = None,
    max_queue_delay_ms: Annotated[float | None, typer.Option(help="Batch wait under load.")] = None,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="One image per call.")] = False,
    ort_spinning: Annotated[
        bool | None,
        typer.Option(
            "--ort-spinning/--no-ort-spinning",
            help="ONNX Runtime threads spin between operators (config model.intra_op_spinning).",
        ),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Request timeout, seconds [60].")] = None,
    cache_size: Annotated[int | None, typer.Option(help="Result cache entries (0 = off).")] = None,
    token: Annotated[str | None, typer.Option(help="Require ?token= on predict routes.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve MODEL over HTTP: image upload, KServe v2 / Triton, MLflow invocations, /metrics."""
    from cvdeploy.cli.settings import settings_for_serve
    from cvdeploy.serving.runner import serve_forever

    try:
        settings, bind_host, bind_port = settings_for_serve(
            model,
            task=task,
            name=name,
            host=host,
            port=port,
            workers=workers,
            config_path=config,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            batching_enabled=False if no_batching else None,
            timeout=timeout,
            cache_size=cache_size,
            token=token,
            intra_op_spinning=ort_spinning,
        )
    except CVDeployError as exc:
        raise fail(exc) from None
    shown = "127.0.0.1" if bind_host in ("0.0.0.0", "::") else bind_host
    err_console.print(
        f"serving [bold]{settings.model_name}[/] at http://{shown}:{bind_port} "
        f"({settings.workers} worker(s)); API docs at /docs"
    )
    try:
        serve_forever(settings, bind_host, bind_port, log_level)
    except CVDeployError as exc:
        raise fail(exc) from None


@app.command("serve-settings", hidden=True)
def serve_settings(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve from $CVDEPLOY_SERVE_SETTINGS (used by ModelServer to start worker processes)."""
    from cvdeploy.serving.runner import serve_forever
    from cvdeploy.serving.settings import ServeSettings

    serve_forever(ServeSettings.from_env(), host, port, log_level)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    task: Annotated[str | None, typer.Option(help="yolo/detection or classification.")] = None,
    conf: Annotated[float | None, typer.Option(help="Confidence threshold.")] = None,
    iou: Annotated[float | None, typer.Option(help="NMS IoU threshold.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Classes to show.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Predict on IMAGES with MODEL in this process and print the results."""
    from cvdeploy.serving.model_server import ModelServer

    params: dict[str, Any] = {
        k: v for k, v in {"conf": conf, "iou": iou, "top_k": top_k}.items() if v is not None
    }
    try:
        server = ModelServer(task, model)
        results = [server.predict(path, **params) for path in images]
    except CVDeployError as exc:
        raise fail(exc) from None
    if as_json:
        payload = [
            {"image": str(path), **result.to_dict()}  # type: ignore[union-attr]
            for path, result in zip(images, results, strict=True)
        ]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    from cvdeploy.cli.render import print_result

    for path, result in zip(images, results, strict=True):
        print_result(console, str(path), result.to_dict())  # type: ignore[union-attr]


@app.command()
def demo(
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Keep serving after the demo requests.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the detector; the classifier is +1.")] = 8000,
) -> None:
    """Serve the bundled demo models, send them sample images and print what comes back."""
    from cvdeploy.cli.demo import run_demo

    try:
        run_demo(console, port=port, keep_serving=serve_after)
    except CVDeployError as exc:
        raise fail(exc) from None


# The local platform (cvdeploy/cli/platform.py).
# Containers and Kubernetes manifests (cvdeploy/cli/build.py).
app.command()(build)
app.command()(up)
app.command()(down)

# Watching servers and endpoints (cvdeploy/cli/monitor.py).
app.command()(monitor)
app.command()(alerts)

# Sampled request records, the payload log (cvdeploy/cli/logs.py).
app.command()(logs)

# Operating the platform state (cvdeploy/cli/admin.py); listed after the serving commands.
app.command()(audit)
app.command()(backup)
app.command()(restore)
