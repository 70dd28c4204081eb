"""Train the demo digits classifier and export ``cvdeploy/demo/digits_classifier.onnx``.

Data: scikit-learn's bundled ``load_digits`` (1,797 8x8 greyscale digits, values 0-16; no
download). Each digit is scaled to 0-255, upsampled to 32x32 and replicated to 3 channels, so a
served PNG/JPEG of a digit goes through ordinary preprocessing (resize to 32x32, RGB, /255).
A small CNN is trained in torch on 80 % (stratified, seed 0) and scored on the held-out 20 %.

Model: input ``images`` float32 ``[batch,3,32,32]`` RGB in [0,1]; output ``logits`` float32
``[batch,10]`` (raw logits, no softmax); opset 17; metadata_props in Ultralytics' style
(task, names, imgsz, description) plus cvdeploy.resize/mean/std. Also writes one held-out image
per class to ``cvdeploy/demo/images/digit_<label>.png`` (32x32 RGB, white on black).

    .train-venv/bin/python scripts/make_digits_classifier.py [--epochs 30]

Needs torch, scikit-learn, onnx, onnxruntime, Pillow (the training venv).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "cvdeploy" / "demo"
SIZE = 32
INTERPOLATIONS = (Image.BILINEAR, Image.NEAREST, Image.BICUBIC)


def to_uint8(digit: np.ndarray) -> np.ndarray:
    """8x8 values 0-16 -> 8x8 uint8 0-255 (white digit on black, as in the data)."""
    return np.round(digit * (255.0 / 16.0)).astype(np.uint8)


def upsample(digit: np.ndarray, resample: int = Image.BILINEAR) -> np.ndarray:
    """8x8 digit -> 32x32x3 uint8 RGB image."""
    img = Image.fromarray(to_uint8(digit), mode="L").resize((SIZE, SIZE), resample)
    return np.asarray(img.convert("RGB"))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """NHWC uint8 -> NCHW float32 in [0,1], as the server's preprocessing produces."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def build_model() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *block(3, 16),  # 16x16
        *block(16, 32),  # 8x8
        *block(32, 64),  # 4x4
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def shift(batch: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (one offset per batch, zero fill)."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    out = torch.zeros_like(batch)
    h, w = batch.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = batch[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export the demo digits classifier.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEMO / "digits_classifier.onnx")
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, random_state=args.seed, stratify=digits.target
    )
    y = digits.target.astype(np.int64)
    # Train on every upsampling filter a user's image might have gone through; test on bilinear.
    x_train = np.concatenate(
        [np.stack([upsample(digits.images[i], r) for i in idx_train]) for r in INTERPOLATIONS]
    )
    y_train = np.tile(y[idx_train], len(INTERPOLATIONS))
    x_test = np.stack([upsample(digits.images[i]) for i in idx_test])
    y_test = y[idx_test]

    model = build_model()
    xt, yt = to_tensor(x_train), torch.from_numpy(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=args.epochs * ((len(xt) + 63) // 64)
    )
    gen = torch.Generator().manual_seed(args.seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), 64):
            b = perm[start : start + 64]
            loss = loss_fn(model(shift(xt[b], gen)), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: loss {total / len(xt):.4f}")

    model.eval()
    with torch.no_grad():
        torch_acc = float((model(to_tensor(x_test)).argmax(1).numpy() == y_test).mean())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(args.out),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(args.out))
    proto.producer_name = "cvdeploy-scripts"
    onnx.helper.set_model_props(
        proto,
        {
            "task": "classify",
            "names": repr({i: str(i) for i in range(10)}),
            "imgsz": f"[{SIZE}, {SIZE}]",
            "description": (
                "cvdeploy demo digits classifier: small CNN trained on scikit-learn load_digits "
                "(8x8 upsampled to 32x32 RGB, white on black); input RGB /255, output raw logits"
            ),
            "cvdeploy.resize": "stretch",
            "cvdeploy.mean": "[0.0, 0.0, 0.0]",
            "cvdeploy.std": "[1.0, 1.0, 1.0]",
        },
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(args.out))

    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": to_tensor(x_test).numpy()})[0]
    onnx_acc = float((logits.argmax(1) == y_test).mean())

    images = DEMO / "images"
    images.mkdir(parents=True, exist_ok=True)
    for label in range(10):
        first = int(np.flatnonzero(y_test == label)[0])
        Image.fromarray(x_test[first]).save(images / f"digit_{label}.png", optimize=True)

    report = {
        "train": len(idx_train),
        "held_out": len(idx_test),
        "epochs": args.epochs,
        "torch_accuracy": round(torch_acc, 4),
        "onnx_accuracy": round(onnx_acc, 4),
        "size_bytes": args.out.stat().st_size,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
