"""The image's ``requirements.txt``: cvdeploy's runtime dependencies pinned as installed here.

Pinning the whole dependency closure (not only cvdeploy's direct requirements) at the versions
this environment runs makes the image reproducible and tested: what serves in the container is
what served in the tests here. Environment markers are evaluated for the image (CPython 3.11 on
Linux), not for this host, so a build on macOS still lists what the Linux image needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata

from cvdeploy.errors import NotAvailableError

__all__ = ["IMAGE_MARKERS", "PinnedRequirement", "pinned_requirements", "render_requirements"]

#: The marker environment of the ``python:3.11-slim`` image (x86_64 Linux, CPython).
IMAGE_MARKERS: dict[str, str] = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.0",
    "python_version": "3.11",
    "sys_platform": "linux",
}


def _canonical(name: str) -> str:
    # PEP 503 normalisation: "PyYAML", "pyyaml" and "py_yaml" are one project.
    return re.sub(r"[-_.]+", "-", name).lower()


class PinnedRequirement:
    """One line of the requirements file: ``name==version``, or unpinned when not installed."""

    def __init__(self, name: str, version: str | None, specifier: str = "") -> None:
        self.name = name
        self.version = version
        self.specifier = specifier

    @property
    def line(self) -> str:
        if self.version is not None:
            return f"{self.name}=={self.version}"
        # Needed in the image but absent here (a Linux-only dependency built on another OS).
        return f"{self.name}{self.specifier}  # not installed where the image was built"

    def __repr__(self) -> str:
        return f"PinnedRequirement({self.line!r})"


def pinned_requirements(
    root: str = "cvdeploy", extras: Iterable[str] = ()
) -> list[PinnedRequirement]:
    """Every distribution ``root`` needs at run time, with the version installed here.

    Args:
        root: The distribution whose closure is pinned (itself excluded).
        extras: Extras of ``root`` to include, e.g. ``("gpu",)``.

    Raises:
        NotAvailableError: ``root`` is not installed as a distribution (e.g. run from a bare
            source tree), so its requirements cannot be read.
    """
    from packaging.requirements import Requirement

    try:
        metadata.distribution(root)
    except metadata.PackageNotFoundError:
        raise NotAvailableError(
            f"{root} is not installed as a package, so its dependencies cannot be pinned; "
            f"install it (pip install -e . in a checkout) and build again"
        ) from None
    found: dict[str, PinnedRequirement] = {}
    # (distribution, extras asked of it); a distribution is revisited when new extras appear.
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (key := (_canonical(name), wanted)) in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # pinned unpinned below; its own requirements are unknown here
        for text in requires:
            req = Requirement(text)
            contexts = [{**IMAGE_MARKERS, "extra": extra} for extra in ("", *sorted(wanted))]
            if req.marker is not None and not any(req.marker.evaluate(c) for c in contexts):
                continue
            dep = _canonical(req.name)
            if dep not in found:
                try:
                    dist = metadata.distribution(req.name)
                    found[dep] = PinnedRequirement(dist.metadata["Name"], dist.version)
                except metadata.PackageNotFoundError:
                    found[dep] = PinnedRequirement(req.name, None, str(req.specifier))
            todo.append((req.name, frozenset(req.extras)))
    found.pop(_canonical(root), None)
    return sorted(found.values(), key=lambda r: _canonical(r.name))


def render_requirements(requirements: Iterable[PinnedRequirement], header: str) -> str:
    """The requirements file's text: a comment header, then one sorted line per distribution."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.extend(r.line for r in requirements)
    return "\n".join(lines) + "\n"
