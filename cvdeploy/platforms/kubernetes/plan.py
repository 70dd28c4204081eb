"""What ``cvdeploy build`` writes, decided once: the :class:`BuildPlan`.

The Dockerfile, the Kubernetes manifests and the KServe ``InferenceService`` are all rendered
from one plan, so the image's port, the probes' port, the replica bounds and the resources can
never disagree between files. Every value comes from the config (``deployment.server``,
``deployment.scaling``, ``deployment.endpoint.instance_type``) or the model, never from the
clock or the host, so building twice gives the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.config import Config
from cvdeploy.errors import ConfigError, ModelLoadError, NotAvailableError
from cvdeploy.platforms.instance_types import InstanceType, lookup

__all__ = [
    "CONFIG_DIR",
    "CONTAINER_HOME",
    "MODELS_DIR",
    "REGISTRY_PREFIX",
    "BuildPlan",
    "Resources",
    "ServedModel",
    "k8s_name",
    "label_value",
    "make_plan",
    "plan_for_model",
    "resolve_model",
]

#: Where models live in the container, baked or mounted: ``/models/<served name>/<file>``.
MODELS_DIR = "/models"
#: The config the container serves with (baked into the image).
CONFIG_DIR = "/etc/cvdeploy"
#: ``$CVDEPLOY_HOME`` in the container: under /tmp, the one writable path (an emptyDir).
CONTAINER_HOME = "/tmp/cvdeploy"
#: ``cvdeploy build registry:NAME/VERSION`` reads the version's verified file from the registry.
REGISTRY_PREFIX = "registry:"

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def k8s_name(name: str) -> str:
    """``name`` as a Kubernetes object name (DNS-1123 label: lowercase, digits, '-', <= 63).

    Raises:
        ConfigError: Nothing usable is left (e.g. a name of only punctuation).
    """
    cleaned = _DNS_LABEL.sub("-", name.lower()).strip("-")[:63].rstrip("-")
    if not cleaned or not cleaned[0].isalpha():
        raise ConfigError(
            f"{name!r} does not make a Kubernetes name (lowercase letters, digits and '-', "
            "starting with a letter); pass --name with one, e.g. --name detector"
        )
    return cleaned


def label_value(value: str) -> str:
    """``value`` as a Kubernetes label value (alphanumerics, '-', '_', '.', <= 63)."""
    return _LABEL_VALUE.sub("-", value).strip("-_.")[:63].rstrip("-_.")


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, as Kubernetes quantities."""

    cpu: str
    memory: str
    gpus: int = 0
    #: The instance type they come from (``deployment.endpoint.instance_type``).
    instance_type: str = ""

    @classmethod
    def from_instance(cls, instance: InstanceType) -> Resources:
        # Requests equal limits: a Guaranteed pod is never throttled below what the threads
        # were sized for, and the HPA's utilisation percentages are relative to the request.
        memory = f"{round(instance.memory_gb * 1024)}Mi"
        return cls(str(instance.vcpus), memory, 1 if instance.gpu else 0, instance.name)

    def as_k8s(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` block."""
        amounts = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}


@dataclass(frozen=True)
class ServedModel:
    """One model file served by its own Deployment."""

    #: The model's name on the routes (``/v2/models/{name}``), as ``cvdeploy serve --name``.
    name: str
    #: The model file on this machine (baked into the image from here).
    source: Path
    #: The model version for ``app.kubernetes.io/version``.
    version: str

    @property
    def container_path(self) -> str:
        """Where the file is in the container, baked or mounted."""
        return f"{MODELS_DIR}/{self.name}/{self.source.name}"


@dataclass(frozen=True)
class BuildPlan:
    """Everything the generated files say, in one place (see the module docstring)."""

    app: str
    served: ServedModel
    image: str
    namespace: str
    bake: bool
    port: int
    workers: int
    intra_op_threads: int
    resources: Resources
    min_replicas: int
    max_replicas: int
    target_cpu: int
    canary_percent: int | None
    #: The serving config baked into the image (``/etc/cvdeploy/cvdeploy.yaml``), as a mapping.
    serve_config: dict[str, Any]
    #: A labels file the config names, copied into the image beside the config.
    labels_file: Path | None = None
    #: The cvdeploy wheel to install in the image; None installs ``cvdeploy==<version>``.
    wheel: Path | None = None
    #: Whether the server requires a token (it is read from a Secret, never baked in).
    token_required: bool = False
    #: Things the user should know about the build (printed by the CLI).
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: The endpoint this model serves in (``app.kubernetes.io/part-of``); None for one model.
    part_of: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        """The recommended labels every object carries."""
        labels = {
            "app.kubernetes.io/name": self.app,
            "app.kubernetes.io/version": label_value(self.served.version) or "unknown",
            "app.kubernetes.io/component": "predictor",
            "app.kubernetes.io/managed-by": "cvdeploy",
        }
        if self.part_of is not None:
            labels["app.kubernetes.io/part-of"] = self.part_of
        return labels

    @property
    def selector(self) -> dict[str, str]:
        """What the Service and Deployment match on: stable across versions."""
        return {"app.kubernetes.io/name": self.app, "app.kubernetes.io/component": "predictor"}

    @property
    def serve_args(self) -> list[str]:
        """``cvdeploy serve`` and its arguments, as the image's CMD and the pods' command."""
        return [
            "cvdeploy",
            "serve",
            self.served.container_path,
            "--name",
            self.served.name,
            "--config",
            f"{CONFIG_DIR}/cvdeploy.yaml",
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    @property
    def env(self) -> dict[str, str]:
        """The container's environment (the image's ENV; the manifests repeat it)."""
        return {
            "CVDEPLOY_HOME": CONTAINER_HOME,
            # The config loader reads CVDEPLOY_<SECTION>__<KEY>; this one wins over the file,
            # so `docker run -e` / the pod spec can retune threads without a rebuild.
            "CVDEPLOY_DEPLOYMENT__SERVER__INTRA_OP_THREADS": str(self.intra_op_threads),
            # ONNX Runtime sizes its pool itself, but numpy/scipy's BLAS would take every core
            # of the node (cgroup CPU limits are invisible to os.cpu_count()).
            "OMP_NUM_THREADS": str(self.intra_op_threads),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }


def resolve_model(model: str, registry_uri: str | None = None) -> tuple[Path, str, str]:
    """``(file, name, version)`` of MODEL: an ONNX path or ``registry:NAME/VERSION``.

    Raises:
        ModelLoadError: The file does not exist or is not ``.onnx``.
        ConfigError: A ``registry:`` reference without ``/VERSION``.
        RegistryError: The registry has no such version, or its file fails its sha256 check.
    """
    if model.startswith(REGISTRY_PREFIX):
        ref = model[len(REGISTRY_PREFIX) :]
        name, sep, version = ref.rpartition("/")
        if not sep or not name or not version:
            raise ConfigError(
                f"{model!r} is not a registry reference; write registry:NAME/VERSION "
                "(VERSION a number or an alias, e.g. registry:detector/3)"
            )
        from cvdeploy.registry import Registry

        path = Registry(registry_uri).model_path(name, version)
        _self_contained(path)
        return path, name, version
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"model file not found: {path}; give an ONNX file or registry:NAME/VERSION"
        )
    if path.suffix.lower() != ".onnx":
        raise ModelLoadError(
            f"{path} is not an ONNX file; the image serves ONNX (convert with cvdeploy export)"
        )
    _self_contained(path)
    from cvdeploy.runtime.onnx import file_sha256

    return path.resolve(), path.stem, f"sha256-{file_sha256(path)[:12]}"


def _self_contained(path: Path) -> None:
    """Refuse a model whose weights live in external data files: only the .onnx is copied."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and others for a corrupt file
        raise ModelLoadError(f"{path} is not a readable ONNX model: {exc}") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise NotAvailableError(
            f"{path} keeps its weights in external data files, which cvdeploy build does not "
            "copy yet; save it as one file (onnx.save(model, path, save_as_external_data=False))"
        )


def plan_for_model(
    model: str,
    config: Config,
    *,
    image: str | None = None,
    namespace: str = "default",
    bake: bool = True,
    name: str | None = None,
    canary_percent: int | None = None,
    wheel: Path | None = None,
    registry_uri: str | None = None,
) -> BuildPlan:
    """The plan for serving one model (a file or a registry version) with ``config``.

    Raises:
        ConfigError: A value the image cannot use (port 0, an unknown instance type, a canary
            percent outside 1..99, a bad name).
    """
    source, default_name, version = resolve_model(model, registry_uri)
    served_name = config.model.name or default_name
    scaling = config.deployment.scaling
    return make_plan(
        config,
        source=source,
        served_name=served_name,
        version=version,
        app=k8s_name(name or served_name),
        image=image,
        namespace=namespace,
        bake=bake,
        replicas=(scaling.min_replicas, scaling.max_replicas),
        canary_percent=canary_percent,
        wheel=wheel,
    )


def make_plan(
    config: Config,
    *,
    source: Path,
    served_name: str,
    version: str,
    app: str,
    image: str | None,
    namespace: str,
    bake: bool,
    replicas: tuple[int, int],
    canary_percent: int | None = None,
    wheel: Path | None = None,
    instance_type: str | None = None,
    batching: dict[str, Any] | None = None,
    part_of: str | None = None,
) -> BuildPlan:
    """The plan for one model file; :func:`plan_for_model` and endpoint builds share it.

    Args:
        replicas: ``(min, max)`` replicas for the Deployment and its autoscaler.
        instance_type: Overrides ``deployment.endpoint.instance_type`` (a served entity's).
        batching: Overrides ``deployment.batching`` (a served entity's).
        part_of: The endpoint the model serves in, for ``app.kubernetes.io/part-of``.
    """
    deployment = config.deployment
    server = deployment.server
    if server.port == 0:
        raise ConfigError(
            "deployment.server.port is 0 (any free port), which a container cannot publish; "
            "set a fixed port such as 8000"
        )
    if canary_percent is not None and not 0 < canary_percent < 100:
        raise ConfigError(
            f"--canary-percent must be between 1 and 99, got {canary_percent}; leave it out "
            "to send all traffic to this version"
        )
    instance = lookup(instance_type or deployment.endpoint.instance_type)
    threads = server.intra_op_threads or max(1, instance.vcpus // server.workers)
    notes: list[str] = []
    if instance.gpu:
        notes.append(
            f"instance type {instance.name} has a GPU: the pods request nvidia.com/gpu, but the "
            "image installs the onnxruntime build of this environment; install onnxruntime-gpu "
            "here before building for a CUDA image"
        )
    serve_config, labels_file, config_notes = _serve_config(config, threads)
    if batching is not None:
        serve_config["deployment"]["batching"] = dict(batching)
    notes.extend(config_notes)
    if wheel is not None and not wheel.is_file():
        raise ConfigError(f"--wheel {wheel} is not a file; build one with: pip wheel --no-deps .")
    from cvdeploy import __version__

    return BuildPlan(
        app=app,
        served=ServedModel(served_name, source, version),
        image=image or f"cvdeploy-{app}:{label_value(version) or __version__}",
        namespace=k8s_name(namespace),
        bake=bake,
        port=server.port,
        workers=server.workers,
        intra_op_threads=threads,
        resources=Resources.from_instance(instance),
        min_replicas=replicas[0],
        max_replicas=replicas[1],
        target_cpu=round(deployment.scaling.target_cpu),
        canary_percent=canary_percent,
        serve_config=serve_config,
        labels_file=labels_file,
        wheel=wheel.resolve() if wheel is not None else None,
        token_required=server.token is not None,
        notes=tuple(notes),
        part_of=part_of,
    )


def _serve_config(config: Config, threads: int) -> tuple[dict[str, Any], Path | None, list[str]]:
    """The sections ``cvdeploy serve`` reads, rewritten for the container.

    Host paths mean nothing in the image and a token must not be baked into a layer, so:
    ``weights_path`` is dropped (the CMD names the model), a labels file is copied in and
    re-pointed, a payload-log path falls back to ``$CVDEPLOY_HOME``, and the token is removed
    (the pods read it from a Secret through the environment).
    """
    root = config.root.model_dump(mode="json")
    model = dict(root["model"])
    deployment = root["deployment"]
    notes: list[str] = []
    model.pop("weights_path", None)
    labels_file: Path | None = None
    if isinstance(model.get("labels"), str):
        labels_file = Path(model["labels"]).expanduser().resolve()
        if not labels_file.is_file():
            raise ConfigError(f"model.labels names {labels_file}, which is not a file")
        model["labels"] = f"{CONFIG_DIR}/labels.txt"
    server = dict(deployment["server"])
    if server.pop("token", None) is not None:
        notes.append(
            "deployment.server.token is not baked into the image; the pods read it from the "
            "Secret <app>-token (key: token) as CVDEPLOY_DEPLOYMENT__SERVER__TOKEN"
        )
    server["host"] = "0.0.0.0"
    server["intra_op_threads"] = threads
    monitoring = deployment["monitoring"]
    payload_log = dict(monitoring["payload_log"])
    if payload_log.get("path") is not None:
        notes.append(
            f"monitoring.payload_log.path ({payload_log['path']}) is a host path; the image "
            f"logs under $CVDEPLOY_HOME ({CONTAINER_HOME}) instead"
        )
        payload_log["path"] = None
    serve_config = {
        "model": model,
        "deployment": {
            "server": server,
            "batching": deployment["batching"],
            "limits": deployment["limits"],
            "scaling": deployment["scaling"],
            "monitoring": {"drift": monitoring["drift"], "payload_log": payload_log},
        },
    }
    return serve_config, labels_file, notes
