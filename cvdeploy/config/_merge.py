"""Merging of config mappings: layers (file < env < kwargs) and the top-level section aliases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HOISTED", "deep_merge", "hoist_sections", "short"]

HOISTED = ("monitoring", "ci_cd")


def hoist_sections(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Move top-level ``monitoring:``/``ci_cd:`` into ``deployment.*``.

    Returns the merged document and a list of ``(dotted path, message)`` problems: a key set in
    both places with different values, or a section that is not a mapping.
    """
    out = dict(data)
    problems: list[tuple[str, str]] = []
    if not any(name in out for name in HOISTED):
        return out, problems
    deployment = out.get("deployment")
    if deployment is None:
        deployment = {}
    if not isinstance(deployment, Mapping):
        return out, problems  # reported by the schema as "deployment: must be a mapping"
    deployment = dict(deployment)
    for name in HOISTED:
        if name not in out:
            continue
        top = out.pop(name)
        inner = deployment.get(name)
        if top is None:
            continue
        if not isinstance(top, Mapping):
            problems.append((name, f"{short(top)} is invalid: must be a mapping of keys"))
            continue
        if inner is None:
            deployment[name] = dict(top)
        elif isinstance(inner, Mapping):
            deployment[name] = _merge_same(inner, top, f"deployment.{name}", name, problems)
    out["deployment"] = deployment
    return out, problems


def _merge_same(
    canonical: Mapping[str, Any],
    other: Mapping[str, Any],
    canonical_path: str,
    other_path: str,
    problems: list[tuple[str, str]],
) -> dict[str, Any]:
    merged = dict(canonical)
    for key, value in other.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], Mapping) and isinstance(value, Mapping):
            merged[key] = _merge_same(
                merged[key], value, f"{canonical_path}.{key}", f"{other_path}.{key}", problems
            )
        elif merged[key] != value:
            problems.append(
                (
                    f"{other_path}.{key}",
                    f"set to {short(value)} here and to {short(merged[key])} at "
                    f"{canonical_path}.{key}; keep one of the two",
                )
            )
    return merged


def short(value: Any, limit: int = 80) -> str:
    """A value as the user would recognise it from YAML, cut to ``limit`` characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
