"""
Property tests of the ``/mcp`` Bearer gate: whatever the method, path and
credentials, nothing but a valid token reaches the JSON-RPC layer.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.mcp_client import BASE, INITIALIZE, PRM, TOKEN, Client, make_app

header_bytes = st.binary(max_size=300).filter(lambda b: not any(c in b for c in b"\r\n\x00"))
credentials = st.one_of(
    header_bytes,
    header_bytes.map(lambda b: b"Bearer " + b),
    st.text(alphabet="ABCDEFabcdef0123456789-._~+/=", max_size=80).map(lambda t: b"Bearer " + t.encode()),
    st.just(b"Bearer " + TOKEN.encode() + b"x"),
    st.just(b"Basic " + TOKEN.encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["POST", "GET", "DELETE", "PUT", "PATCH", "OPTIONS"]),
    values=st.lists(credentials, max_size=3),
)
def test_bad_credentials_never_pass(method: str, values: list[bytes]) -> None:
    """Missing, malformed, foreign and multiple credentials all end at 400/401 with the challenge."""
    app, verifier = make_app()
    client = Client(app)
    headers = {b"authorization": values} if values else {}
    code, response_headers, content = client.request(
        method, json.dumps(INITIALIZE).encode(), headers=headers, token=None
    )
    assert code in (400, 401)
    challenge = response_headers.getRawHeaders(b"www-authenticate")
    assert challenge and challenge[0].startswith(f"Bearer {PRM}".encode())
    assert b"protocolVersion" not in content
    assert TOKEN not in verifier.verified


@settings(max_examples=50, deadline=None)
@given(path=st.text(alphabet="abcxyz/._-%", max_size=30))
def test_paths_below_mcp_are_json_404(path: str) -> None:
    """Nothing is served below /mcp: a JSON 404 (undecodable paths too), never a 5xx."""
    client = Client(make_app()[0])
    code, headers, content = client.request("POST", b"{}", url=f"{BASE}/mcp/{path}")
    assert code == 404
    assert json.loads(content) == {"error": "not_found"}
    assert b"jsonrpc" not in content
