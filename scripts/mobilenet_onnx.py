"""Build a MobileNetV2-style image classifier as ONNX with ``onnx.helper`` and numpy only.

No torch and no download: the weights are seeded random numbers (He-scaled so activations stay
in range), batch norm is already folded into each convolution (Conv + bias + Clip(0, 6)), the
depthwise convolutions have ``group == channels``. Used by the benchmarks as a "small classifier"
whose cost is dominated by per-request overhead rather than compute.

    from mobilenet_onnx import build_mobilenet_classifier
    build_mobilenet_classifier("mobilenet.onnx")             # [b,3,224,224] -> [b,1000]

or ``python scripts/mobilenet_onnx.py OUT.onnx [--width 0.35] [--depth 1.0] [--num-classes 1000]``.
Input ``images`` float32 ``[batch,3,224,224]``; output ``logits`` float32 ``[batch,num_classes]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the lowest IR version that carries opset 17; loads in older runtimes too

# MobileNetV2 inverted-residual settings: (expansion t, output channels c, repeats n, stride s).
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels as torchvision's MobileNetV2 does (multiple of 8, never below 90 %)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class _Builder:
    """Accumulates nodes and initializers for one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def _init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int, group: int = 1, act: bool = True
    ) -> str:
        name = self._name("conv")
        fan_in = (cin // group) * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
        b = self.rng.normal(0.0, 0.01, (cout,))
        out = f"{name}_out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._init(f"{name}.weight", w), self._init(f"{name}.bias", b)],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                group=group,
            )
        )
        if not act:
            return out
        relu = f"{name}_relu6"
        self.nodes.append(helper.make_node("Clip", [out, "clip_min", "clip_max"], [relu]))
        return relu

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out


def build_mobilenet_model(
    num_classes: int = 1000,
    width: float = 0.35,
    seed: int = 0,
    depth: float = 1.0,
    last_channels: int = 1280,
    image_size: int = 224,
) -> onnx.ModelProto:
    """Return the model in memory. ``depth`` scales each stage's repeat count (at least 1)."""
    g = _Builder(seed)
    g.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"))
    g.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "clip_max"))

    cin = _make_divisible(32 * width)
    x = g.conv("images", 3, cin, 3, 2)
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        cout = _make_divisible(c * width)
        for i in range(max(1, round(n * depth))):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = g.conv(x, cin, hidden, 1, 1) if t != 1 else x
            y = g.conv(y, hidden, hidden, 3, stride, group=hidden)
            y = g.conv(y, hidden, cout, 1, 1, act=False)
            x = g.add(x, y) if stride == 1 and cin == cout else y
            cin = cout
    last = (
        max(last_channels, _make_divisible(last_channels * width)) if width > 1 else last_channels
    )
    x = g.conv(x, cin, last, 1, 1)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    fc_w = g.rng.normal(0.0, np.sqrt(1.0 / last), (num_classes, last))
    g.inits.append(numpy_helper.from_array(fc_w.astype(np.float32), "fc.weight"))
    g.inits.append(numpy_helper.from_array(np.zeros(num_classes, np.float32), "fc.bias"))
    g.nodes.append(
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], transB=1)
    )

    graph = helper.make_graph(
        g.nodes,
        "mobilenet_v2_random",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, ["batch", 3, image_size, image_size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cvdeploy-scripts",
        ir_version=IR_VERSION,
    )
    names = {i: f"class_{i}" for i in range(num_classes)}
    helper.set_model_props(
        model,
        {
            "task": "classify",
            "names": repr(names),
            "imgsz": f"[{image_size}, {image_size}]",
            "description": (
                f"MobileNetV2-style classifier, width {width}, depth {depth}, random weights "
                f"(seed {seed}); for benchmarks only, its predictions mean nothing"
            ),
        },
    )
    onnx.checker.check_model(model)
    return model


def build_mobilenet_classifier(
    path: str | Path,
    num_classes: int = 1000,
    width: float = 0.35,
    seed: int = 0,
    depth: float = 1.0,
    last_channels: int = 1280,
) -> Path:
    """Write the classifier to ``path`` and return the path. See ``build_mobilenet_model``.

    The defaults (standard MobileNetV2 0.35 at 224) run in about 1.1-1.3 ms per image at batch 1
    with ONNX Runtime on 2 CPU threads on this project's machine; ``depth=0.5`` about 0.9 ms.
    """
    model = build_mobilenet_model(
        num_classes=num_classes, width=width, seed=seed, depth=depth, last_channels=last_channels
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=float, default=1.0)
    args = parser.parse_args()
    path = build_mobilenet_classifier(
        args.out, args.num_classes, args.width, args.seed, depth=args.depth
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
