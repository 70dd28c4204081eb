"""``cvdeploy demo``: serve the bundled models, call them as a client would, show the results."""

from __future__ import annotations

import base64
import socket
import time

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cvdeploy.cli.render import print_result
from cvdeploy.demo import CLASSIFIER, DETECTOR, demo_file, sample_images
from cvdeploy.serving.model_server import ModelServer

__all__ = ["run_demo"]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(console: Console, port: int = 8000, keep_serving: bool = False) -> None:
    detector_port = port if _port_free(port) else 0
    classifier_port = port + 1 if _port_free(port + 1) else 0
    console.print("[bold]cvdeploy demo[/]: starting two model servers on this machine...")
    detector = ModelServer("yolo", demo_file(DETECTOR), port=detector_port, access_log=False)
    classifier = ModelServer(
        "classification", demo_file(CLASSIFIER), port=classifier_port, access_log=False
    )
    started = time.perf_counter()
    with detector, classifier:
        labels = ", ".join(detector.model.labels)
        console.print(
            f"  detector   [cyan]{detector.url}[/]  ({detector.name}: {labels})\n"
            f"  classifier [cyan]{classifier.url}[/]  ({classifier.name}: digits 0-9)\n"
            f"  ready in {time.perf_counter() - started:.1f} s"
        )
        with httpx.Client(timeout=30) as client:
            _detect(console, client, detector)
            _classify(console, client, classifier)
        console.print(
            Panel.fit(
                f"Try it yourself while it runs ([bold]cvdeploy demo --serve[/]):\n"
                f"  curl -F file=@image.jpg {detector.url}/v1/models/{detector.name}/predict\n"
                f"  API docs   {detector.url}/docs\n"
                f"  metrics    {detector.url}/metrics\n"
                f"  KServe v2  {detector.url}/v2/models/{detector.name}\n"
                f"  MLflow     POST {detector.url}/invocations",
                title="next steps",
            )
        )
        if keep_serving:
            console.print("serving until Ctrl-C ...")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                console.print("stopping")


def _detect(console: Console, client: httpx.Client, server: ModelServer) -> None:
    images = sample_images("shapes_*") + sample_images("china*")
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
    console.rule("detector: multipart upload to /v1/models/{name}/predict")
    response = client.post(f"{server.url}/v1/models/{server.name}/predict", files=files)
    response.raise_for_status()
    for path, prediction in zip(images, response.json()["predictions"], strict=True):
        print_result(console, path.name, prediction)


def _classify(console: Console, client: httpx.Client, server: ModelServer) -> None:
    images = sample_images("digit_*")
    console.rule("classifier: MLflow-style /invocations with base64 images")
    body = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images],
        },
        "params": {"top_k": 3},
    }
    response = client.post(f"{server.url}/invocations", json=body)
    response.raise_for_status()
    table = Table(title="digits: top-3 from one batched request", title_justify="left")
    for column in ("image", "predicted", "score", "runner-up", ""):
        table.add_column(column)
    correct = 0
    for path, prediction in zip(images, response.json()["predictions"], strict=True):
        best, second = prediction["classes"][0], prediction["classes"][1]
        ok = best["label"] == path.stem.split("_")[-1]
        correct += ok
        table.add_row(
            path.name,
            best["label"],
            f"{best['score']:.4f}",
            f"{second['label']} ({second['score']:.4f})",
            "[green]ok[/]" if ok else "[red]wrong[/]",
        )
    console.print(table)
    console.print(f"[bold]{correct}/{len(images)}[/] digits classified correctly")
