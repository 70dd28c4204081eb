"""Write a build context: the folder ``docker build`` and ``kubectl apply -f`` read.

::

    OUT/
      Dockerfile, .dockerignore, requirements.txt
      config/cvdeploy.yaml        the serving config baked into the image (+ labels.txt)
      model/<file>.onnx           only when the model is baked in (--bake, the default)
      wheels/cvdeploy-*.whl       only with --wheel
      k8s/deployment.yaml, service.yaml, hpa.yaml    kubectl apply -f OUT/k8s/
      kserve/inferenceservice.yaml                   or this instead, on a KServe cluster
      .cvdeploy-build             marks the folder as cvdeploy's and lists what it wrote

For an endpoint (:func:`write_endpoint_build`) each served entity gets its own image context
in ``OUT/<endpoint>-<entity>/`` and its ``k8s/<endpoint>-<entity>-deployment.yaml`` and
``-hpa.yaml``; ``k8s/service.yaml`` selects them all; ``kserve/`` holds one InferenceService, or
``1-stable.yaml`` and ``2-canary.yaml`` for a two-way split.

A rebuild into the same folder replaces what an earlier build wrote (a stale model must never be
baked by accident) but refuses a non-empty folder that cvdeploy did not write.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from cvdeploy import __version__
from cvdeploy.errors import ConfigError
from cvdeploy.platforms.kubernetes.dockerfile import render_dockerfile, render_dockerignore
from cvdeploy.platforms.kubernetes.endpoint import EndpointBuildPlan, endpoint_service
from cvdeploy.platforms.kubernetes.kserve import inference_service
from cvdeploy.platforms.kubernetes.manifests import (
    deployment,
    dump_all,
    horizontal_pod_autoscaler,
    service,
)
from cvdeploy.platforms.kubernetes.plan import BuildPlan
from cvdeploy.platforms.kubernetes.requirements import pinned_requirements, render_requirements

__all__ = ["MARKER", "BuildResult", "write_build", "write_endpoint_build"]

MARKER = ".cvdeploy-build"


@dataclass(frozen=True)
class BuildResult:
    """What was written, relative to ``out``, in writing order."""

    out: Path
    files: tuple[str, ...]
    notes: tuple[str, ...]
    #: The image contexts written: ``{folder relative to out: image reference}``.
    images: dict[str, str]


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the build context")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise ConfigError(
            f"--out {out} is not empty and was not written by cvdeploy build; "
            "choose an empty or new folder"
        )
    if marker.is_file():
        # The marker lists the top-level entries the last build wrote: remove those only.
        for line in marker.read_text(encoding="utf-8").splitlines()[1:]:
            path = out / line
            if line and "/" not in line and line not in (".", ".."):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)


class _Writer:
    """Writes files under ``out`` and remembers them, for the result and the marker."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[str] = []

    def put(self, relative: str, text: str) -> None:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files.append(relative)

    def copy(self, source: Path, relative: str) -> None:
        path = self.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        self.files.append(relative)

    def finish(self) -> tuple[str, ...]:
        tops = sorted({f.split("/", 1)[0] for f in self.files})
        header = f"written by cvdeploy {__version__}; `cvdeploy build` may replace these:"
        (self.out / MARKER).write_text("\n".join([header, *tops]) + "\n", encoding="utf-8")
        return (MARKER, *self.files)


def _requirements() -> str:
    return render_requirements(
        pinned_requirements(),
        header=(
            f"cvdeploy {__version__}'s runtime dependencies, pinned by `cvdeploy build` at the\n"
            "versions installed where it ran (markers evaluated for CPython 3.11 on Linux)."
        ),
    )


def _image_context(writer: _Writer, plan: BuildPlan, prefix: str, requirements: str) -> None:
    writer.put(f"{prefix}Dockerfile", render_dockerfile(plan))
    writer.put(f"{prefix}.dockerignore", render_dockerignore())
    writer.put(f"{prefix}requirements.txt", requirements)
    writer.put(f"{prefix}config/cvdeploy.yaml", yaml.safe_dump(plan.serve_config, sort_keys=False))
    if plan.labels_file is not None:
        writer.copy(plan.labels_file, f"{prefix}config/labels.txt")
    if plan.bake:
        writer.copy(plan.served.source, f"{prefix}model/{plan.served.source.name}")
    if plan.wheel is not None:
        writer.copy(plan.wheel, f"{prefix}wheels/{plan.wheel.name}")


def write_build(plan: BuildPlan, out: Path) -> BuildResult:
    """Write the Dockerfile, its context and the manifests of one model under ``out``.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty folder cvdeploy did not write.
        NotAvailableError: cvdeploy is not installed as a package (nothing to pin).
    """
    requirements = _requirements()
    _prepare(out)
    writer = _Writer(out)
    _image_context(writer, plan, "", requirements)
    writer.put("k8s/deployment.yaml", dump_all([deployment(plan)]))
    writer.put("k8s/service.yaml", dump_all([service(plan)]))
    writer.put("k8s/hpa.yaml", dump_all([horizontal_pod_autoscaler(plan)]))
    writer.put("kserve/inferenceservice.yaml", dump_all([inference_service(plan)]))
    return BuildResult(out, writer.finish(), plan.notes, {".": plan.image})


def write_endpoint_build(built: EndpointBuildPlan, out: Path) -> BuildResult:
    """Write one image context per served entity and the endpoint's manifests under ``out``.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty folder cvdeploy did not write.
        NotAvailableError: cvdeploy is not installed as a package (nothing to pin).
    """
    requirements = _requirements()
    _prepare(out)
    writer = _Writer(out)
    images: dict[str, str] = {}
    for plan in built.plans:
        _image_context(writer, plan, f"{plan.app}/", requirements)
        images[plan.app] = plan.image
        writer.put(f"k8s/{plan.app}-deployment.yaml", dump_all([deployment(plan)]))
        writer.put(f"k8s/{plan.app}-hpa.yaml", dump_all([horizontal_pod_autoscaler(plan)]))
    writer.put("k8s/service.yaml", dump_all([endpoint_service(built)]))
    pair = built.kserve_pair
    if pair is not None:
        stable, canary = pair
        if canary is None:
            writer.put(
                "kserve/inferenceservice.yaml",
                dump_all([inference_service(stable, name=built.app)]),
            )
        else:
            writer.put(
                "kserve/1-stable.yaml", dump_all([inference_service(stable, name=built.app)])
            )
            writer.put(
                "kserve/2-canary.yaml",
                dump_all(
                    [
                        inference_service(
                            canary, name=built.app, canary_percent=built.traffic[canary.app]
                        )
                    ]
                ),
            )
    return BuildResult(out, writer.finish(), built.notes, images)
