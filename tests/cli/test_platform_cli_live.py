"""The platform for real, through the ``cvdeploy`` command line as a user types it.

Every command is a ``python -m cvdeploy.cli`` subprocess in a temporary ``$CVDEPLOY_HOME``:
register the demo classifier, ``up --detach``, an endpoint's whole life (create, query, canary,
rollback, logs, metrics, delete), tokens and their scopes, the audit log, TLS with a
self-signed certificate and ``--ca-file``, and the refusal to listen beyond loopback without
tokens. Each platform is stopped with ``cvdeploy down`` in teardown, whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "cvdeploy" / "demo" / "digits_classifier.onnx"
DIGIT_3 = REPO / "cvdeploy" / "demo" / "images" / "digit_3.png"

# Variables of the developer's shell that would point the CLI elsewhere.
_SCRUBBED = ("CVDEPLOY_URL", "CVDEPLOY_TOKEN", "CVDEPLOY_CA_FILE", "CVDEPLOY_REGISTRY_URI")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cvdeploy(
    home: Path, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``cvdeploy ARGS`` with ``$CVDEPLOY_HOME=home`` (and ``$CVDEPLOY_TOKEN=token``)."""
    began = time.monotonic()
    try:
        return _cvdeploy(home, *args, token=token, timeout=timeout)
    finally:
        print(f"{time.monotonic() - began:6.2f}s cvdeploy {' '.join(args)[:90]}")


def _cvdeploy(
    home: Path, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["CVDEPLOY_HOME"] = str(home)
    env["COLUMNS"] = "200"  # tables wide enough that no cell is cut
    if token is not None:
        env["CVDEPLOY_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cvdeploy.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waiting for its new parent to reap it is gone too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_of(home: Path) -> list[int]:
    """Live processes (the platform, its replicas) whose environment has this home."""
    needle = f"CVDEPLOY_HOME={home}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Homes:
    """Temporary ``$CVDEPLOY_HOME`` folders; teardown runs ``cvdeploy down`` in each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Path] = []

    def new(self, name: str) -> Path:
        home = self.root / name
        home.mkdir()
        self.made.append(home)
        return home

    def down_all(self) -> None:
        for home in self.made:
            cvdeploy(home, "down", "--timeout", "10", timeout=60)


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Homes]:
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    made = Homes(tmp_path)
    try:
        yield made
    finally:
        made.down_all()


def runtime_pid(home: Path) -> int:
    data: dict[str, Any] = json.loads((home / "platform.json").read_text())
    pid: int = data["pid"]
    return pid


def routes(info: dict[str, Any]) -> dict[str, int]:
    return {
        r["served_model_name"]: r["traffic_percentage"]
        for r in info["config"]["traffic_config"]["routes"]
    }


# -- an endpoint's life, tokens and the audit log -------------------------------------------------


def test_endpoint_lifecycle_with_tokens_through_the_cli(
    homes: Homes, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = homes.new("main")
    monkeypatch.setenv("CVDEPLOY_HOME", str(home))

    for expected in (1, 2):
        registered = json.loads(
            ok(cvdeploy(home, "models", "register", str(MODEL), "--name", "cv_model", "--json"))
        )
        assert str(registered["version"]) == str(expected)

    manage = json.loads(ok(cvdeploy(home, "tokens", "create", "--scope", "manage", "--json")))
    query = json.loads(ok(cvdeploy(home, "tokens", "create", "--scope", "query", "--json")))
    assert (manage["scope"], query["scope"]) == ("manage", "query")

    port = free_port()
    url = ok(cvdeploy(home, "up", "--detach", "--port", str(port))).strip()
    assert url == f"http://127.0.0.1:{port}"
    pid = runtime_pid(home)
    assert alive(pid)

    def as_manager(*args: str) -> subprocess.CompletedProcess[str]:
        return cvdeploy(home, *args, token=manage["token"], timeout=120)

    # -- tokens: none is 401, query may read but not change, manage may change ------------------
    anonymous = cvdeploy(home, "endpoints", "list")
    assert anonymous.returncode == 2, anonymous
    assert "needs a token" in anonymous.stderr
    assert json.loads(ok(cvdeploy(home, "endpoints", "list", "--json", token=query["token"]))) == []
    denied = cvdeploy(home, "endpoints", "delete", "x", "--yes", "--token", query["token"])
    assert denied.returncode == 2, denied
    assert "needs a 'manage' token" in denied.stderr, denied

    # -- create (waits until ready), list, get, query ------------------------------------------
    created = json.loads(
        ok(
            as_manager(
                "endpoints", "create", "digits", "--model", "cv_model", "--version", "1", "--json"
            )
        )
    )
    assert created["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    listed = json.loads(ok(as_manager("endpoints", "list", "--json")))
    assert [e["name"] for e in listed] == ["digits"]
    info = json.loads(ok(as_manager("endpoints", "get", "digits", "--json")))
    assert routes(info) == {"cv_model-1": 100}

    answer = json.loads(ok(as_manager("endpoints", "query", "digits", str(DIGIT_3), "--json")))
    (prediction,) = answer["predictions"]
    assert prediction["task"] == "classification"
    assert prediction["classes"][0]["label"] == "3"
    table = ok(cvdeploy(home, "endpoints", "query", "digits", str(DIGIT_3), token=query["token"]))
    assert "digit_3.png" in table

    # -- a 10% canary of version 2, then back ------------------------------------------------------
    ok(
        as_manager(
            "endpoints",
            "update",
            "digits",
            "--model",
            "cv_model",
            "--version",
            "2",
            "--traffic",
            "10",
        )
    )
    info = json.loads(ok(as_manager("endpoints", "get", "digits", "--json")))
    assert routes(info) == {"cv_model-1": 90, "cv_model-2": 10}
    assert len(info["config"]["served_entities"]) == 2

    ok(as_manager("endpoints", "rollback", "digits"))
    info = json.loads(ok(as_manager("endpoints", "get", "digits", "--json")))
    assert [e["name"] for e in info["config"]["served_entities"]] == ["cv_model-1"]
    assert routes(info) == {"cv_model-1": 100}

    revisions = json.loads(ok(as_manager("endpoints", "revisions", "digits", "--json")))
    assert [r["number"] for r in revisions] == [1, 2, 3]
    assert revisions[-1]["rollback_of"] is not None
    assert "3 revision(s)" in ok(as_manager("endpoints", "revisions", "digits"))

    logs = ok(as_manager("endpoints", "logs", "digits", "cv_model-1"))
    assert logs.strip()
    metrics = ok(as_manager("endpoints", "metrics", "digits"))
    assert "cvdeploy_endpoint_requests_total" in metrics

    # -- delete ------------------------------------------------------------------------------------
    deleted = json.loads(ok(as_manager("endpoints", "delete", "digits", "--yes", "--json")))
    assert deleted == {"deleted": True, "name": "digits"}
    gone = as_manager("endpoints", "get", "digits")
    assert gone.returncode == 2, gone
    assert "does not exist" in gone.stderr
    assert gone.stdout == ""

    # -- the audit log names the manage token as the author of every change ----------------------
    entries = json.loads(ok(cvdeploy(home, "audit", "--endpoint", "digits", "--json")))
    authors = [(e["action"], e["who"]) for e in reversed(entries)]  # oldest first
    for action in ("create", "update", "rollback", "delete"):
        mine = [who for done, who in authors if done.startswith(action)]
        assert mine, authors
        assert set(mine) == {manage["id"]}, authors
    table = ok(cvdeploy(home, "audit", "--endpoint", "digits"))
    assert manage["id"] in table

    # -- down stops the daemon ---------------------------------------------------------------------
    if sys.platform == "linux":
        assert pid in processes_of(home)
    stopped = ok(cvdeploy(home, "down"))
    assert f"stopped the platform at {url}" in stopped
    assert wait_gone(pid), f"platform pid {pid} still running after `cvdeploy down`"
    if sys.platform == "linux":  # and no replica was left behind
        assert processes_of(home) == []
    assert not (home / "platform.json").exists()
    assert "no platform is running" in ok(cvdeploy(home, "down"))


# -- TLS with a self-signed certificate -----------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (SAN IP) and its key, PEM files in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


def test_tls_platform_is_used_with_ca_file(homes: Homes, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pytest.skip("needs the cryptography package to make a certificate")
    home = homes.new("tls")
    monkeypatch.setenv("CVDEPLOY_HOME", str(home))
    certfile, keyfile = self_signed(homes.root)
    port = free_port()
    started = ok(
        cvdeploy(
            home,
            "up",
            "--detach",
            "--port",
            str(port),
            "--ssl-certfile",
            str(certfile),
            "--ssl-keyfile",
            str(keyfile),
        )
    )
    url = f"https://127.0.0.1:{port}"
    assert started.strip() == url
    pid = runtime_pid(home)

    listed = cvdeploy(home, "endpoints", "list", "--url", url, "--ca-file", str(certfile), "--json")
    assert json.loads(ok(listed)) == []
    # Without --ca-file the certificate is not trusted, and the error says so.
    untrusted = cvdeploy(home, "endpoints", "list", "--url", url)
    assert untrusted.returncode == 2, untrusted
    assert url in untrusted.stderr
    assert "--ca-file" in untrusted.stderr
    with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|ssl"):
        httpx.get(url + "/health")

    ok(cvdeploy(home, "down"))
    assert wait_gone(pid)


# -- listening beyond loopback ---------------------------------------------------------------------


def test_up_on_all_interfaces_without_tokens_is_refused(
    homes: Homes, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = homes.new("open")
    monkeypatch.setenv("CVDEPLOY_HOME", str(home))
    started = time.monotonic()
    refused = cvdeploy(home, "up", "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
    assert refused.returncode == 2, refused
    assert "token" in refused.stderr.lower()
    assert time.monotonic() - started < 30
    assert not (home / "platform.json").exists()
