"""Per-request prediction parameters, validated at the edge with messages that say the fix."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cvdeploy.errors import InvalidParameterError

__all__ = ["PredictParams"]

_MAX_DET_LIMIT: Final = 10_000


@dataclass(frozen=True, slots=True)
class PredictParams:
    """Thresholds for one prediction.

    Attributes:
        conf: minimum score a detection (or nothing, for classification) must exceed.
        iou: NMS IoU threshold; a box overlapping a better one of its class by more is dropped.
        max_det: most detections returned per image.
        top_k: classes returned by a classifier.
    """

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    top_k: int = 5

    def __post_init__(self) -> None:
        for name in _BOUNDS:
            _check(name, getattr(self, name))

    def merged(self, overrides: Mapping[str, object]) -> PredictParams:
        """A copy with ``overrides`` applied; values may be numbers or query-string text.

        Raises:
            InvalidParameterError: an unknown key, or a value of the wrong type or range.
        """
        if not overrides:
            return self
        changes: dict[str, float | int] = {}
        for key, raw in overrides.items():
            if key not in _BOUNDS:
                raise InvalidParameterError(
                    f"unknown parameter {key!r}; allowed parameters: {', '.join(_BOUNDS)}"
                )
            changes[key] = _coerce(key, raw)
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# name -> (integer?, low, high or None)
_BOUNDS: Final[dict[str, tuple[bool, float, float | None]]] = {
    "conf": (False, 0.0, 1.0),
    "iou": (False, 0.0, 1.0),
    "max_det": (True, 1, _MAX_DET_LIMIT),
    "top_k": (True, 1, None),
}


def _allowed(name: str) -> str:
    integer, low, high = _BOUNDS[name]
    kind = "an integer" if integer else "a number"
    if high is None:
        return f"{kind} >= {low:g}"
    return f"{kind} between {low:g} and {high:g}"


def _coerce(name: str, raw: object) -> float | int:
    integer = _BOUNDS[name][0]
    value: float | int
    if isinstance(raw, bool):  # bool is an int subclass; True is never a threshold
        raise _invalid(name, raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise _invalid(name, raw) from None
    elif isinstance(raw, numbers.Integral):
        value = int(raw)
    elif isinstance(raw, numbers.Real):
        number = float(raw)
        if integer and not (math.isfinite(number) and number.is_integer()):
            raise _invalid(name, raw)
        value = int(number) if integer else number
    else:
        raise _invalid(name, raw)
    _check(name, value)
    return value if integer else float(value)


def _check(name: str, value: object) -> None:
    integer, low, high = _BOUNDS[name]
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _invalid(name, value)
    # Written so that NaN fails it: every comparison with NaN is False.
    number = float(value)
    if not (number >= low and (high is None or number <= high)):
        raise _invalid(name, value)


def _invalid(name: str, value: object) -> InvalidParameterError:
    return InvalidParameterError(
        f"invalid value {value!r} for parameter {name!r}: expected {_allowed(name)}"
    )
