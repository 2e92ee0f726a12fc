"""
The listing's hot output path: ``list_mail_messages`` hands the MCP layer
plain JSON-ready data, serialised once (orjson), with no pydantic model in
between.  Nothing validates it at run time, so these tests do: the plain
data is what the model path gives, fits the declared ``outputSchema``, and
the text content is the structuredContent; the audit trail still sees it.
"""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import attrs
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from mailmcp._audit import targets
from mailmcp._toolkit import ToolContext
from mailmcp.mcp._app import MCPApp
from mailmcp.mcp._jsonrpc import encode
from mailmcp.mcp._results import ToolText, plain_json, plain_json_bytes
from mailmcp.testing import (
    FakeIMAPPool,
    FakeIMAPServer,
    FakeTokenVerifier,
    make_account,
    tool_services,
)
from mailmcp.tools import all_tools
from mailmcp.tools._reading import (
    SUMMARY_ITEMS,
    ListMessagesInput,
    list_mail_messages,
    list_mail_messages_data,
    summarise,
    summary_data,
)
from tests.helpers import run

BASE = "https://mail.example.test"
TOKEN = "good-token"


def _message(subject: str, **headers: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message["Subject"] = subject
    message.set_content("hello")
    return message.as_bytes()


def _attachment() -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Bob <bob@example.test>"
    message["Subject"] = "report"
    message.set_content("see attached")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf",
                           filename="report.pdf")
    return message.as_bytes()


@pytest.fixture
def server() -> FakeIMAPServer:
    """An INBOX of varied messages: names, encodings, groups, no Date, attachments, bare."""
    server = FakeIMAPServer()
    box = server.mailbox("INBOX")
    box.add(_message("Réunion — ünïcode ✓", From="Zoë Exämple <zoe@example.test>",
                     To="a@example.test, B <b@example.test>", Cc="c@example.test",
                     Date="Tue, 07 Jan 2025 10:00:00 +0000", Message_ID="<1@example.test>"),
            {"\\Seen", "\\Flagged"})
    box.add(_message("=?utf-8?q?encoded_=C3=A9?=", From="=?utf-8?b?w4lsw6hu?= <e@example.test>",
                     To="undisclosed-recipients:;"), {"\\Answered", "$Label"})
    box.add(_message("no date, quotes \" and \\ backslash", From="x@example.test"))
    box.add(_attachment(), {"\\SEEN"})
    box.add(b"\r\nno headers at all\r\n")
    box.add(_message("tab\tand control \x7f chars", From='"Last, First" <lf@example.test>'))
    return server


def _context(server: FakeIMAPServer) -> ToolContext:
    services = tool_services(reactor=MemoryReactorClock(), imap=FakeIMAPPool(server))
    return ToolContext(account=make_account(), services=services)


def _listing_tool() -> Any:
    (tool,) = [t for t in all_tools() if t.name == "list_mail_messages"]
    return tool


def test_summary_data_is_what_the_model_path_serialises(server: FakeIMAPServer) -> None:
    """For every message, the plain summary equals the MessageSummary's JSON dump."""
    session = server.session()
    run(session.examine("INBOX"))
    fetched = run(session.fetch("1:*", SUMMARY_ITEMS, uid=False))
    assert len(fetched) == 6
    for message in fetched:
        model = summarise(message).model_dump(mode="json", by_alias=True)
        assert summary_data(message) == model


def test_a_message_is_summarised_once(server: FakeIMAPServer) -> None:
    """
    The same message object gives the same summary back (the IMAP layer
    hands out one object per listing line it has read); another object with
    equal fields gets its own, equal summary.
    """
    session = server.session()
    run(session.examine("INBOX"))
    message = run(session.fetch("1", SUMMARY_ITEMS, uid=False))[0]
    first = summary_data(message)
    assert summary_data(message) is first
    twin = attrs.evolve(message)
    assert twin == message and twin is not message
    assert summary_data(twin) is not first and summary_data(twin) == first


def test_the_summary_memo_is_bounded(server: FakeIMAPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full, the memo of summaries drops its oldest quarter (and the messages it kept alive)."""
    from mailmcp.tools import _reading

    monkeypatch.setattr(_reading, "SUMMARIES_MAX", 4)
    _reading._SUMMARIES.clear()
    session = server.session()
    run(session.examine("INBOX"))
    fetched = run(session.fetch("1:*", SUMMARY_ITEMS, uid=False))
    for message in fetched[:5]:
        summary_data(message)
    assert len(_reading._SUMMARIES) == 4
    assert id(fetched[0]) not in _reading._SUMMARIES and id(fetched[4]) in _reading._SUMMARIES


def test_the_plain_listing_fits_the_declared_output_schema(server: FakeIMAPServer) -> None:
    """
    The handler's data validates against the tool's outputSchema (the one
    tools/list declares), and the model built from it dumps back to it.
    """
    tool = _listing_tool()
    assert tool.handler is list_mail_messages_data
    data = run(list_mail_messages_data(_context(server), ListMessagesInput(per_page=50)))
    assert len(data["messages"]) == 6
    schema = tool.output_model.model_json_schema(mode="serialization")
    jsonschema.Draft202012Validator(schema).validate(data)
    model = run(list_mail_messages(_context(server), ListMessagesInput(per_page=50)))
    assert model.model_dump(mode="json", by_alias=True) == data
    # The schema is strict enough to notice a wrong shape.
    broken = dict(data, messages=[dict(data["messages"][0], seen="yes")])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def _fired(stub: StubTreq, d: Deferred[Any]) -> Any:
    stub.flush()
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Failure), results
    return results[0]


def test_tools_call_over_http_text_is_the_structured_content(server: FakeIMAPServer) -> None:
    """
    Through /mcp: structuredContent validates against the outputSchema from
    tools/list, and the text content parses to exactly it (non-ASCII as UTF-8).
    """
    services = tool_services(reactor=MemoryReactorClock(), imap=FakeIMAPPool(server))
    config = type("Config", (), {"base_url": BASE, "allowed_origins": (),
                                 "max_request_body": 1 << 20})()
    app = MCPApp(config, FakeTokenVerifier({TOKEN: make_account()}), services, all_tools())
    stub = StubTreq(app.resource())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-11-25"}

    def rpc(method: str, params: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        response = _fired(stub, stub.post(f"{BASE}/mcp", data=body.encode(), headers=headers))
        raw = _fired(stub, response.content())
        assert response.code == 200
        return raw, json.loads(raw)

    _, listed = rpc("tools/list", {})
    (described,) = [t for t in listed["result"]["tools"] if t["name"] == "list_mail_messages"]
    raw, called = rpc("tools/call", {"name": "list_mail_messages", "arguments": {}})
    result = called["result"]
    assert result["isError"] is False
    jsonschema.Draft202012Validator(described["outputSchema"]).validate(result["structuredContent"])
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert "Réunion — ünïcode ✓".encode() in raw  # UTF-8, not \\u-escaped
    assert [m["uid"] for m in result["structuredContent"]["messages"]] == [6, 5, 4, 3, 2, 1]


def test_plain_json_keeps_utf8_and_falls_back_on_what_orjson_refuses() -> None:
    """Compact UTF-8 JSON; a lone surrogate or a huge integer goes through json and still encodes."""
    assert plain_json({"s": "é✓", "n": [1, None, True]}) == '{"s":"é✓","n":[1,null,true]}'
    odd = {"s": "a\ud800b", "n": 2**70}
    text = plain_json(odd)
    assert json.loads(text) == odd
    raw = ToolText(text).message(1)
    raw.decode("utf-8")
    assert json.loads(json.loads(raw)["result"]["content"][0]["text"]) == odd


def test_the_audit_trail_reads_plain_output_like_the_model() -> None:
    """Recipients in a plain output count for the audit entry as a model's would."""
    output = {"recipients": [{"address": "a@one.test"}, {"address": "b@two.test"}]}
    assert targets({"folder": "INBOX"}, output) == {
        "folder": "INBOX", "recipients": 2, "recipient_domains": ["one.test", "two.test"]}
    assert targets({"folder": "INBOX"}, {"messages": []}) == {"folder": "INBOX"}


@pytest.mark.parametrize("request_id", [7, "req-é", 2**70])
def test_tool_text_message_is_what_encode_would_write(request_id: Any) -> None:
    """
    The response ToolText assembles (bytes, orjson) parses to the same
    message `encode` writes for the shaped result, with _meta and every
    key, and the text content is exactly the structuredContent's JSON.
    """
    structured = {"s": "Zoë ✓ \"quoted\" \\ \n\t\x01", "n": [1, None], "u": "\u2028"}
    tool_text = ToolText(plain_json(structured))
    tool_text.keys = frozenset({"structuredContent", "isError", "resultType"})
    tool_text.meta = {"io.modelcontextprotocol/serverInfo": {"name": "mailmcp"}}
    raw = tool_text.message(request_id)
    expected = encode({"jsonrpc": "2.0", "id": request_id, "result": {
        "content": [{"type": "text", "text": tool_text.text}],
        "structuredContent": structured, "isError": False, "resultType": "complete",
        "_meta": tool_text.meta}})
    got, want = json.loads(raw), json.loads(expected)
    assert json.loads(got["result"]["content"][0]["text"]) == structured
    if request_id == 2**70:
        # orjson refuses it: the ASCII path (as for a lone surrogate) writes
        # the same JSON \u-escaped, the text re-encoded by the standard library.
        raw.decode("ascii")
        got["result"]["content"] = want["result"]["content"]
    else:
        assert "Zoë ✓".encode() in raw
    assert got == want


_json_ready = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(data=st.dictionaries(st.text(max_size=6), _json_ready, max_size=5))
def test_tool_text_from_orjson_bytes_writes_what_the_text_path_writes(data: dict[str, Any]) -> None:
    """
    Kept as orjson's bytes (never decoded), a result is written byte for
    byte as from its text: quotes, backslashes, control characters, U+2028
    and non-ASCII alike.
    """
    body = plain_json_bytes(data)
    assert isinstance(body, bytes)
    from_bytes, from_text = ToolText(body), ToolText(body.decode("utf-8"))
    for tool_text in (from_bytes, from_text):
        tool_text.keys = frozenset({"structuredContent", "isError"})
    assert from_bytes.message(5) == from_text.message(5)
    assert from_bytes.text == plain_json(data)
