"""Building blocks of the schema: the section base class and the coercions its fields share.

Each coercion runs before pydantic's own checks and raises one message written for the user, so
a union such as ``int | list[int]`` reports one problem instead of one per member.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "Section",
    "byte_size",
    "check_input_size",
    "check_labels",
    "check_providers",
    "fspath",
    "invalid",
    "lower",
    "no_zero_floor",
]


def invalid(message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose text is shown to the user as is (after the path and value)."""
    return PydanticCustomError("cvdeploy", message, ctx)


def lower(value: Any) -> Any:
    # Enum-like values are case-insensitive ("INFO", "YOLO", "RGB"); anything else is left
    # for pydantic to reject with its own message.
    return value.strip().lower() if isinstance(value, str) else value


def fspath(value: Any) -> Any:
    """``pathlib.Path`` values given in code are kept as the text of the path."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def byte_size(value: Any) -> Any:
    """Accept ``20971520``, ``"20MiB"``, ``"20 MB"`` or ``"512k"``; 1 K = 1024 bytes."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise invalid("must be a number of bytes such as 20971520 or '20MiB'")
    number, unit, _ = match.groups()
    power = " kmgt".index(unit.lower() or " ")
    return int(float(number) * 1024**power)


def check_labels(value: Any) -> Any:
    """A list of class names, ``{id: name}`` (made a list), or the path of a labels file."""
    value = fspath(value)
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise invalid("must be a list of class names or the path of a labels file")
        return value
    if isinstance(value, Mapping):
        # Ultralytics writes class names as {0: person, 1: bicycle, ...}.
        if any(isinstance(k, bool) for k in value) or set(value) != set(range(len(value))):
            raise invalid("a mapping of labels must have the keys 0..N-1 (class ids)")
        value = [value[i] for i in range(len(value))]
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise invalid("must be a non-empty list of class names (strings)")
        return list(value)
    raise invalid("must be a list of class names or the path of a labels file")


def check_input_size(value: Any) -> Any:
    """One integer (a square input) or ``[height, width]``."""

    def ok(n: Any) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16384

    if value is None or ok(value):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and all(ok(n) for n in value):
        return list(value)
    raise invalid("must be one integer or a list [height, width] of integers in 1..16384")


def check_providers(value: Any) -> Any:
    """``"auto"`` (any case), a list of provider names, or one name (made a list)."""
    if isinstance(value, str):
        return "auto" if value.strip().lower() == "auto" else [value.strip()]
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise invalid("must be 'auto' or a non-empty list of ONNX Runtime provider names")


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `server:` with every key commented out parses as null; treat it as an empty section.
        if isinstance(data, Mapping):
            sections = {
                name
                for name, field in cls.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            }
            return {k: v for k, v in data.items() if not (k in sections and v is None)}
        return data


def no_zero_floor(value: Any) -> Any:
    """A minimum of 0 replicas/instances means scale-to-zero, which has its own switch."""
    if value == 0 and not isinstance(value, bool):
        raise invalid("must be >= 1; to drop to zero when idle, set scale_to_zero: true")
    return value
