"""The model card and the MLflow model folder written for every registered version.

The folder is a standard MLflow model with a code-based ``python_function`` flavour::

    MLmodel                 flavors.python_function.loader_module = cvdeploy.registry.pyfunc
    requirements.txt        cvdeploy
    python_env.yaml
    data/                   the flavour's data_path
        model.onnx
        model_card.json
        reference_images/   a bounded sample, for the drift profile

It is written by hand rather than through ``mlflow.pyfunc.log_model``: that module imports
pandas at import time, which cvdeploy does not depend on, and the written files are exactly
what ``log_model(loader_module=..., data_path=...)`` would produce, so ``mlflow.pyfunc.load_model``
and Databricks serve the artifact unchanged. No cloudpickle is involved.
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvdeploy import __version__
from cvdeploy.errors import ConfigError
from cvdeploy.registry.paths import safe_join

__all__ = [
    "CARD_NAME",
    "DATA_DIR",
    "MAX_REFERENCE_BYTES",
    "MAX_REFERENCE_IMAGES",
    "ModelCard",
    "read_card",
    "write_model_folder",
]

DATA_DIR = "data"
CARD_NAME = "model_card.json"
ONNX_NAME = "model.onnx"
REFERENCE_DIR = "reference_images"
LOADER_MODULE = "cvdeploy.registry.pyfunc"
#: Bounds on the reference sample stored with a version: enough for a drift profile, small
#: enough that a registry of many versions stays cheap to back up.
MAX_REFERENCE_IMAGES = 64
MAX_REFERENCE_BYTES = 8 * 2**20
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
#: The MLflow signature, as ``ModelSignature.to_dict()`` writes it (built by hand: MLflow's
#: signature module imports pandas).
SIGNATURE = {
    "inputs": json.dumps([{"type": "binary", "name": "image", "required": True}]),
    "outputs": None,
    "params": json.dumps(
        [
            {"name": "conf", "type": "double", "default": 0.25, "shape": None},
            {"name": "iou", "type": "double", "default": 0.45, "shape": None},
            {"name": "max_det", "type": "long", "default": 300, "shape": None},
            {"name": "top_k", "type": "long", "default": 5, "shape": None},
        ]
    ),
}


@dataclass
class ModelCard:
    """What a version is: stored as ``data/model_card.json`` and mirrored in MLflow tags."""

    name: str
    task: str
    labels: list[str]
    input_size: list[int]
    sha256: str
    onnx: str = f"{DATA_DIR}/{ONNX_NAME}"
    source_commit: str | None = None
    description: str | None = None
    reference_images: list[str] = field(default_factory=list)
    signature: dict[str, Any] = field(default_factory=lambda: dict(SIGNATURE))
    cvdeploy_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def read_card(model_dir: Path) -> ModelCard:
    """The card of an MLflow model folder (``model_dir`` holds ``MLmodel``)."""
    path = safe_join(model_dir, f"{DATA_DIR}/{CARD_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        from cvdeploy.registry.errors import RegistryError

        raise RegistryError(f"the model card of {model_dir.name!r} is unreadable: {exc}") from exc
    return ModelCard.from_dict(data)


def reference_sample(folder: Path) -> list[Path]:
    """Image files of ``folder`` (not recursive, no symlinks), in name order, bounded."""
    if not folder.is_dir():
        raise ConfigError(f"--reference-images {folder} is not a folder")
    chosen: list[Path] = []
    total = 0
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        size = path.stat().st_size
        if len(chosen) >= MAX_REFERENCE_IMAGES or total + size > MAX_REFERENCE_BYTES:
            break
        chosen.append(path)
        total += size
    return chosen


def write_model_folder(
    target: Path, onnx_path: Path, card: ModelCard, reference_images: Sequence[Path]
) -> None:
    """Write the MLflow model folder for ``card`` into the empty folder ``target``."""
    from mlflow.models import Model as MlflowModel

    data = target / DATA_DIR
    data.mkdir(parents=True)
    shutil.copyfile(onnx_path, data / ONNX_NAME)
    if reference_images:
        ref_dir = data / REFERENCE_DIR
        ref_dir.mkdir()
        for i, image in enumerate(reference_images):
            # Our own names: the user's file names never become store paths.
            name = f"{i:03d}{image.suffix.lower()}"
            shutil.copyfile(image, ref_dir / name)
            card.reference_images.append(f"{DATA_DIR}/{REFERENCE_DIR}/{name}")
    (data / CARD_NAME).write_text(card.to_json(), encoding="utf-8")
    (target / "requirements.txt").write_text("cvdeploy\n", encoding="utf-8")
    python = platform.python_version()
    python_env = {
        "python": python,
        "build_dependencies": ["pip"],
        "dependencies": ["-r requirements.txt"],
    }
    (target / "python_env.yaml").write_text(yaml.safe_dump(python_env), encoding="utf-8")
    conda = {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": ["cvdeploy"]}],
    }
    (target / "conda.yaml").write_text(yaml.safe_dump(conda), encoding="utf-8")
    mlmodel = MlflowModel()
    # The same keys as mlflow.pyfunc.add_to_model(loader_module=..., data=..., conda_env=...).
    mlmodel.add_flavor(
        "python_function",
        loader_module=LOADER_MODULE,
        data=DATA_DIR,
        env={"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
        python_version=python,
    )
    payload = mlmodel.to_dict()
    payload["signature"] = dict(card.signature)
    (target / "MLmodel").write_text(yaml.safe_dump(payload, default_flow_style=False))
