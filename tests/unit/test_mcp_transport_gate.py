"""
The transport gate of ``/mcp`` alone: each check gives the account (or
None) or an `Answer`, the complete refusal, as a value; nothing is raised
to return early.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.test.requesthelper import DummyRequest

from mailmcp._account import MailAccount
from mailmcp.mcp._gate import Answer, TransportGate
from mailmcp.testing import FakeTokenVerifier, make_account, make_config
from mailmcp.web._admission import Admission

BASE = "https://mail.example.test"
TOKEN = "good-token"


def make_gate(admission: Admission | None = None) -> TransportGate:
    config = make_config(base_url=BASE, allowed_origins=("https://app.example.test",),
                         max_request_body=1 << 20)
    return TransportGate(config, FakeTokenVerifier({TOKEN: make_account()}),
                         admission or Admission(), 100)


def request(method: bytes = b"POST", **headers: str) -> DummyRequest:
    r = DummyRequest([b"mcp"])
    r.method = method
    for name, value in headers.items():
        r.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    return r


def now(d: Any) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(d).addBoth(results.append)
    assert len(results) == 1
    return results[0]


def test_authenticate_gives_the_account_or_the_challenge() -> None:
    """A good token: the account; none, or a bad one: a 401 Answer naming the metadata."""
    gate = make_gate()
    assert isinstance(now(gate.authenticate(request(authorization=f"Bearer {TOKEN}"))), MailAccount)
    for bad in (request(), request(authorization="Bearer nope"), request(authorization="Basic x")):
        answer = now(gate.authenticate(bad))
        assert isinstance(answer, Answer) and answer.status == 401
        ((name, value),) = answer.headers
        assert name == b"www-authenticate" and b"resource_metadata=" in value


def test_checks_in_order_origin_method_content_type_accept() -> None:
    """Each failing check is its Answer (403, 405 with Allow, 415, 406); all passing is None."""
    gate = make_gate()
    ok = {"content_type": "application/json", "accept": "application/json"}
    assert gate.check(request(**ok)) is None
    assert gate.check(request(origin="https://app.example.test", **ok)) is None
    assert gate.check(request(origin="https://evil.example", **ok)).status == 403  # type: ignore[union-attr]
    refused = gate.check(request(b"GET", **ok))
    assert refused == Answer(405, refused.body, ((b"allow", b"POST"),))  # type: ignore[union-attr]
    assert gate.check(request(content_type="text/plain")).status == 415  # type: ignore[union-attr]
    assert gate.check(request(content_type="application/json", accept="text/html")).status == 406  # type: ignore[union-attr]


def test_admission_and_body_size_are_answers() -> None:
    """Past the account's share: a 503 Answer with Retry-After; over max_body: 413."""
    gate = make_gate(Admission(per_account=1))
    account = make_account()
    assert now(gate.enter(account)) is None
    busy = now(gate.enter(account))
    assert isinstance(busy, Answer) and busy.status == 503
    assert dict(busy.headers)[b"retry-after"] == b"1"
    assert busy.body["error"]["code"] == -32001
    gate.leave(account)
    assert now(gate.enter(account)) is None
    big = request()
    big.content = io.BytesIO(b"x" * 101)
    assert gate.body(big).status == 413  # type: ignore[union-attr]
    small = request()
    small.content = io.BytesIO(b"{}")
    body = gate.body(small)
    assert not isinstance(body, Answer) and body.read() == b"{}" and not body.large
