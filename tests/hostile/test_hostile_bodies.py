"""
Request bodies against a real ``twistd mailmcp`` on loopback (issue 12,
part A), with real OAuth logins and the real Dovecot.

- Forms are parsed only on the OAuth form paths: a 32 MiB multipart POST to
  ``/mcp`` without a token is answered 401 at once (before its body is
  read), ``/health`` stays quick meanwhile, and the daemon's memory does not
  grow with the body (it used to parse it on the reactor: ~0.5 GiB, 7-10 s).
- Per-path caps: 64 KiB on ``/oauth/*`` and everywhere else; ``/mcp`` takes
  up to ``--max-request-body`` only with a verified token.
- Lingering close: a client that sends a 48 MiB body whole (by
  Content-Length and chunked) before reading reads the 413, not a reset.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest

from tests.harness import Daemon, Services, generate_client
from tests.hostile import mcp_http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MiB = 1 << 20
CAP = 32 * MiB  # the default --max-request-body


def vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def exchange(port: int, head: bytes, body: bytes | None = None, chunks: list[bytes] | None = None,
             timeout: float = 60.0) -> tuple[bytes, float]:
    """
    Send C{head}, then the whole body (as given, or chunked) before reading
    anything -- as most HTTP clients do -- then read until the server
    closes.  Returns the bytes read and the seconds until the first byte of
    the answer arrived (measured by a reader thread while still sending).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    first: list[float] = []
    received: list[bytes] = []

    def read() -> None:
        try:
            while data := s.recv(65536):
                if not first:
                    first.append(time.monotonic() - started)
                received.append(data)
        except OSError as e:
            received.append(f"<{type(e).__name__}>".encode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        s.sendall(head)
        if body is not None:
            s.sendall(body)
        for chunk in chunks or []:
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        if chunks is not None:
            s.sendall(b"0\r\n\r\n")
    except OSError as e:
        received.append(f"<send: {type(e).__name__}>".encode())
    reader.join(timeout)
    s.close()
    return b"".join(received), (first[0] if first else float("inf"))


def split(response: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, json.loads(body[:length]) if length else None


def health_latencies(base: str, stop: threading.Event, out: list[float]) -> None:
    for _ in range(2000):  # bounded
        if stop.is_set():
            return
        started = time.monotonic()
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            assert r.status == 200
        out.append(time.monotonic() - started)
        time.sleep(0.02)


@pytest.fixture
def daemon(services: Services, daemon_factory: Any) -> Daemon:
    started: Daemon = daemon_factory(services)
    return started


def login(daemon: Daemon, services: Services) -> str:
    client = generate_client(daemon.state_dir, services)
    token: str = mcp_http.login(daemon.base_url, client, "alice@example.test", "alicepw", "127.9.0.1")[
        "access_token"]
    return token


def test_form_posts_are_not_parsed_outside_the_form_paths(daemon: Daemon) -> None:
    """
    A 32 MiB multipart POST to /mcp without a token gets its 401 (with the
    resource-metadata challenge) before the body is read, and a client
    sending it whole still reads it; /health answers quickly all along; the
    daemon's peak memory grows by far less than the body (twisted.web used
    to parse such a body on the reactor, on any path, before routing).  The
    same body to /oauth/token and /health is 413 by Content-Length.
    """
    boundary = b"b0undary"
    part = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n"
            + b"x" * 4000 + b"\r\n")
    body = part * (CAP // len(part)) + b"--" + boundary + b"--\r\n"
    assert len(body) <= CAP
    stop, latencies = threading.Event(), []
    prober = threading.Thread(target=health_latencies, args=(daemon.base_url, stop, latencies))
    peak_before = vm(daemon.process.pid, "VmHWM")
    prober.start()
    try:
        for path, status in ((b"/mcp", 401), (b"/oauth/token", 413), (b"/health", 413)):
            head = (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body))
            response, first_byte = exchange(daemon.port, head, body)
            code, headers, document = split(response)
            assert code == status, (path, response[:300])
            assert headers["connection"] == "close"
            assert first_byte < 5.0, (path, first_byte)
            if path == b"/mcp":
                assert headers["www-authenticate"].startswith('Bearer resource_metadata="')
            else:
                assert document["error"] == "request_too_large"
                assert "65536 bytes" in document["error_description"]
    finally:
        stop.set()
        prober.join(30)
    growth_kib = vm(daemon.process.pid, "VmHWM") - peak_before
    assert growth_kib < 64 * 1024, growth_kib
    assert latencies and max(latencies) < 5.0, max(latencies)
    print(f"form bodies: /health max {max(latencies) * 1e3:.0f} ms over {len(latencies)} probes, "
          f"peak RSS growth {growth_kib} KiB")


def test_a_client_sending_48_mib_reads_the_413(services: Services, daemon: Daemon) -> None:
    """
    With a valid token, a 48 MiB body to /mcp (declared by Content-Length,
    or chunked) is refused with 413 and a JSON-RPC error (id null) naming
    the limit; a client that sends all of it before reading still reads the
    answer (lingering close), and the next request is served.
    """
    token = login(daemon, services)
    padding = b"y" * (48 * MiB)
    common = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + token.encode()
              + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n")
    for case in ("content-length", "chunked"):
        if case == "content-length":
            response, _ = exchange(daemon.port, common + b"Content-Length: %d\r\n\r\n" % len(padding),
                                   padding)
        else:
            response, _ = exchange(daemon.port, common + b"Transfer-Encoding: chunked\r\n\r\n",
                                   chunks=[padding[i:i + MiB] for i in range(0, len(padding), MiB)])
        code, headers, document = split(response)
        assert code == 413, (case, response[:300])
        assert document == {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32600,
            "message": "Request body too large: /mcp accepts at most 33554432 bytes (32 MiB)."}}
        assert headers["connection"] == "close"
    assert mcp_http.call(daemon.base_url, token, "list_mailboxes").get("isError") is not True


def test_large_mcp_bodies_only_with_a_verified_token(services: Services, daemon: Daemon) -> None:
    """
    A 1 MiB JSON-RPC request is served with a valid token; with a bad token
    it is 401 invalid_token before its body is read, and with
    ``Expect: 100-continue`` no ``100 Continue`` is sent first.  64 KiB is
    the most a request to /oauth/token may carry (413 with an OAuth-style
    error past it).
    """
    token = login(daemon, services)
    message = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping",
                          "params": {"_meta": {"pad": "z" * MiB}}}).encode()

    def head(bearer: str, extra: bytes = b"") -> bytes:
        return (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + bearer.encode()
                + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n" % len(message) + extra + b"\r\n")

    code, _, document = split(exchange(daemon.port, head(token), message)[0])
    assert (code, document) == (200, {"jsonrpc": "2.0", "id": 7, "result": {}})
    response, first_byte = exchange(daemon.port, head("not-a-real-token"), message)
    code, headers, document = split(response)
    assert (code, document["error"]) == (401, "invalid_token")
    assert 'error="invalid_token"' in headers["www-authenticate"]
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    try:
        s.sendall(head("not-a-real-token", b"Expect: 100-continue\r\n"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b'"invalid_token"' in data:
                break
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 401 "), data[:200]
    assert b"100 Continue" not in data
    form = b"grant_type=refresh_token&refresh_token=" + b"r" * (64 * 1024)
    response, _ = exchange(daemon.port, b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(form), form)
    code, _, document = split(response)
    assert code == 413 and document["error"] == "request_too_large"
