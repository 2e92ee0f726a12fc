"""
The web floor: what Twisted's HTTP server alone costs for a warm call's
request and response.

A bare ``twisted.web`` ``Site`` (the daemon's Twisted and reactor, no
authentication, no MCP, no IMAP, no access log) answers the exact request
the warm item sends to ``/mcp`` with a JSON body of the warm response's
size.  Measured in the same blocks as the IMAP floor and the warm call, it
splits a warm call into the two floors and what mailmcp adds on top
(``warm.beyond_floors_p50_ms``), and, under load, the HTTP server's CPU per
request against the daemon's (``web_floor.loaded``).

Run as ``python -m benchmarks._webfloor PORT RESPONSE_BYTES``; the
benchmark starts it through L{WebFloor}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks._procs import _env_with_root, stop_process, wait_http


class WebFloor:
    """The bare server in its own process, on a loopback port."""

    def __init__(self, workdir: Path, port: int, response_bytes: int) -> None:
        self.port = port
        self.response_bytes = response_bytes
        self.base_url = f"http://127.0.0.1:{port}"
        self.output = open(workdir / f"webfloor-{port}.out", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._webfloor", str(port), str(response_bytes)],
            env=_env_with_root(), stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.base_url + "/health", 30, self.process)
        except RuntimeError:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process, 10)
        self.output.close()


def _serve(port: int, response_bytes: int) -> None:
    from twisted.internet import default

    default.install()  # the reactor twistd gives the daemon (epoll on Linux)
    from twisted.internet import reactor
    from twisted.web import resource, server

    filler = max(0, response_bytes - len(b'{"text":""}'))
    body = b'{"text":"' + b"x" * filler + b'"}'

    class Answer(resource.Resource):
        isLeaf = True

        def render_GET(self, request: server.Request) -> bytes:
            return b"ok"

        def render_POST(self, request: server.Request) -> bytes:
            request.content.read()
            request.setHeader(b"content-type", b"application/json")
            return body

    class QuietSite(server.Site):
        def log(self, request: server.Request) -> None:
            """No access log: the floor is the HTTP server alone."""

    reactor.listenTCP(port, QuietSite(Answer()), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
