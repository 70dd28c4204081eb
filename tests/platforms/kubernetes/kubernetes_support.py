"""Helpers for the ``cvdeploy build`` tests: a build in a temp folder, and the two validators."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from cvdeploy.config import Config
from cvdeploy.platforms.kubernetes import BuildResult, plan_for_model, write_build

DATA = Path(__file__).resolve().parent / "data"
DEMO = Path(__file__).resolve().parents[3] / "cvdeploy" / "demo"
DIGITS = DEMO / "digits_classifier.onnx"
DETECTOR = DEMO / "shapes_detector.onnx"
#: The Kubernetes version the manifests are validated for (kubernetes-validate's schemas).
K8S_VERSION = "1.30"


def write_config(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / "cvdeploy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def build(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    model: Path | str = DIGITS,
    **options: Any,
) -> BuildResult:
    """``cvdeploy build`` of ``model`` with ``config`` into ``tmp_path / 'out'``."""
    loaded = Config(write_config(tmp_path, config)) if config is not None else Config()
    plan = plan_for_model(str(model), loaded, **options)
    return write_build(plan, tmp_path / "out")


def load_yaml(path: Path) -> dict[str, Any]:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert len(documents) == 1, path
    document: dict[str, Any] = documents[0]
    return document


def validate_k8s(document: dict[str, Any]) -> None:
    """kubernetes-validate, strict: unknown fields are errors, as ``kubectl --validate=strict``."""
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    # Strict field validation (see data/README.md): objects with listed properties close up.
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _strict(value) for key, value in schema.items()}
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@cache
def kserve_validator() -> jsonschema.protocols.Validator:
    """A validator for KServe's InferenceService (v1beta1), from the CRD kept in data/."""
    schema = json.loads((DATA / "inferenceservice-v1beta1.schema.json").read_text("utf-8"))
    strict = _strict(schema)
    # OpenAPI v3 schemas in CRDs are a subset of JSON Schema draft 4/7 keywords.
    jsonschema.Draft7Validator.check_schema(strict)
    validator: jsonschema.protocols.Validator = jsonschema.Draft7Validator(strict)
    return validator


def validate_kserve(document: dict[str, Any]) -> None:
    kserve_validator().validate(document)
