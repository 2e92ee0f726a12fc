"""
Property-based fuzzing (hypothesis) of the parsers that face hostile input:
the ``/mcp`` JSON-RPC entry (`MCPApp` over `StubTreq`, with the real tool set
on an in-memory mailbox), the search-query lexer and compiler, the token
parser, the MIME helpers and the IMAP FETCH parser.

Properties: no exception other than the component's own error type, never
an HTTP 500, every request answered synchronously (no hang), and whatever
the search compiler accepts goes to the wire with no CR, LF or NUL and with
balanced parentheses.  Every property is bounded by ``max_examples``, and
the examples are the same on every run (the "ci" profile in tests/conftest.py).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from mailmcp.mail import _mime
from mailmcp.mail._mailbox_api import IMAPError, Literal
from mailmcp.mail._search import Filters, SearchQueryError, compile_search
from mailmcp.mail.imap._parser import ParseError, parse_fetch, parse_values
from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from mailmcp.testing import (
    FakeIMAPPool,
    FakeIMAPServer,
    FakeTokenVerifier,
    make_account,
    make_config,
    tool_services,
)
from mailmcp.tools import all_tools
from tests.hostile.strategies import queries

BASE = "https://mail.example.test"
TOKEN = "fuzz-token"
# Example counts scale up under the "fuzz" profile (see tests/conftest.py).
FAST = settings(max_examples=max(300, settings.default.max_examples),
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=max(120, settings.default.max_examples // 2),
                suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


# -- /mcp JSON-RPC entry -----------------------------------------------------------------


def _mcp() -> StubTreq:
    server = FakeIMAPServer()
    inbox = server.mailbox("INBOX")
    inbox.add(b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n")
    server.mailbox("Sent", "\\Sent")
    server.mailbox("Drafts", "\\Drafts")
    config = make_config(base_url=BASE, max_request_body=1 << 20)
    services = tool_services(reactor=MemoryReactorClock(), imap=FakeIMAPPool(server))
    app = MCPApp(config, FakeTokenVerifier({TOKEN: make_account()}), services, all_tools())
    return StubTreq(app.resource())


STUB = _mcp()
TOOL_NAMES = sorted(t.name for t in all_tools())


def _now(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the request did not finish (hang)"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def post(body: bytes, version: bytes = b"2025-11-25") -> tuple[int, bytes]:
    headers = {b"content-type": [b"application/json"], b"accept": [b"application/json, text/event-stream"],
               b"authorization": [b"Bearer " + TOKEN.encode()], b"mcp-protocol-version": [version]}
    d = STUB.request("POST", BASE + "/mcp", data=body, headers=headers)
    STUB.flush()
    response = _now(d)
    content = _now(response.content())
    return response.code, content


def check_answer(status: int, content: bytes) -> None:
    assert status in (200, 202, 400, 404, 413), (status, content[:300])
    if status == 202:
        assert content == b""
        return
    message = json.loads(content)
    assert message["jsonrpc"] == "2.0"
    assert ("result" in message) != ("error" in message), message
    if "error" in message:
        assert isinstance(message["error"]["code"], int) and message["error"]["message"]


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_500(body: bytes) -> None:
    """Any byte string as the POST body is answered with a JSON-RPC error (or result), never a 500 or a hang."""
    check_answer(*post(body))


methods = st.sampled_from(["initialize", "ping", "tools/list", "tools/call", "server/discover",
                           "notifications/initialized", "foo/bar", "resources/list", ""]) | st.text(max_size=20)


@FAST
@given(st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params"]), json_values, max_size=4),
       methods, st.sampled_from([b"2025-06-18", b"2025-11-25", b"2026-07-28", b"1999-01-01"]))
def test_random_jsonrpc_messages_never_500(message: dict[str, Any], method: str, version: bytes) -> None:
    """JSON-RPC-shaped messages with random ids, methods, params and version headers: never a 500."""
    message.setdefault("jsonrpc", "2.0")
    message.setdefault("method", method)
    status, content = post(json.dumps(message).encode(), version)
    assert status != 500
    if content:
        json.loads(content)


@SLOW
@given(st.sampled_from(TOOL_NAMES), st.dictionaries(
    st.sampled_from(["folder", "uid", "page", "per_page", "query", "from", "to", "subject", "text", "since",
                     "before", "unseen", "flagged", "destination", "add", "remove", "cc", "bcc", "text_body",
                     "html_body", "attachment_urls", "uidvalidity", "idempotency_key", "permanent", "x"]),
    json_values, max_size=5))
def test_random_tool_arguments_are_results_or_invalid_params(name: str, arguments: dict[str, Any]) -> None:
    """tools/call of every real tool with random arguments: a result (isError or not) or -32602; never a 500 or a hang."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()
    status, content = post(body)
    assert status == 200, (status, content[:500])
    message = json.loads(content)
    if "error" in message:
        assert message["error"]["code"] == -32602, message
    else:
        assert isinstance(message["result"]["isError"], bool) or "isError" not in message["result"]


# -- search ------------------------------------------------------------------------------


def _safe(criteria: list[bytes | Literal]) -> None:
    depth = 0
    for token in criteria:
        data = token.data if isinstance(token, Literal) else token
        assert isinstance(data, bytes)
        assert b"\r" not in data and b"\n" not in data and b"\0" not in data, criteria
        if isinstance(token, bytes):
            # Literal syntax ("{n}") is unsafe outside quotes; inside a quoted
            # string a brace is an ordinary character (FROM "{" is fine).
            in_quote = False
            escaped = False
            for byte in token:
                if in_quote:
                    if escaped:
                        escaped = False
                    elif byte == 0x5C:
                        escaped = True
                    elif byte == 0x22:
                        in_quote = False
                elif byte == 0x22:
                    in_quote = True
                elif byte == 0x7B:
                    raise AssertionError(f"literal syntax outside quotes: {criteria!r}")
                elif byte == 0x28:
                    depth += 1
                elif byte == 0x29:
                    depth -= 1
                    assert depth >= 0, criteria
            assert not in_quote, criteria
    assert depth == 0, criteria


def test_safety_property_allows_braces_inside_quotes_only() -> None:
    """The property itself: a quoted brace is ordinary text, a bare one is literal syntax."""
    criteria = compile_search("", Filters(from_="{"))
    _safe(criteria)
    assert any(b'"{"' in token for token in criteria if isinstance(token, bytes))
    with pytest.raises(AssertionError, match="literal syntax"):
        _safe([b"FROM", b"{5}"])
    with pytest.raises(AssertionError):
        _safe([b"FROM", b'"{5}'])  # unbalanced quote


@FAST
@given(queries)
def test_search_compiler_accepts_only_safe_criteria(query: str) -> None:
    """Any query: SearchQueryError, or criteria with no CR/LF/NUL, no literal syntax, balanced parentheses and quotes."""
    try:
        criteria = compile_search(query)
    except SearchQueryError as e:
        assert str(e)
        return
    _safe(criteria)


@FAST
@given(st.dictionaries(st.sampled_from(["from_", "to", "subject", "text", "since", "before", "unseen", "flagged"]),
                       st.text(max_size=30) | st.booleans(), max_size=4), queries)
def test_search_filters_are_safe(filters: dict[str, Any], query: str) -> None:
    """Structured filters (any text) AND-ed with a query: only SearchQueryError/ValueError, or safe criteria."""
    try:
        compiled = Filters(**filters)
        criteria = compile_search(query, compiled)
    except (SearchQueryError, ValueError, TypeError) as e:
        assert str(e) or isinstance(e, TypeError)
        return
    _safe(criteria)


# -- tokens ------------------------------------------------------------------------------

CODEC = TokenCodec(KeyRing([new_master_key()]), Clock())
GOOD = CODEC.seal("access", {"sub": "x"}, 3600)
b64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=60)


def _mutations() -> st.SearchStrategy[str]:
    parts = GOOD.split(".")

    def mutate(args: tuple[int, str]) -> str:
        index, replacement = args
        changed = list(parts)
        changed[index] = replacement
        return ".".join(changed)

    return st.tuples(st.integers(0, 4), b64).map(mutate)


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200) | st.lists(b64, max_size=7).map(".".join) | _mutations(),
       st.sampled_from(["access", "refresh", "code", "client"]))
def test_token_open_only_raises_invalid_token(token: Any, typ: str) -> None:
    """TokenCodec.open on any string, bytes or mutated real token raises InvalidToken and nothing else."""
    try:
        CODEC.open(typ, token)
    except InvalidToken:
        return
    assert token == GOOD and typ == "access"


# -- MIME --------------------------------------------------------------------------------

bs_atom = st.none() | st.integers(-5, 2**40) | st.text(max_size=20) | st.sampled_from(
    ["text", "plain", "html", "multipart", "mixed", "alternative", "related", "message", "rfc822",
     "base64", "quoted-printable", "attachment", "inline", "charset", "utf-8", "name", "filename*0*",
     "filename*1", "utf-8''%e2%80%ae.exe"])
bodystructures = st.recursive(bs_atom, lambda inner: st.lists(inner, max_size=9), max_leaves=40)


@SLOW
@given(bodystructures)
def test_bodystructure_analysis_never_crashes(structure: Any) -> None:
    """mime.analyse / has_attachments / iter_leaves on any nested structure: a result, never an exception."""
    _mime.analyse(structure)
    _mime.has_attachments(structure)
    warnings: list[str] = []
    for _ in _mime.iter_leaves(structure, warnings):
        pass


@FAST
@given(st.binary(max_size=400), st.sampled_from([None, "utf-8", "x-evil", "utf-7", "utf-16", "latin-1", "",
                                                 "iso-2022-jp", "gb2312", "UTF-8\0"]),
       st.sampled_from([None, "base64", "quoted-printable", "7bit", "x-uuencode", "BASE64", ""]))
def test_decoders_never_crash(data: bytes, charset: str | None, encoding: str | None) -> None:
    """Transfer and charset decoding of any bytes with any declared charset/encoding returns text."""
    raw = _mime.decode_transfer(data, encoding).data
    decoded = _mime.decode_bytes(raw, charset)
    text, used = decoded.text, decoded.codec
    assert isinstance(text, str) and isinstance(used, str)
    _mime.decode_bytes(data, charset, final=False)


@FAST
@given(st.text(max_size=300))
def test_header_text_helpers_never_crash(value: str) -> None:
    """RFC 2047 decoding, date parsing, filename sanitising, HTML to text and line cleaning accept any text."""
    assert "\r" not in (_mime.clean_line(value) or "") and "\n" not in (_mime.clean_line(value) or "")
    _mime.decode_words(value)
    _mime.parse_date(value)
    _mime.parse_internal_date(value)
    name = _mime.decode_filename(value)
    assert name is None or ("/" not in name and "\0" not in name)
    _mime.html_to_text(value)
    _mime.clean_text(value)


@FAST
@given(st.binary(max_size=600))
def test_threading_headers_on_random_bytes(raw: bytes) -> None:
    """Reading In-Reply-To/References from any bytes never raises."""
    _mime.threading_headers(raw)


# -- IMAP FETCH parser ---------------------------------------------------------------------

fetch_bits = st.sampled_from([b"1 FETCH (", b"UID", b"FLAGS", b"(\\Seen)", b"ENVELOPE", b"BODYSTRUCTURE",
                              b"BODY[]", b"BODY[1.2]<0>", b"RFC822.SIZE", b"INTERNALDATE", b"NIL", b'"x"',
                              b'"a\\"b"', b"(", b")", b"[", b"]", b" ", b"{3}", b"4294967296", b"99", b"-1",
                              b"MODSEQ", b"(12)", b'"=?utf-8?q?x?="', b"\xff", b"\r", b"\n"])
fetch_heads = st.lists(fetch_bits, max_size=30).map(b"".join).map(lambda h: b"1 FETCH (" + h) | st.binary(max_size=200)


@SLOW
@given(fetch_heads, st.lists(st.binary(max_size=30), max_size=3))
def test_fetch_parser_raises_only_parse_errors(head: bytes, rest: list[bytes]) -> None:
    """parse_fetch/parse_values on random responses (with random literal segments): a result, None or an IMAPError."""
    segments: list[bytes] = [head]
    for literal in rest:
        segments.append(literal)
        segments.append(b" UID 1)")
    for response in ((head,), tuple(segments)):
        try:
            parse_fetch(response)
        except (ParseError, IMAPError):
            pass
        try:
            parse_values(response)
        except (ParseError, IMAPError):
            pass


# -- OAuth endpoints ----------------------------------------------------------------------------

_OAUTH: dict[str, Any] = {}


def _oauth() -> Any:
    """One socket-free OAuth server (tests.unit.oauth_helpers) for all examples."""
    if not _OAUTH:
        import tempfile
        from pathlib import Path

        from tests.unit.oauth_helpers import make_server

        _OAUTH["server"] = make_server(Path(tempfile.mkdtemp(prefix="mailmcp-fuzz-")))
    return _OAUTH["server"]


form_keys = st.sampled_from(["grant_type", "code", "refresh_token", "client_id", "client_secret", "code_verifier",
                             "redirect_uri", "resource", "token", "token_type_hint", "scope", "state",
                             "response_type", "code_challenge", "code_challenge_method", "csrf_token", "email",
                             "imap_username", "imap_password", "x"])
form_values = st.text(max_size=60) | st.sampled_from(["authorization_code", "refresh_token", "S256", "plain", "code",
                                                       "http://127.0.0.1:9/cb", "https://app.example/cb"])
forms = st.lists(st.tuples(form_keys, form_values), max_size=8)


@SLOW
@given(st.sampled_from(["/oauth/token", "/oauth/revoke", "/oauth/authorize"]), st.sampled_from(["GET", "POST"]),
       forms, st.booleans())
def test_oauth_endpoints_never_500(path: str, method: str, fields: list[tuple[str, str]], real_client: bool) -> None:
    """Random (and duplicated) form or query fields on the token, revoke and authorize endpoints: never a 500."""
    server = _oauth()
    if real_client:
        fields = [("client_id", server.client_id), *fields]
    if method == "GET":
        response, body = server.request("GET", path, params=fields)
    else:
        response, body = server.request("POST", path, data=fields,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code < 500 or response.code == 503, (response.code, body[:300])
    assert b"Traceback" not in body


# -- the IMAP client protocol on random server bytes ---------------------------------------------

server_bits = st.sampled_from([
    b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[] {5}\r\nhello)\r\n", b"* 2 FETCH (UID 9 RFC822.SIZE 10)\r\n",
    b"* 3 EXISTS\r\n", b"* 1 EXPUNGE\r\n", b"* OK [UIDVALIDITY 5] x\r\n", b"* BYE bye\r\n", b"+ go\r\n",
    b"0002 OK done\r\n", b"0002 NO [UNAVAILABLE] later\r\n", b"0002 BAD what\r\n", b"0009 OK stray\r\n",
    b"* 1 FETCH (UID {3}\r\n", b"{99999999999}\r\n", b"* SEARCH 1 2 3\r\n", b"\r\n", b"*", b" ", b"(", b")",
    b"* 1 FETCH (BODY[] NIL)\r\n", b"* 4294967296 FETCH (UID 1)\r\n", b"* ESEARCH (TAG \"0002\") UID ALL 1:*\r\n",
]) | st.binary(max_size=40)


@SLOW
@given(st.lists(server_bits, max_size=12), st.integers(1, 64))
def test_client_protocol_survives_any_server_bytes(chunks: list[bytes], cut: int) -> None:
    """
    A logged-in client with a UID FETCH in flight, fed any server bytes in
    any TCP chunking: nothing raises out of dataReceived, and the command
    ends (result or IMAPError) by its deadline at the latest -- no hang.
    """
    from twisted.internet.testing import StringTransport

    from mailmcp.mail.imap._client import IMAPClientProtocol
    from mailmcp.mail.imap._session import Session

    clock = Clock()
    protocol = IMAPClientProtocol(clock, timeout=5.0, max_line=4096, max_literal=1024)
    protocol.makeConnection(StringTransport())
    session = Session(protocol)
    opened = Deferred.fromCoroutine(session.open(SimpleNamespace(
        imap=SimpleNamespace(host="127.0.0.1", port=1, security="plain"),
        imap_username="u", imap_password="p"), None))
    protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] hi\r\n")
    protocol.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
    _now(opened)
    fetched = Deferred.fromCoroutine(session.fetch("1:3", "(UID FLAGS BODY.PEEK[])"))
    box: list[Any] = []
    fetched.addBoth(box.append)
    data = b"".join(chunks)
    for start in range(0, len(data), cut):
        protocol.dataReceived(data[start:start + cut])
    clock.advance(6)
    assert box, "the command never ended"
    if hasattr(box[0], "value"):
        assert isinstance(box[0].value, IMAPError), box[0]


# -- outgoing messages ------------------------------------------------------------------------

address_text = st.sampled_from(["a@example.test", "Bob <b@example.test>", '"x, y" <c@example.test>',
                                "user@bücher.de", "a@b@c", "undisclosed-recipients:;", "", "<>", "\"\" <d@e.test>",
                                "Ünï Cödé <u@example.test>", "a@x.test\r\nRCPT TO:<x@evil>"]) | st.text(max_size=40)
body_text = st.text(max_size=300) | st.lists(st.sampled_from(["\r\n", "\n", "\r", ".", "..", "line", " ", "é",
                                                               "\u2028", "=", "From x"]), max_size=60).map("".join)


@SLOW
@given(st.lists(address_text, min_size=1, max_size=4), st.text(max_size=120), body_text,
       st.none() | body_text, st.text(max_size=40))
def test_compose_builds_safe_wire_bytes_or_refuses(to: list[str], subject: str, text: str, html: str | None,
                                                   name: str) -> None:
    """
    Composing any recipients, subject, bodies and display name: ComposeError,
    or wire bytes with canonical CRLF line ends, no line over 998 octets, no
    NUL, exactly the requested recipients, and no Bcc header.
    """
    from mailmcp.mail._compose import (
        ComposeError,
        compose,
        is_canonical_crlf,
        make_message_id,
        parse_addresses,
    )

    try:
        message = compose(from_email="alice@example.test", from_name=name, to=parse_addresses("to", to),
                          subject=subject, text_body=text, html_body=html,
                          message_id=make_message_id("alice@example.test"), date=1_750_000_000.0)
    except ComposeError as e:
        assert str(e)
        return
    wire = message.wire_bytes
    assert is_canonical_crlf(wire), wire[:300]
    assert b"\0" not in wire
    assert all(len(line) <= 998 for line in wire.split(b"\r\n")), max(len(x) for x in wire.split(b"\r\n"))
    head = wire.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nbcc:" not in head and not head.startswith(b"bcc:")
    assert len(message.recipients) == len(set(message.recipients)) >= 1
