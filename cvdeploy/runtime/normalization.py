"""How a model wants its pixels: defaults < metadata ``cvdeploy.*`` keys < the config mapping.

Keys (the same in both places; metadata spells them ``cvdeploy.mean`` etc., as JSON or Python
literals):

``scale``          multiply pixels (0-255) by this first; default ``1/255``
``mean``, ``std``  per-channel, in the units *after* ``scale``; one value or one per channel.
                   If they exceed 1 while ``scale`` was not set, they are taken as 0-255 values
                   (mmdetection/torchvision style) and ``scale`` becomes 1
``channel_order``  ``rgb`` (default) or ``bgr``
``resize``         ``letterbox`` (detection default), ``center_crop`` (classification default,
                   as Ultralytics: short side to size, crop the centre) or ``stretch``
``pad``            letterbox padding: ``full`` (default; every image gets the same shape, so
                   they batch) or ``stride`` (to the next stride multiple; dynamic inputs only)
``pad_value``      letterbox grey level, default 114
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cvdeploy.errors import ConfigError
from cvdeploy.runtime.metadata import parse_literal
from cvdeploy.runtime.preprocess import Normalization

__all__ = ["NORMALIZATION_KEYS", "resolve_normalization"]

NORMALIZATION_KEYS: Final = ("scale", "mean", "std", "channel_order", "resize", "pad", "pad_value")
_CHOICES: Final = {
    "channel_order": ("rgb", "bgr"),
    "resize": ("letterbox", "center_crop", "stretch"),
    "pad": ("full", "stride"),
}


def resolve_normalization(
    task: str,
    metadata: Mapping[str, str],
    config: Mapping[str, object] | None,
    channels: int,
) -> Normalization:
    """Merge defaults, model metadata and the user's mapping into one validated value.

    Raises:
        ConfigError: an unknown key or a bad value, naming where it came from.
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key in NORMALIZATION_KEYS:
        text = metadata.get(f"cvdeploy.{key}")
        if text is not None:
            parsed = parse_literal(text)
            values[key] = text.strip() if parsed is None else parsed
            sources[key] = f"model metadata 'cvdeploy.{key}'"
    for key, value in (config or {}).items():
        if key not in NORMALIZATION_KEYS:
            raise ConfigError(
                f"unknown normalization key {key!r}; allowed keys: {', '.join(NORMALIZATION_KEYS)}"
            )
        if value is None:  # the config's way of saying "from the model's metadata"
            continue
        values[key] = value
        sources[key] = f"normalization[{key!r}]"

    for key, choices in _CHOICES.items():
        if key in values:
            text = str(values[key]).strip().lower()
            if text not in choices:
                raise ConfigError(
                    f"{sources[key]} = {values[key]!r} is not one of {', '.join(choices)}"
                )
            values[key] = text
    mean = _vector(values, sources, "mean", channels)
    std = _vector(values, sources, "std", channels)
    if std is not None and any(v == 0 for v in std):
        raise ConfigError(f"{sources['std']} must not contain 0")
    if "scale" in values:
        scale = _number(values, sources, "scale")
        if scale <= 0:
            raise ConfigError(f"{sources['scale']} must be > 0, got {values['scale']!r}")
    else:
        pixel_units = any(abs(v) > 1 for v in (*(mean or ()), *(std or ())))
        scale = 1.0 if pixel_units else 1.0 / 255.0
    pad_value = int(_number(values, sources, "pad_value")) if "pad_value" in values else 114
    if not 0 <= pad_value <= 255:
        raise ConfigError(f"{sources['pad_value']} must be between 0 and 255")
    default_resize = "letterbox" if task == "detection" else "center_crop"
    return Normalization(
        scale=scale,
        mean=mean,
        std=std,
        channel_order=values.get("channel_order", "rgb"),  # type: ignore[arg-type]
        resize=values.get("resize", default_resize),  # type: ignore[arg-type]
        pad=values.get("pad", "full"),  # type: ignore[arg-type]
        pad_value=pad_value,
    )


def _number(values: Mapping[str, object], sources: Mapping[str, str], key: str) -> float:
    value = values[key]
    if isinstance(value, str):
        value = parse_literal(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{sources[key]} must be a number, got {values[key]!r}")
    return float(value)


def _vector(
    values: Mapping[str, object], sources: Mapping[str, str], key: str, channels: int
) -> tuple[float, ...] | None:
    if key not in values or values[key] is None:
        return None
    value = values[key]
    if isinstance(value, str):
        value = parse_literal(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{sources[key]} must be a number or a list of numbers")
    if len(value) not in (1, channels):
        raise ConfigError(
            f"{sources[key]} has {len(value)} values; the model has {channels} channel(s)"
        )
    return tuple(float(v) for v in value)
