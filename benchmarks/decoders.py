"""JPEG decoders (and the letterbox resize) on this machine: which is fastest, by how much.

Decodes a ~640x480 and a ~1920x1080 JPEG (the demo photo, resized and re-encoded at quality 90)
with Pillow, simplejpeg and PyTurboJPEG, plus cvdeploy's ``decode_image`` end to end (header
checks, the EXIF sniff, and for the rotated variant the EXIF read and the transpose). Then times
the resize ``Model.preprocess`` does for a 640 letterbox, with and without Pillow's
``reducing_gap`` pre-reduction. Single thread, median of many runs.

    python benchmarks/decoders.py            # ~20 s
    python benchmarks/decoders.py --quick

Prints a table and writes ``benchmarks/results/decoders.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from cvdeploy.runtime import decode_image
from cvdeploy.runtime.preprocess import letterbox_geometry, resize_rgb

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "decoders.json"
PHOTO = REPO / "cvdeploy" / "demo" / "images" / "china.jpg"
SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}


def make_jpeg(size: tuple[int, int], orientation: int = 1) -> bytes:
    """The demo photo at ``size`` (a synthetic scene if it is missing), quality 90."""
    if PHOTO.exists():
        with Image.open(PHOTO) as im:
            pil = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    else:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        base = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1)
        noise = rng.integers(0, 30, (*base.shape[:2], 3))
        pil = Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 90}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    pil.save(buffer, "JPEG", **options)
    return buffer.getvalue()


Stats = dict[str, float]


def interleaved(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, Stats]:
    """Median and p90 of each function, run in turns so a noisy neighbour hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm caches and lazy imports
    deadline = time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < deadline or min(len(v) for v in samples.values()) < 5:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    stats = {}
    for name, values in samples.items():
        values.sort()
        stats[name] = {
            "median_ms": round(statistics.median(values), 3),
            "p90_ms": round(values[int(len(values) * 0.9)], 3),
            "runs": len(values),
        }
    return stats


def decoders() -> tuple[dict[str, Callable[[bytes], np.ndarray]], dict[str, str]]:
    """Available decoders by name, and why the others are not."""
    found: dict[str, Callable[[bytes], np.ndarray]] = {
        "pillow": lambda data: np.asarray(Image.open(io.BytesIO(data))),
        "simplejpeg": lambda data: simplejpeg.decode_jpeg(data, colorspace="RGB"),
        "simplejpeg (fastdct+fastupsample)": lambda data: simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=True, fastupsample=True
        ),
    }
    missing: dict[str, str] = {}
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        jpeg = TurboJPEG()
        found["pyturbojpeg"] = lambda data: jpeg.decode(data, pixel_format=TJPF_RGB)
    except ImportError:
        missing["pyturbojpeg"] = "PyTurboJPEG is not installed"
    except (OSError, RuntimeError) as exc:  # the Python package is there, libturbojpeg is not
        missing["pyturbojpeg"] = " ".join(str(exc).split())[:200]
    found["cvdeploy decode_image"] = decode_image
    return found, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per case instead of 1.5 s")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.5
    found, missing = decoders()
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "unavailable": missing,
        "decode": {},
        "resize": {},
    }
    print(f"{'image':<24}{'decoder':<36}{'median ms':>10}{'p90 ms':>9}{'MP/s':>8}")
    for label, size in SIZES.items():
        megapixels = size[0] * size[1] / 1e6
        cases = {label: make_jpeg(size), f"{label} EXIF rotated": make_jpeg(size, 6)}
        for case, data in cases.items():
            fns = {
                name: (lambda decode=decode, data=data: decode(data))
                for name, decode in found.items()
                if "rotated" not in case or name == "cvdeploy decode_image"
            }
            for name, stats in interleaved(fns, seconds).items():
                stats["megapixels_per_s"] = round(megapixels / stats["median_ms"] * 1e3, 1)
                stats["bytes"] = len(data)
                results["decode"].setdefault(case, {})[name] = stats
                print(
                    f"{case:<24}{name:<36}{stats['median_ms']:>10.3f}{stats['p90_ms']:>9.3f}"
                    f"{stats['megapixels_per_s']:>8.1f}"
                )
    for name, reason in missing.items():
        print(f"{name}: unavailable ({reason})")

    print(f"\n{'resize to 640 letterbox':<36}{'plain bilinear':>16}{'reducing_gap=1':>16}")
    for label, (width, height) in SIZES.items():
        image = decode_image(make_jpeg((width, height)))
        (new_w, new_h), _, _ = letterbox_geometry(height, width, (640, 640), 32, "full")
        pil = Image.fromarray(image)
        size = (new_w, new_h)
        timed = interleaved(
            {
                "plain": lambda pil=pil, size=size: pil.resize(size, Image.Resampling.BILINEAR),
                "cvdeploy": lambda image=image, size=size: resize_rgb(image, size),
            },
            seconds,
        )
        plain, ours = timed["plain"], timed["cvdeploy"]
        results["resize"][label] = {"to": [new_w, new_h], "plain": plain, "cvdeploy": ours}
        print(
            f"{label + f' -> {new_w}x{new_h}':<36}"
            f"{plain['median_ms']:>13.3f} ms{ours['median_ms']:>13.3f} ms"
        )

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
