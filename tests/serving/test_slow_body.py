"""A client that stalls mid-body gets a 408 after the request timeout, not a held coroutine."""

from __future__ import annotations

import socket
import time

from conftest import encode, solid

from cvdeploy import ModelServer


def test_stalled_body_gets_408_after_the_timeout(classifier_path):
    image = encode(solid((255, 0, 0)))
    with ModelServer("classification", classifier_path, port=0, timeout=1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            head = (
                f"POST /v1/models/{server.name}/predict HTTP/1.1\r\n"
                "Host: x\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(image)}\r\n\r\n"
            ).encode()
            sock.sendall(head + image[:10])  # ... and never the rest
            started = time.monotonic()
            answer = sock.recv(65536).decode("latin-1")
            waited = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408")
        assert "did not arrive within 1 s" in answer
        assert 0.5 < waited < 5
