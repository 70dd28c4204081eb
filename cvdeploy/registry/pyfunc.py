"""The ``python_function`` loader MLflow calls for a cvdeploy model (``loader_module``).

``mlflow.pyfunc.load_model`` (and Databricks Model Serving) call :func:`_load_pyfunc` with the
flavour's ``data`` folder; the object returned answers ``predict`` with the same prediction
dicts as cvdeploy's own server. Nothing here imports MLflow or pandas: a DataFrame is recognised
by its shape, so the loader works wherever cvdeploy is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cvdeploy.errors import InputError, ModelLoadError
from cvdeploy.registry.card import CARD_NAME, ModelCard
from cvdeploy.registry.paths import safe_join

__all__ = ["CVDeployPyfuncModel", "_load_pyfunc"]

_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_PARAM_KEYS = ("conf", "iou", "max_det", "top_k")


class CVDeployPyfuncModel:
    """A loaded cvdeploy model behind MLflow's ``predict(model_input, params=None)``."""

    def __init__(self, data_path: str | Path) -> None:
        import json

        from cvdeploy.runtime import load_model
        from cvdeploy.runtime.onnx import file_sha256

        # data_path is the flavour's data folder; card paths are relative to its parent.
        data = Path(data_path)
        root = data.parent
        card_file = safe_join(data, CARD_NAME)
        try:
            self.card = ModelCard.from_dict(json.loads(card_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{card_file.name}: unreadable model card: {exc}") from exc
        onnx = safe_join(root, self.card.onnx)
        digest = file_sha256(onnx)
        if digest != self.card.sha256:
            raise ModelLoadError(
                f"the model file's sha256 ({digest[:12]}...) differs from its card "
                f"({self.card.sha256[:12]}...); the artifact was modified"
            )
        self.model = load_model(onnx, self.card.task, labels=self.card.labels, name=self.card.name)

    def predict(
        self, model_input: Any, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One prediction dict per image (``task``, ``detections`` or ``classes``)."""
        from cvdeploy.runtime import decode_image

        images, extra = _images(model_input)
        merged = {**extra, **(params or {})}
        predict_params = self.model.default_params.merged(
            {k: v for k, v in merged.items() if k in _PARAM_KEYS}
        )
        arrays = [decode_image(blob) for blob in images]
        return [r.to_dict() for r in self.model.predict(arrays, predict_params)]


def _load_pyfunc(data_path: str, model_config: Any = None) -> CVDeployPyfuncModel:
    """MLflow's entry point for the ``python_function`` flavour."""
    return CVDeployPyfuncModel(data_path)


def _images(model_input: Any) -> tuple[list[bytes], dict[str, Any]]:
    """Encoded images from what MLflow scoring passes: a payload, a list, bytes or a DataFrame."""
    if isinstance(model_input, (bytes, bytearray)):
        return [bytes(model_input)], {}
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
        payload: Any = {
            "dataframe_split": {
                "columns": [str(c) for c in model_input.columns],
                "data": model_input.to_numpy().tolist(),
            }
        }
    elif hasattr(model_input, "tolist"):  # a numpy array of strings or bytes
        payload = {"instances": model_input.tolist()}
    elif isinstance(model_input, Mapping) and any(key in model_input for key in _FORMATS):
        payload = dict(model_input)
    elif isinstance(model_input, Mapping):
        payload = {"inputs": dict(model_input)}
    elif isinstance(model_input, (list, tuple, str)):
        payload = {
            "instances": list(model_input) if not isinstance(model_input, str) else model_input
        }
    else:
        raise InputError(
            f"cannot read images from a {type(model_input).__name__}; pass base64 strings, "
            "bytes, a list of them, or a DataFrame with an 'image' column"
        )
    return _extract(_bytes_to_text(payload))


def _bytes_to_text(value: Any) -> Any:
    """Everything as base64 text, so one parser reads every body.

    MLflow hands over images two ways: raw bytes (it decodes ``binary`` DataFrame columns) and,
    for tensor input (``inputs`` / ``instances``), numpy arrays whose items are the base64
    *text* as bytes. Raw image bytes are never pure ASCII (every image format's header has a
    byte >= 0x80 or a control byte), so ASCII base64 bytes are taken as text and raw ones are
    encoded.
    """
    import base64
    import binascii

    if hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray, str)):
        value = value.tolist()  # numpy arrays and scalars
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if raw.isascii():
            try:
                base64.b64decode(raw, validate=True)
                return raw.decode("ascii")
            except (binascii.Error, ValueError):
                pass
        return base64.b64encode(raw).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_bytes_to_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _bytes_to_text(v) for k, v in value.items()}
    return value


def _extract(payload: Any) -> tuple[list[bytes], dict[str, Any]]:
    # The serving layer's parser, so the artifact and `cvdeploy serve` accept the same bodies.
    from cvdeploy.serving.protocols.mlflow import extract_images

    images, params = extract_images(payload)
    return images, dict(params)
