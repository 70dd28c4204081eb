"""Helpers for tests that run the real platform (imported by tests/platforms and tests/cli)."""

from __future__ import annotations

import base64
from pathlib import Path

from cvdeploy.config import ScalingConfig
from cvdeploy.platforms.local.controller import PlatformOptions

DEMO: Path = Path(__file__).resolve().parents[1] / "cvdeploy" / "demo"
DIGITS = DEMO / "digits_classifier.onnx"


def digit_b64(n: int) -> str:
    return base64.b64encode((DEMO / "images" / f"digit_{n}.png").read_bytes()).decode()


def fast_options(home: Path, **scaling: float | bool | int) -> PlatformOptions:
    """Short ticks and delays so scaling is visible within a test."""
    settings = {"idle_timeout_s": 2.0, "upscale_delay_s": 1.0, "downscale_delay_s": 2.0}
    settings.update(scaling)
    return PlatformOptions(
        home=home,
        scaling=ScalingConfig.model_validate(settings),
        tick_s=0.1,
        ready_timeout_s=60.0,
        drain_timeout_s=5.0,
        cold_start_timeout_s=30.0,
        request_timeout_s=30.0,
    )
