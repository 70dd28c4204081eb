"""docs/configuration.md stays true: its example parses and it documents every key."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from cvdeploy.config import AlertRule, Config, RootConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_yaml_example_in_docs_parses(doc, write):
    example = re.search(r"```yaml\n(.*?)```", doc, re.DOTALL)
    assert example is not None
    config = Config(write(example.group(1)))
    assert config.model.weights_path == "models/yolov8n.onnx"
    assert config.deployment.limits.max_body_bytes == 20 * 1024 * 1024


def test_docs_document_every_key(doc):
    def keys(model: type[pydantic.BaseModel], path: str):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                yield f"### `{path}{name}`"  # a section has a heading
                yield from keys(annotation, f"{path}{name}.")
            else:
                yield f"| `{name}` |"  # a value has a row

    expected = [*keys(RootConfig, ""), *keys(AlertRule, "deployment.monitoring.alerts[].")]
    missing = [text for text in expected if text not in doc]
    assert not missing
