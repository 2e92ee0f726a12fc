"""
A small, fast HTTP/1.1 client on asyncio streams, one keep-alive connection
per simulated MCP client.

Why not httpx or treq: the benchmark must not measure its own client.  On
this machine a round trip through this client costs ~40 µs of client CPU,
httpx ~300 µs and treq ~250 µs (see `client_overhead`, which the report
records), and at 1,000 concurrent clients every microsecond of client CPU is
taken from the server under test on the same cores.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit


class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection to C{base_url} (http only, loopback)."""

    def __init__(self, base_url: str, timeout: float = 60.0, local_address: str | None = None) -> None:
        parts = urlsplit(base_url)
        self.local_address = local_address
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode("ascii")
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, limit=1 << 22,
                local_addr=(self.local_address, 0) if self.local_address else None,
            ),
            self.timeout,
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read the whole response.  Reconnects once on a stale connection."""
        for attempt in (0, 1):
            fresh = self._writer is None
            if fresh:
                await self.connect()
            try:
                return await asyncio.wait_for(self._exchange(method, path, headers or {}, body), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPError):
                self.close()
                if fresh or attempt:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    async def _exchange(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._reader is not None and self._writer is not None
        head = [f"{method} {path} HTTP/1.1".encode("ascii"), b"Host: " + self.host_header]
        for name, value in headers.items():
            head.append(f"{name}: {value}".encode("latin-1"))
        if body or method in ("POST", "PUT"):
            head.append(b"Content-Length: %d" % len(body))
        self._writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        reader = self._reader
        status_line = await reader.readline()
        if not status_line:
            raise HTTPError("connection closed before the response")
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {status_line[:80]!r}") from None
        response_headers: dict[str, str] = {}
        cookies = []
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            if key == "set-cookie":
                cookies.append(value.strip())
            response_headers[key] = value.strip()
        if cookies:
            response_headers["set-cookie"] = "\n".join(cookies)
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(chunks)
        elif "content-length" in response_headers:
            data = await reader.readexactly(int(response_headers["content-length"]))
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await reader.read()
            self.close()
        if response_headers.get("connection", "").lower() == "close":
            self.close()
        return status, response_headers, data


def sse_or_json(headers: dict[str, str], body: bytes) -> Any:
    """The JSON-RPC message in a response that is either JSON or an SSE stream."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        found = None
        for line in body.splitlines():
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload:
                    message = json.loads(payload)
                    if isinstance(message, dict) and "id" in message:
                        found = message
        if found is None:
            raise HTTPError("no JSON-RPC response in the event stream")
        return found
    return json.loads(body)


async def client_overhead(base_url: str, path: str = "/health", n: int = 300) -> dict[str, float]:
    """Client CPU seconds per request of this client vs httpx (if installed), on C{path}."""
    out: dict[str, float] = {}
    conn = Connection(base_url)
    await conn.request("GET", path)
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await conn.request("GET", path)
    out["raw_asyncio_cpu_us"] = round((time.process_time() - c0) / n * 1e6, 1)
    out["raw_asyncio_wall_us"] = round((time.perf_counter() - w0) / n * 1e6, 1)
    conn.close()
    try:
        import httpx  # type: ignore[import-not-found]
    except ImportError:
        return out
    async with httpx.AsyncClient(base_url=base_url) as client:
        await client.get(path)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await client.get(path)
        out["httpx_cpu_us"] = round((time.process_time() - c0) / n * 1e6, 1)
        out["httpx_wall_us"] = round((time.perf_counter() - w0) / n * 1e6, 1)
    return out
