"""The ``model:`` section: which model file to serve and how to pre/post-process for it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from cvdeploy.config._fields import (
    Section,
    check_input_size,
    check_labels,
    check_providers,
    fspath,
    lower,
)

__all__ = ["ModelConfig", "NormalizationConfig"]


class NormalizationConfig(Section):
    """How pixels become the model's input tensor; ``None`` = read it from the model's metadata."""

    scale: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="Multiply pixel values by this (1/255 for most models).",
    )
    mean: list[float] | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="Per-channel mean subtracted after scale.",
    )
    std: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="Per-channel std divided after the mean.",
    )
    channel_order: Annotated[Literal["rgb", "bgr"] | None, BeforeValidator(lower)] = Field(
        default=None, description="Channel order the model expects."
    )
    resize: Annotated[
        Literal["letterbox", "stretch", "center_crop"] | None, BeforeValidator(lower)
    ] = Field(
        default=None,
        description="letterbox keeps the aspect ratio and pads (YOLO); stretch ignores it; "
        "center_crop resizes the short side then crops (ImageNet classifiers).",
    )


class ModelConfig(Section):
    """The model to serve (top-level ``model:``)."""

    weights_path: Annotated[str | None, BeforeValidator(fspath)] = Field(
        default=None,
        min_length=1,
        description="Model file to serve (ONNX), e.g. models/yolov8n.onnx; relative paths "
        "resolve against the working directory.",
    )
    model_type: Annotated[
        Literal["yolo", "detection", "classification"] | None, BeforeValidator(lower)
    ] = Field(
        default=None,
        description="yolo (an alias of detection), detection or classification; "
        "None = infer from the model file.",
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Name on the routes (/v1/models/{name}); None = the file's stem.",
    )
    labels: Annotated[list[str] | str | None, BeforeValidator(check_labels)] = Field(
        default=None,
        description="Class names: a list, a {id: name} mapping, or the path of a text file with "
        "one name per line; None = from the model's metadata.",
    )
    input_size: Annotated[int | list[int] | None, BeforeValidator(check_input_size)] = Field(
        default=None,
        description="Input size: one integer or [height, width]; None = from the model.",
    )
    conf_threshold: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Detections scoring below this are dropped."
    )
    iou_threshold: float = Field(
        default=0.45,
        ge=0.0,
        le=1.0,
        description="IoU above which non-maximum suppression merges boxes.",
    )
    max_det: int = Field(
        default=300, ge=1, le=10_000, description="Most detections returned per image."
    )
    top_k: int = Field(
        default=5, ge=1, le=100_000, description="Classes returned per image (classifier)."
    )
    providers: Annotated[list[str] | Literal["auto"], BeforeValidator(check_providers)] = Field(
        default="auto",
        description="ONNX Runtime execution providers in order of preference; auto = CUDA/"
        "TensorRT when present, else CPU.",
    )
    normalization: NormalizationConfig = Field(
        default_factory=NormalizationConfig, description="Pre-processing; None = from metadata."
    )
    warmup: bool = Field(default=True, description="Run one dummy inference at load, before ready.")
    intra_op_spinning: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "ONNX Runtime threads spin between operators: true, false, or auto (a non-spinning "
            "session for batches plus a spinning one for a lone request, for CPU models up to "
            "64 MB)."
        ),
    )

    @property
    def task(self) -> Literal["detection", "classification"] | None:
        """``model_type`` with the ``yolo`` alias resolved."""
        return "detection" if self.model_type == "yolo" else self.model_type
