"""How ``cvdeploy serve`` turns a config file plus command-line flags into ServeSettings.

Precedence: flags > config file (explicit ``--config``, or discovered as DESIGN describes) >
the command line's own defaults. Without a config file the server binds 127.0.0.1 with one
worker: the seed's ``0.0.0.0`` and ``workers: 4`` apply only when a config says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvdeploy.errors import ConfigError, ModelLoadError
from cvdeploy.serving.settings import ServeSettings

__all__ = ["settings_for_serve"]

_MODEL_KEYS = {
    "labels": "labels",
    "input_size": "input_size",
    "providers": "providers",
    "conf_threshold": "conf",
    "iou_threshold": "iou",
    "max_det": "max_det",
    "top_k": "top_k",
    "normalization": "normalization",
    "warmup": "warmup",
    "intra_op_spinning": "intra_op_spinning",
}


def _load_config(config_path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(deployment kwargs, model section) from a config file, or two empty dicts."""
    from cvdeploy.config import Config

    config = Config(config_path) if config_path is not None else Config()
    if config.path is None:
        return {}, {}
    return config.get_deployment_config(), config.get_model_config()


def settings_for_serve(
    model: Path,
    *,
    task: str | None,
    name: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    config_path: Path | None,
    max_batch_size: int | None,
    max_queue_delay_ms: float | None,
    batching_enabled: bool | None,
    timeout: float | None,
    cache_size: int | None,
    token: str | None,
    intra_op_spinning: bool | None = None,
) -> tuple[ServeSettings, str, int]:
    if not model.is_file():
        raise ModelLoadError(f"model file not found: {model}")
    deployment, model_section = _load_config(config_path)
    batching = dict(deployment.get("batching") or {})
    for key, value in (
        ("max_batch_size", max_batch_size),
        ("max_queue_delay_ms", max_queue_delay_ms),
        ("enabled", batching_enabled),
    ):
        if value is not None:
            batching[key] = value
    model_options = {
        target: model_section[key]
        for key, target in _MODEL_KEYS.items()
        if model_section.get(key) is not None
    }
    if intra_op_spinning is not None:
        model_options["intra_op_spinning"] = intra_op_spinning
    n_workers = workers if workers is not None else int(deployment.get("workers", 1))
    if n_workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {n_workers}")
    settings = ServeSettings.create(
        model_path=str(model),
        task=task or model_section.get("model_type"),
        name=name or model_section.get("name"),
        timeout=float(timeout if timeout is not None else deployment.get("timeout", 60)),
        workers=n_workers,
        batching=batching,
        limits=deployment.get("limits"),
        cache_size=int(cache_size if cache_size is not None else deployment.get("cache_size", 0)),
        token=token if token is not None else deployment.get("token"),
        intra_op_threads=deployment.get("intra_op_threads"),
        model_options=model_options,
        drift=deployment.get("drift"),
        payload_log=deployment.get("payload_log"),
    )
    bind_host = host or str(deployment.get("host", "127.0.0.1"))
    bind_port = port if port is not None else int(deployment.get("port", 8000))
    return settings, bind_host, bind_port
