"""The Dockerfile's steps, run for real in a fresh virtual environment (no container engine here).

The generated Dockerfile is interpreted, not paraphrased: its COPY lines copy into a folder that
stands for the image's root, its RUN lines run with ``pip`` pointing at a new venv (created
without ``--system-site-packages``) and absolute paths moved under that root, its ENV becomes
the environment, then its CMD serves and its HEALTHCHECK command must succeed. What cannot run
without root or a container engine is skipped and named: ``useradd`` and ``USER``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from kubernetes_support import build

REPO = Path(__file__).resolve().parents[3]
#: Commands a non-root test cannot run; the image runs them as root at build time.
NEEDS_ROOT = ("useradd",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ImageEmulator:
    """Runs a Dockerfile's instructions with ``root`` standing for the image's ``/``."""

    def __init__(self, context: Path, root: Path, python_env: Path) -> None:
        self.context = context
        self.root = root
        self.bin = python_env / "bin"
        self.env: dict[str, str] = {}
        self.workdir = root
        self.skipped: list[str] = []
        self.timings: list[tuple[str, float]] = []

    def rooted(self, token: str) -> str:
        # Absolute container paths live under root; everything else is left alone.
        if token.startswith("/"):
            return str(self.root) + token
        return token

    def _argv(self, argv: list[str]) -> list[str]:
        program = argv[0]
        if (self.bin / program).exists():
            program = str(self.bin / program)
        return [program, *(self.rooted(a) for a in argv[1:])]

    def run(self, dockerfile: str) -> tuple[list[str], list[str]]:
        """Apply every instruction; return (CMD, HEALTHCHECK command) rooted, not yet run."""
        cmd: list[str] = []
        health: list[str] = []
        for keyword, rest in _instructions(dockerfile):
            if keyword == "FROM":
                assert rest == "python:3.11-slim"
            elif keyword == "COPY":
                parts = [p for p in shlex.split(rest) if not p.startswith("--")]
                *sources, target = parts
                for source in sources:
                    self._copy(self.context / source, target)
            elif keyword == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    self.env[key] = self.rooted(value)
            elif keyword == "RUN":
                self._run_shell(rest)
            elif keyword == "WORKDIR":
                self.workdir = Path(self.rooted(rest))
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "CMD":
                cmd = self._argv(json.loads(rest))
            elif keyword == "HEALTHCHECK":
                health = self._argv(json.loads(rest.split(" CMD ", 1)[1]))
            elif keyword == "USER":
                self.skipped.append(f"USER {rest}")
            elif keyword not in ("LABEL", "EXPOSE"):
                raise AssertionError(f"the test does not know the instruction {keyword}")
        return cmd, health

    def _copy(self, source: Path, target: str) -> None:
        destination = Path(self.rooted(target))
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)

    def _run_shell(self, line: str) -> None:
        for command in line.split("&&"):
            argv = shlex.split(command)
            if argv[0] in NEEDS_ROOT:
                self.skipped.append(command.strip())
                continue
            started = time.perf_counter()
            done = subprocess.run(
                self._argv(argv),
                cwd=self.workdir,
                env={**os.environ, **self.env, "PATH": f"{self.bin}:{os.environ['PATH']}"},
                capture_output=True,
                text=True,
                timeout=400,
                check=False,
            )
            self.timings.append((" ".join(argv[-2:]), round(time.perf_counter() - started, 1)))
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    found = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, rest.strip()))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dockerfile_steps_install_and_serve_in_a_fresh_venv(tmp_path: Path) -> None:
    port = _free_port()
    wheels = tmp_path / "dist"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel_s = time.perf_counter() - started
    (wheel,) = wheels.glob("cvdeploy-*.whl")
    # Port from the config, so the CMD and HEALTHCHECK run exactly as generated.
    config = {"deployment": {"server": {"port": port, "workers": 1}}}
    out = build(tmp_path, config, wheel=wheel).out

    python_env = tmp_path / "image-venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(python_env)
    root = tmp_path / "image-root"
    (root / "tmp").mkdir(parents=True)
    image = ImageEmulator(out, root, python_env)
    cmd, health = image.run((out / "Dockerfile").read_text())
    print("install timings (s):", image.timings)
    print("wheel build (s):", round(wheel_s, 1), "skipped:", image.skipped)
    assert image.skipped == [
        "useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cvdeploy",
        "USER 10001",
    ]

    # The image's CMD, on loopback only (the image binds 0.0.0.0).
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    assert Path(cmd[0]) == python_env / "bin" / "cvdeploy"
    env = {**image.env, "PATH": f"{python_env / 'bin'}:/usr/bin:/bin", "HOME": str(root / "tmp")}
    # cvdeploy and its dependencies resolve inside the new environment, not this one.
    where = subprocess.run(
        [
            str(python_env / "bin" / "python"),
            "-c",
            "import cvdeploy, onnxruntime, fastapi; "
            "print(cvdeploy.__file__, onnxruntime.__file__, fastapi.__file__)",
        ],
        cwd=image.workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert all(Path(path).is_relative_to(python_env) for path in where), where

    server = subprocess.Popen(
        cmd, cwd=image.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            check = subprocess.run(
                health, cwd=image.workdir, env=env, capture_output=True, timeout=30, check=False
            )
            if check.returncode == 0:
                break
            assert server.poll() is None, server.communicate(timeout=10)[0].decode()[-3000:]
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.5)
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0].decode()
    assert "digits_classifier" in output
    assert (root / "models" / "digits_classifier" / "digits_classifier.onnx").is_file()
    assert not (root / "tmp" / "requirements.txt").exists()  # the RUN's cleanup ran
