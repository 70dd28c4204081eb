"""``ModelServer``: the one user-facing class for serving a model, from a file or the registry.

The signature is fixed by DESIGN's "Decisions" so later layers never break it::

    ModelServer(model_type=None, model_path=None, *, host="127.0.0.1", port=8000, workers=1,
                timeout=60, batching=None, limits=None, scaling=None, workspace_url=None,
                token=None, model_name=None, model_version="1", **options)

File mode (seed 000) serves ``model_path`` over HTTP and predicts in-process. Registry mode
(seed 001, ``model_name=...``) manages endpoints of registered versions on a platform: the one at
``workspace_url``, or the embedded local platform, started on demand as a daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from cvdeploy.config import ScalingConfig, validate_section
from cvdeploy.errors import ConfigError, InputError, ModelLoadError
from cvdeploy.runtime import (
    ImageLimits,
    Model,
    PredictParams,
    Result,
    as_rgb_array,
    decode_image,
    default_intra_op_threads,
    load_model,
)
from cvdeploy.serving.engine import InferenceEngine
from cvdeploy.serving.runner import ProcessServer, ThreadedServer
from cvdeploy.serving.settings import ServeSettings

__all__ = ["ModelServer"]

#: ModelServer options that are server settings rather than model-loading options.
_SERVER_OPTIONS = (
    "cache_size",
    "intra_op_threads",
    "log_level",
    "access_log",
    "name",
    "version",
    "drift",
    "payload_log",
)
#: Config spellings (``model:`` section) accepted as aliases of load_model's argument names.
_MODEL_ALIASES = {"conf_threshold": "conf", "iou_threshold": "iou", "model_type": "task"}
_MODEL_OPTIONS = frozenset(
    {"labels", "input_size", "providers", "conf", "iou", "max_det", "top_k", "normalization",
     "warmup", "output_layout", "inter_op_threads", "intra_op_spinning"}
)  # fmt: skip

if TYPE_CHECKING:
    from cvdeploy.platforms.endpoints import EndpointManager

ImageLike = Any  # numpy array, PIL image, path, bytes, or a torch tensor


class ModelServer:
    """Serve a computer-vision model over HTTP and predict with it in-process.

    Args:
        model_type: ``"yolo"``/``"detection"`` or ``"classification"``; None reads the task
            from the model's metadata.
        model_path: The ONNX file to serve (file mode).
        host: Interface to bind; ``0.0.0.0`` exposes the server on the network.
        port: TCP port; 0 picks a free one (see :attr:`url`).
        workers: Server processes sharing the port. 1 serves from a thread of this process.
        timeout: Seconds a request may take, queue included, before a 504.
        batching: ``enabled``, ``max_batch_size``, ``max_queue_delay_ms``, ``max_queue_size``.
        limits: ``max_body_bytes``, ``max_image_pixels``, ``max_images_per_request``,
            ``max_v2_tensor_bytes``.
        scaling: ``min_replicas``, ``max_replicas``, ``target_cpu`` (used by platforms; a file
            server is one replica).
        workspace_url: Platform to manage endpoints on (registry mode).
        token: The workspace token (registry mode), or the query token a file server requires.
        model_name: Registered model to serve (registry mode).
        model_version: Registered version (registry mode).
        **options: ``cache_size``, ``intra_op_threads``, ``log_level``, ``access_log``, ``name``
            (served model name; default the file stem), ``version``, ``drift`` and
            ``payload_log`` (the config's ``monitoring`` sections), and model options:
            ``labels``, ``input_size``, ``providers``, ``conf`` (or ``conf_threshold``), ``iou``,
            ``max_det``, ``top_k``, ``normalization``, ``warmup``, ``output_layout``.
    """

    def __init__(
        self,
        model_type: str | None = None,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        workers: int = 1,
        timeout: float = 60,
        batching: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        scaling: Mapping[str, Any] | None = None,
        workspace_url: str | None = None,
        token: str | None = None,
        model_name: str | None = None,
        model_version: str = "1",
        **options: Any,
    ) -> None:
        if (model_path is None) == (model_name is None):
            raise ConfigError(
                "give exactly one of model_path (serve a file) and model_name (serve a "
                "registered model); got " + ("both" if model_path is not None else "neither")
            )
        self.scaling = validate_section(ScalingConfig, scaling, name="scaling").model_dump()
        self.host = host
        self.port = port
        self.workers = workers
        self._server: ThreadedServer | ProcessServer | None = None
        self.workspace_url = workspace_url
        self.model_version = str(model_version)
        self.model_name = model_name
        self._endpoints: EndpointManager | None = None
        if model_name is not None:
            self._init_registry_mode(model_name, workspace_url, token, timeout, options)
            return
        path = Path(os.fspath(model_path))  # type: ignore[arg-type]
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory; give the path of an .onnx model file")
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        # batching and limits are validated by ServeSettings.create, with the config's messages.
        server_options = {k: options.pop(k) for k in _SERVER_OPTIONS if k in options}
        self._log_level = str(server_options.pop("log_level", "info"))
        self._access_log = bool(server_options.pop("access_log", True))
        model_options = _model_options(options)
        self.settings = ServeSettings.create(
            model_path=str(path),
            task=model_type,
            name=server_options.get("name"),
            version=str(server_options.get("version", "1")),
            timeout=float(timeout),
            workers=workers,
            batching=batching,
            limits=limits,
            cache_size=int(server_options.get("cache_size", 0)),
            token=token,
            intra_op_threads=server_options.get("intra_op_threads"),
            model_options=model_options,
            drift=server_options.get("drift"),
            payload_log=server_options.get("payload_log"),
        )
        self._model: Model | None = None

    def _init_registry_mode(
        self,
        model_name: str,
        workspace_url: str | None,
        token: str | None,
        timeout: float,
        options: dict[str, Any],
    ) -> None:
        from cvdeploy.platforms.endpoints import EndpointManager

        platform = options.pop("platform", None)
        if options:
            raise ConfigError(
                "options such as " + ", ".join(sorted(options)) + " apply to serving a file; in "
                "registry mode the endpoint's config sets how replicas run"
            )
        self._endpoints = EndpointManager(
            model_name,
            self.model_version,
            workspace_url=workspace_url,
            token=token,
            timeout=max(float(timeout), 600.0),
            platform=platform,
        )

    # -- registry mode (seed 001) ------------------------------------------------------------

    @property
    def endpoints(self) -> EndpointManager:
        """The endpoint manager of registry mode; a ConfigError in file mode."""
        if self._endpoints is None:
            raise ConfigError(
                "endpoint management needs registry mode: ModelServer(model_name=..., "
                "model_version=...); this server serves a file"
            )
        return self._endpoints

    def create_endpoint(
        self,
        endpoint_name: str,
        instance_type: str | None = None,
        min_instances: int | None = None,
        max_instances: int | None = None,
        scale_to_zero: bool | None = None,
    ) -> str:
        """Serve ``model_name`` version ``model_version`` at ``endpoint_name``; waits until ready.

        Defaults come from the config's ``deployment.endpoint`` section (Standard_DS3_v2, 1-5
        instances, scale to zero). Returns the endpoint name.
        """
        return self.endpoints.create_endpoint(
            endpoint_name, instance_type, min_instances, max_instances, scale_to_zero
        )

    def update_endpoint(
        self, endpoint_name: str, new_model_version: str | int, traffic_percentage: int = 100
    ) -> None:
        """Serve ``new_model_version`` with ``traffic_percentage`` percent of the traffic."""
        self.endpoints.update_endpoint(endpoint_name, new_model_version, traffic_percentage)

    def monitor_endpoint(self, endpoint_name: str, window_s: float = 60.0) -> dict[str, Any]:
        """State, versions, replicas, traffic, p50/p95/p99 latency, throughput, error rate
        over the last ``window_s`` seconds (at most 300)."""
        return self.endpoints.monitor_endpoint(endpoint_name, window_s)

    def rollback_endpoint(self, endpoint_name: str, to_revision: int | None = None) -> None:
        """Re-apply the endpoint's previous config revision (or ``to_revision``)."""
        self.endpoints.rollback_endpoint(endpoint_name, to_revision)

    def delete_endpoint(self, endpoint_name: str) -> None:
        self.endpoints.delete_endpoint(endpoint_name)

    # -- lifecycle ---------------------------------------------------------------------------

    def _file_mode(self, what: str) -> None:
        if self._endpoints is not None:
            raise ConfigError(
                f"{what} serves a model file; in registry mode use create_endpoint / "
                "predict(x, endpoint_name=...)"
            )

    @property
    def model(self) -> Model:
        """The model, loaded (and warmed) on first use."""
        self._file_mode("ModelServer.model")
        if self._model is None:
            s = self.settings
            options = dict(s.model_options)
            options.setdefault(
                "intra_op_threads", s.intra_op_threads or default_intra_op_threads(1)
            )
            self._model = load_model(s.model_path, s.task, name=s.model_name, **options)
        return self._model

    @property
    def name(self) -> str:
        if self._endpoints is not None:
            return self._endpoints.model_name
        return self.settings.model_name

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, timeout: float = 120.0) -> ModelServer:
        """Start serving over HTTP and return once the model is ready (non-blocking)."""
        self._file_mode("start()")
        if self._server is not None:
            return self
        if self.port == 0:
            self.port = _free_port(self.host)
        if self.workers == 1:
            engine = InferenceEngine(self.settings, model=self.model)
            server: ThreadedServer | ProcessServer = ThreadedServer(
                self.settings, engine, self.host, self.port, access_log=self._access_log
            )
        else:
            server = ProcessServer(self.settings, self.host, self.port)
        self.port = server.start(timeout) or self.port
        self._server = server
        return self

    def serve(self) -> None:
        """Serve in the foreground until interrupted (Ctrl-C or SIGTERM)."""
        self._file_mode("serve()")
        from cvdeploy.serving.runner import serve_forever

        serve_forever(self.settings, self.host, self.port, self._log_level)

    def stop(self) -> None:
        """Stop serving, letting in-flight requests finish."""
        if self._server is not None:
            self._server.stop(timeout=self.settings.timeout)
            self._server = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._endpoints is not None:
            return f"ModelServer(model_name={self.name!r}, version={self.model_version!r})"
        state = f"serving at {self.url}" if self.running else "stopped"
        return f"ModelServer({self.name!r}, {state})"

    # -- in-process prediction ---------------------------------------------------------------

    @overload
    def predict(
        self, x: list[ImageLike] | tuple[ImageLike, ...], **params: Any
    ) -> list[Result]: ...

    @overload
    def predict(self, x: ImageLike, **params: Any) -> Result | list[Result]: ...

    def predict(self, x: Any, **params: Any) -> Result | list[Result]:
        """Predict in this process, without HTTP.

        ``x`` is one image (HWC uint8 array, CHW float tensor, PIL image, path or encoded
        bytes) or a batch (a list of those, an NHWC uint8 array or an NCHW float tensor).
        One image gives one result; a batch gives a list. ``params`` override ``conf``,
        ``iou``, ``max_det`` and ``top_k`` for this call.

        In registry mode the images go to ``endpoint_name`` (default: the endpoint this object
        last created or updated) and the answer is the endpoint's JSON prediction per image.
        """
        if self._endpoints is not None:
            endpoint = params.pop("endpoint_name", None)
            return self._endpoints.predict(x, endpoint, **params)  # type: ignore[return-value]
        model = self.model
        merged: PredictParams = (
            model.default_params.merged(params) if params else (model.default_params)
        )
        items, single = self._as_inputs(x)
        images = [i for i in items if i[0] == "image"]
        if len(images) == len(items):
            results = model.predict([i[1] for i in items], merged)
        else:
            results = [self._predict_one(kind, value, merged) for kind, value in items]
        return results[0] if single else results

    def _predict_one(self, kind: str, value: np.ndarray, params: PredictParams) -> Result:
        model = self.model
        prepared = model.preprocess(value) if kind == "image" else model.prepare_tensor(value)
        outputs = model.infer(prepared.tensor[None], latency=True)
        return model.postprocess(outputs, 0, prepared.meta, params)

    def _as_inputs(self, x: Any) -> tuple[list[tuple[str, np.ndarray]], bool]:
        if isinstance(x, (list, tuple)):
            items: list[tuple[str, np.ndarray]] = []
            for element in x:
                converted, _ = self._as_inputs(element)
                items.extend(converted)
            return items, False
        if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
            x = x.detach().cpu().numpy()
        limits = ImageLimits(
            max_bytes=self.settings.limits.max_body_bytes,
            max_pixels=self.settings.limits.max_image_pixels,
        )
        if isinstance(x, (str, os.PathLike)):
            path = Path(os.fspath(x))
            if not path.is_file():
                raise InputError(f"image file not found: {path}")
            return [("image", decode_image(path.read_bytes(), limits))], True
        if isinstance(x, (bytes, bytearray, memoryview)):
            return [("image", decode_image(bytes(x), limits))], True
        if isinstance(x, np.ndarray):
            return _array_inputs(x)
        if _is_pil(x):
            return [("image", as_rgb_array(x))], True
        raise InputError(
            f"cannot predict on a {type(x).__name__}; pass a numpy array, PIL image, path, "
            "bytes, or a list of them"
        )


def _array_inputs(x: np.ndarray) -> tuple[list[tuple[str, np.ndarray]], bool]:
    """Tell images from model tensors by dtype and shape."""
    if x.dtype == np.uint8:
        if x.ndim == 4:
            return [("image", as_rgb_array(image)) for image in x], False
        if x.ndim in (2, 3):
            return [("image", as_rgb_array(x))], True
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim == 4:
            return [("tensor", np.ascontiguousarray(t, dtype=np.float32)) for t in x], False
        if x.ndim == 3:
            return [("tensor", np.ascontiguousarray(x, dtype=np.float32))], True
    raise InputError(
        f"cannot predict on an array of shape {x.shape} and dtype {x.dtype}: pass HWC uint8 "
        "images ([H,W,3] or [B,H,W,3]) or preprocessed float tensors ([C,H,W] or [B,C,H,W])"
    )


def _is_pil(x: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _model_options(options: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for given, value in options.items():
        key = _MODEL_ALIASES.get(given, given)
        if key == "task":
            continue  # given as model_type
        if key not in _MODEL_OPTIONS and key != "weights_path":
            valid = sorted({*_MODEL_OPTIONS, *_SERVER_OPTIONS})
            raise ConfigError(
                f"ModelServer got an unknown option {key!r}; valid options: {', '.join(valid)}"
            )
        if key != "weights_path" and value is not None:
            result[key] = value
    return result


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "::") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])
