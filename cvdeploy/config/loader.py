"""Where a config comes from: file discovery, YAML, environment variables and keyword overrides.

Layers are merged with ``kwargs > env > file > defaults``; every layer is checked on its own for a
key set both at the top level and under ``deployment:`` with different values, then the merged
document is validated once so that all problems are reported together.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cvdeploy.config._merge import HOISTED, deep_merge, hoist_sections
from cvdeploy.config._messages import (
    Loc,
    Problem,
    annotation_at,
    dotted,
    from_error,
    is_section,
    render,
    unknown_key,
)
from cvdeploy.config.schema import RootConfig
from cvdeploy.errors import ConfigError

__all__ = [
    "DISCOVERED_FILES",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "discover",
    "load",
    "read_yaml",
    "validate_section",
]

ENV_PREFIX = "CVDEPLOY_"
#: Names the config file; like CVDEPLOY_HOME it is not a setting, so it is never an override.
ENV_CONFIG = "CVDEPLOY_CONFIG"
#: Looked for in the working directory, in this order, when no path is given.
DISCOVERED_FILES = ("cvdeploy.yaml", "config/deployment_config.yaml")
_NESTING = "__"

M = TypeVar("M", bound=BaseModel)


# ------------------------------------------------------------------------------------ discovery


def discover(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: ``path``, else ``$CVDEPLOY_CONFIG``, else a known file name.

    Returns None when nothing is found (the built-in defaults apply). A file that was asked for
    explicitly and does not exist is an error, never a silent fall-back to the defaults.
    """
    if path is not None:
        return _existing(Path(path), "given as Config(path=...)")
    if environ.get(ENV_CONFIG):
        return _existing(Path(environ[ENV_CONFIG]), f"named by ${ENV_CONFIG}")
    for name in DISCOVERED_FILES:
        candidate = Path(name)
        if candidate.is_file():
            return candidate.resolve()
    return None


def _existing(path: Path, how: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"Config path {path} ({how}) is a directory; name the YAML file in it.")
    if not path.is_file():
        raise ConfigError(
            f"Config file not found: {path.resolve()} ({how}). Fix the path, or leave it out to "
            f"use ./{DISCOVERED_FILES[0]}, ./{DISCOVERED_FILES[1]} or the built-in defaults."
        )
    return path.resolve()


# ------------------------------------------------------------------------------------ YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, typing.Hashable) and key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (first on line {first_line[key]}); "
                "keep one",
                key_node.start_mark,
            )
        if isinstance(key, typing.Hashable):
            first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a config file into a mapping; any failure is a ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text: {exc.reason}.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(path, exc)) from None
    if data is None:  # an empty file, or only comments
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} ({data!r:.40})"
        raise ConfigError(
            f"Invalid cvdeploy configuration in {path}: the top level must be a mapping of "
            f"sections such as 'model:' and 'deployment:', but the file holds {kind}."
        )
    return data


def _yaml_message(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    fix = (
        ""
        if isinstance(exc, yaml.constructor.ConstructorError)
        else " Fix the syntax there (indentation, a missing ':' after a key, or an unclosed "
        "quote or bracket)."
    )
    return f"Invalid YAML in {path}{where}: {problem}.{fix}"


# ------------------------------------------------------------------------------------ layers


@dataclass
class _Layer:
    """One source of settings, with where each of its values came from."""

    data: dict[str, Any]
    #: canonical leaf location -> (location as written, origin label or None for the file)
    leaves: dict[Loc, tuple[Loc, str | None]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add(self, loc: Loc, value: Any, origin: str | None) -> None:
        """Record ``value`` set at ``loc`` (as written) by ``origin``."""
        for leaf in _leaves(loc, value):
            self.leaves[_canonical(leaf)] = (leaf, origin)

    def hoist(self) -> None:
        self.data, conflicts = hoist_sections(self.data)
        for path, text in conflicts:
            _, origin = self.leaves.get(_canonical(tuple(path.split("."))), ((), None))
            self.problems.append(Problem(path, text, origin))


def _leaves(loc: Loc, value: Any) -> list[Loc]:
    if isinstance(value, Mapping) and value:
        return [leaf for k, v in value.items() for leaf in _leaves((*loc, k), v)]
    return [loc]


def _canonical(loc: Loc) -> Loc:
    return ("deployment", *loc) if loc and loc[0] in HOISTED else loc


def _set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        child = data.get(part)
        if not isinstance(child, dict):
            child = data[part] = {}
        data = child
    data[parts[-1]] = value


def _plain(value: Any) -> Any:
    """Models and mappings given as overrides become plain dicts so that they deep-merge."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _file_layer(path: Path) -> _Layer:
    layer = _Layer(read_yaml(path))
    for key, value in layer.data.items():
        layer.add((key,), value, None)
    return layer


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    """Settings from ``CVDEPLOY_<SECTION>__<KEY>...`` variables, values parsed as YAML scalars."""
    layer = _Layer({})
    for name in sorted(environ):
        rest = name[len(ENV_PREFIX) :] if name.startswith(ENV_PREFIX) else ""
        if _NESTING not in rest:  # CVDEPLOY_CONFIG, CVDEPLOY_HOME, ... are not settings
            continue
        parts = rest.lower().split(_NESTING)
        origin = f"environment variable {name}"
        target, error = _resolve(parts)
        if error is not None:
            layer.problems.append(Problem(dotted(parts), error, origin))
            continue
        value = _parse_scalar(environ[name], target)
        _set(layer.data, parts, value)
        layer.add(tuple(parts), value, origin)
    return layer


def _kwargs_layer(overrides: Mapping[str, Any]) -> _Layer:
    layer = _Layer({})
    # Whole sections first, then `a__b__c` keys, so the more specific override wins.
    for key in sorted(overrides, key=lambda k: _NESTING in k):
        parts = key.split(_NESTING)
        origin = f"keyword argument {key}"
        if not all(parts):
            layer.problems.append(
                Problem(key, "empty key between '__' separators; join keys with '__'", origin)
            )
            continue
        value = _plain(overrides[key])
        nested: dict[str, Any] = {}
        _set(nested, parts, value)
        layer.data = deep_merge(layer.data, nested)
        layer.add(tuple(parts), value, origin)
    return layer


def _resolve(parts: list[str]) -> tuple[Any, str | None]:
    """The type an environment path points at, or an error saying why it points nowhere."""
    for i, part in enumerate(parts):
        parent = tuple(parts[:i])
        if not part:
            return None, "empty key; separate keys with exactly two underscores"
        container = annotation_at(RootConfig, parent)
        if typing.get_origin(container) is dict:
            if i != len(parts) - 1:
                return None, f"{dotted(parent)} maps names to values; nothing nests below them"
            return typing.get_args(container)[1], None
        if not is_section(container):
            return None, f"{dotted(parent)} is a value, not a section; remove the extra '__'"
        if annotation_at(RootConfig, (*parent, part)) is None:
            return None, unknown_key(RootConfig, parent, part)
    return annotation_at(RootConfig, tuple(parts)), None


def _parse_scalar(raw: str, target: Any) -> Any:
    """``"9000"`` -> 9000, ``"true"`` -> True, ``"[a, b]"`` -> a list; strings stay strings.

    A value for a text field is kept verbatim when YAML would turn it into something else (a
    token ``0123`` must not become the integer 83).
    """
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is None or isinstance(value, str | list | dict):
        return value
    options = _options(target)
    if str in options and not any(isinstance(value, t) for t in options if t is not str):
        return raw
    return value


def _options(annotation: Any) -> set[type]:
    """The Python types a field accepts (int also for float fields), for ``_parse_scalar``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(arg) for arg in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_options(arg) for arg in typing.get_args(annotation)))
    if annotation is float:
        return {float, int}
    return {annotation} if isinstance(annotation, type) else set()


# ------------------------------------------------------------------------------------ loading


def load(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
    environ: Mapping[str, str],
) -> tuple[RootConfig, Path | None]:
    """Discover, read, merge and validate a config; raises one ConfigError listing every problem.

    Returns the validated document and the file it came from (None for the built-in defaults).
    """
    source = discover(path, environ)
    layers = [_file_layer(source)] if source is not None else []
    layers += [_env_layer(environ), _kwargs_layer(overrides)]
    merged: dict[str, Any] = {}
    problems: list[Problem] = []
    for layer in layers:
        layer.hoist()
        problems += layer.problems
        merged = deep_merge(merged, layer.data)

    def where(loc: Loc) -> tuple[Loc, str | None]:
        # The highest layer that set this key (or a parent of it) decided its value.
        for layer in reversed(layers):
            for end in range(len(loc), 0, -1):
                if loc[:end] in layer.leaves:
                    written, origin = layer.leaves[loc[:end]]
                    return written + loc[end:], origin
        return loc, None

    try:
        root = RootConfig.model_validate(merged)
    except ValidationError as exc:
        problems += [from_error(RootConfig, error, where) for error in exc.errors()]
    if problems:
        header = "Invalid cvdeploy configuration " + (
            f"in {source}" if source is not None else "(no config file; built-in defaults)"
        )
        raise ConfigError(render(problems, header))
    return root, source


def validate_section(model: type[M], data: Any, *, name: str) -> M:
    """Validate one section given in code (e.g. ``ModelServer(batching={...})``).

    Accepts an instance of ``model``, a mapping or None (the defaults); any problem is a
    ConfigError whose lines start with ``name``, e.g. ``batching.max_batch_size: 0 is invalid``.
    """
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(_plain(data) if data is not None else {})
    except ValidationError as exc:
        problems = [from_error(model, error, prefix=(name,)) for error in exc.errors()]
        raise ConfigError(render(problems, f"Invalid {name}")) from None
