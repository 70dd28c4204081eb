"""Bad candidates for the rollout tests: the demo classifier made slow, or made to fail live.

Both keep the demo digits classifier's graph and outputs and add a branch that contributes an
exact zero to the logits, so evaluation-style checks on the demo digits still pass:

* :func:`make_slow_classifier` runs a chain of large MatMuls on the input first (about 100 ms
  per image on one thread). The chain depends on the input, so ONNX Runtime cannot fold it away.
* :func:`make_bright_failing_classifier` gathers from a 2-entry table at an index computed from
  the image's mean brightness: a dark image (the demo digits, white strokes on black) reads
  index 0, a bright one goes out of bounds and the model fails at run time (HTTP 500), the way a
  version tested on one kind of data breaks on live traffic of another kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from platform_support import DIGITS

__all__ = ["make_bright_failing_classifier", "make_slow_classifier"]

_LOGITS = "logits"


def _with_zero_branch(
    path: str | Path,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    zero: str,
    description: str,
) -> Path:
    """The demo classifier whose logits get ``+ zero`` (a ``[batch, 1]`` tensor of zeros)."""
    model = onnx.load(str(DIGITS))
    graph = model.graph
    for node in graph.node:  # rename the original output; the Add below produces ``logits``
        node.output[:] = ["raw_logits" if o == _LOGITS else o for o in node.output]
    graph.node.extend([*nodes, helper.make_node("Add", ["raw_logits", zero], [_LOGITS])])
    graph.initializer.extend(initializers)
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = description
    onnx.checker.check_model(model)
    out = Path(path)
    onnx.save(model, str(out))
    return out


def make_slow_classifier(path: str | Path, matmuls: int = 48, width: int = 1024) -> Path:
    """The demo classifier plus ``matmuls`` products of ``[96, width] x [width, width]`` per image.

    Each product is ``2 * 96 * width**2`` flops (200 M at 1024): the default 48 take about
    100 ms per image on one core, 50 ms on the two threads a replica gets on two cores.
    """
    rng = np.random.default_rng(0)
    # Entries of +-1/width keep the values bounded however long the chain, so 0 * x stays 0.
    inits = [
        numpy_helper.from_array(np.array([0, 96, 32], dtype=np.int64), "slow_shape"),
        numpy_helper.from_array(
            (rng.choice([-1.0, 1.0], size=(32, width)) / 32).astype(np.float32), "slow_in"
        ),
        numpy_helper.from_array(
            (rng.choice([-1.0, 1.0], size=(width, width)) / width).astype(np.float32), "slow_w"
        ),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "slow_axes"),
        numpy_helper.from_array(np.zeros((), dtype=np.float32), "slow_zero"),
    ]
    nodes = [
        # [batch, 3, 32, 32] -> [batch, 96, 32] -> [batch, 96, width]
        helper.make_node("Reshape", ["images", "slow_shape"], ["slow_rows"]),
        helper.make_node("MatMul", ["slow_rows", "slow_in"], ["slow_0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{matmuls}", "slow_axes"], ["slow_sum"], keepdims=1),
        helper.make_node("Reshape", ["slow_sum", "slow_col"], ["slow_flat"]),
        helper.make_node("Mul", ["slow_flat", "slow_zero"], ["slow_nothing"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "slow_col"))
    about = "demo digits classifier with a slow zero branch (rollout tests)"
    return _with_zero_branch(path, nodes, inits, "slow_nothing", about)


def make_bright_failing_classifier(path: str | Path, threshold: float = 0.5) -> Path:
    """The demo classifier that fails on images whose mean pixel (0..1) is >= ``threshold``."""
    inits = [
        numpy_helper.from_array(np.array(1.0 / threshold, dtype=np.float32), "gate_scale"),
        numpy_helper.from_array(np.zeros(1, dtype=np.float32), "gate_table"),
    ]
    nodes = [
        # mean brightness -> index: 0 below the threshold, >= 1 (out of bounds) at or above it
        helper.make_node("ReduceMean", ["images"], ["gate_mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["gate_mean", "gate_scale"], ["gate_scaled"]),
        helper.make_node("Floor", ["gate_scaled"], ["gate_floor"]),
        helper.make_node("Cast", ["gate_floor"], ["gate_index"], to=onnx.TensorProto.INT64),
        helper.make_node("Gather", ["gate_table", "gate_index"], ["gate_value"], axis=0),
        helper.make_node("Unsqueeze", ["gate_value", "gate_unsq"], ["gate_nothing"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "gate_unsq"))
    about = "demo digits classifier that fails on bright images (rollout tests)"
    return _with_zero_branch(path, nodes, inits, "gate_nothing", about)
