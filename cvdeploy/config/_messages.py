"""Turning validation failures into one message a person can act on.

Every problem names the dotted key path (as the user wrote it), the bad value and the fix; unknown
keys suggest the nearest valid key. All problems of one config are reported together.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from cvdeploy.config._merge import HOISTED, short

__all__ = [
    "Loc",
    "Locator",
    "Problem",
    "annotation_at",
    "dotted",
    "from_error",
    "is_section",
    "render",
    "unknown_key",
]

Loc = tuple[str | int, ...]
#: Maps a canonical location to (the location as the user wrote it, where the value came from).
Locator = Callable[[Loc], tuple[Loc, str | None]]

# Keys people bring from other tools (Ultralytics, the seed's ModelServer arguments).
_ALIASES = {
    "model_path": "weights_path",
    "weights": "weights_path",
    "path": "weights_path",
    "type": "model_type",
    "task": "model_type",
    "conf": "conf_threshold",
    "iou": "iou_threshold",
    "imgsz": "input_size",
    "names": "labels",
    "classes": "labels",
}
_SECRET_KEYS = frozenset({"token"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, what, and where the value came from."""

    path: str
    text: str
    origin: str | None = None

    def __str__(self) -> str:
        suffix = f" (from {self.origin})" if self.origin else ""
        return f"{self.path}: {self.text}{suffix}"


def dotted(loc: Iterable[str | int]) -> str:
    """``("deployment", "monitoring", "alerts", 0)`` -> ``deployment.monitoring.alerts[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _strip(annotation: Any) -> Any:
    """``X | None`` -> ``X`` and ``Annotated[X, ...]`` -> ``X``; other unions are kept."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def is_section(annotation: Any) -> TypeGuard[type[BaseModel]]:
    """Whether ``annotation`` is a section (a pydantic model) rather than a value."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def annotation_at(root: type[BaseModel], loc: Loc) -> Any:
    """The type found at ``loc`` inside ``root`` (a model, list, dict or value type), or None."""
    annotation: Any = root
    for part in loc:
        annotation = _strip(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(part, int):
            if origin is not list:
                return None
            annotation = typing.get_args(annotation)[0]
        elif is_section(annotation):
            field = annotation.model_fields.get(part)
            if field is None:
                return _hoisted(annotation, part)
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return None
    return _strip(annotation)


def _hoisted(model: type[BaseModel], key: str) -> Any:
    # The top-level `monitoring:`/`ci_cd:` are the same sections as `deployment.*`.
    deployment = model.model_fields.get("deployment")
    section = deployment.annotation if deployment is not None else None
    if key in HOISTED and is_section(section):
        return section.model_fields[key].annotation
    return None


def valid_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    annotation = annotation_at(root, loc)
    if not is_section(annotation):
        return []
    keys = list(annotation.model_fields)
    if "deployment" in keys:
        keys += list(HOISTED)
    return keys


def unknown_key(root: type[BaseModel], parent: Loc, key: str | int) -> str:
    """``unknown key; did you mean 'port'? Valid keys: host, port, ...``."""
    valid = valid_keys(root, parent)
    name = str(key)
    guess = _ALIASES.get(name.lower()) if _ALIASES.get(name.lower()) in valid else None
    if guess is None:
        close = difflib.get_close_matches(name.lower(), valid, n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f"; did you mean '{guess}'?" if guess else "."
    if guess is None and not parent:
        # A deployment section written at the top level (`server:` instead of `deployment:`).
        inner = valid_keys(root, ("deployment",))
        if name in inner:
            hint = f"; did you mean 'deployment.{name}'? It belongs under 'deployment:'."
    return f"unknown key{hint} Valid keys: {', '.join(valid)}" if valid else "unknown key"


def _requirement(root: type[BaseModel], error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    messages = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string (quote it in YAML)",
        "string_too_short": "must not be empty",
        "list_type": "must be a list, e.g. [a, b] or one '- item' per line",
        "greater_than_equal": "must be >= {ge}",
        "greater_than": "must be > {gt}",
        "less_than_equal": "must be <= {le}",
        "less_than": "must be < {lt}",
        "too_short": "must have at least {min_length} item(s)",
        "too_long": "must have at most {max_length} item(s)",
        "string_too_long": "must be at most {max_length} characters",
    }
    if kind in messages:
        return messages[kind].format(**ctx)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        keys = valid_keys(root, tuple(error["loc"]))
        return "must be a mapping of keys" + (f" ({', '.join(keys)})" if keys else "")
    if kind == "literal_error":
        options = [
            o.strip("'") for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(", ")
        ]
        value = error["input"]
        close = difflib.get_close_matches(str(value).lower(), options, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"must be one of {', '.join(options)}{hint}"
    return str(error["msg"]).removeprefix("Value error, ")


def from_error(
    root: type[BaseModel], error: ErrorDetails, where: Locator | None = None, prefix: Loc = ()
) -> Problem:
    """One pydantic error -> one Problem.

    ``where(loc) -> (display loc, origin)`` maps a canonical location to the place the user
    wrote the value (a top-level section, an environment variable, a keyword argument).
    """
    loc: Loc = tuple(error["loc"])
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    # pydantic locates a bad mapping key as (..., key, "[key]").
    is_key = bool(loc) and loc[-1] == "[key]"
    loc = loc[:-1] if is_key else loc
    if error["type"] == "cvdeploy" and "field" in ctx:
        # A cross-field check names the field it blames, e.g. max_replicas.
        loc += (str(ctx["field"]),)
    display, origin = where(loc) if where is not None else (loc, None)
    path = dotted(prefix + display)
    kind = error["type"]
    if kind == "extra_forbidden":
        return Problem(path, unknown_key(root, loc[:-1], loc[-1]), origin)
    if kind == "missing":
        return Problem(path, "required key is missing; add it", origin)
    if kind == "cvdeploy" and "field" in ctx and "value" not in ctx:
        return Problem(path, str(error["msg"]), origin)
    value = ctx.get("value", error.get("input"))
    shown = "'***'" if loc and loc[-1] in _SECRET_KEYS else short(value)
    shown = f"key {shown}" if is_key else shown
    return Problem(path, f"{shown} is invalid: {_requirement(root, error)}", origin)


def render(problems: Sequence[Problem], header: str) -> str:
    """The text of a ConfigError: ``header`` (naming the file), then one line per problem."""
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    lines = [f"{header}: {count}"]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)
