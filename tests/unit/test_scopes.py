"""
Scopes without sockets: the authorization server (`OAuthApp` on a StubTreq,
see `tests.unit.oauth_helpers`) and ``/mcp`` (`MCPApp` with the real tools
and mail services that fail the test if touched).  Case ids (SC-xx) refer to
docs/threat-model.rst.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from twisted.internet.defer import Deferred

from mailmcp._scopes import (
    ALL_SCOPES,
    FULL,
    UnknownScope,
    format_scope,
    parse_scope,
    parse_scope_list,
    scopes_of_claim,
)
from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._clients import open_client, provision_client
from mailmcp.oauth._grants import GrantService, client_ref
from mailmcp.oauth._verifier import GrantTokenVerifier
from mailmcp.testing import FakeTokenVerifier, make_account, make_config, tool_services
from mailmcp.tools import all_tools
from tests.unit.mcp_client import Client, call
from tests.unit.oauth_helpers import BASE, IMAP, REDIRECT, SMTP, Server, make_server, pkce

ALL = "mail.read mail.organize mail.draft mail.send mail.delete"
PRM_URL = f"{BASE}/.well-known/oauth-protected-resource/mcp"

#: The contract: which scope(s) each tool needs (reply/forward: by mode).
CONTRACT: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        [
            "list_mailboxes",
            "list_mail_messages",
            "get_mail_message",
            "search_mail_messages",
            "get_mail_attachment_link",
            "get_mail_thread",
            "get_mailbox_changes",
        ],
        frozenset({"mail.read"}),
    ),
    **dict.fromkeys(
        [
            "move_mail_message",
            "update_mail_message_flags",
            "create_mailbox",
            "rename_mailbox",
            "delete_mailbox",
        ],
        frozenset({"mail.organize"}),
    ),
    "create_draft_mail_message": frozenset({"mail.draft"}),
    "send_mail_message": frozenset({"mail.send"}),
    "delete_mail_message": frozenset({"mail.delete"}),
    "reply_mail_message": frozenset({"mail.draft", "mail.send"}),
    "forward_mail_message": frozenset({"mail.draft", "mail.send"}),
}


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return make_server(tmp_path)


def location(response: Any) -> str:
    return str(response.headers.getRawHeaders(b"location")[0].decode())


def offered_boxes(body: bytes) -> dict[str, bool]:
    """The scope checkboxes of a login page: value -> ticked."""
    boxes = {}
    for tag in re.findall(rb'<input type="checkbox" name="scope"[^>]*>', body):
        value = re.search(rb'value="([^"]+)"', tag)
        assert value is not None
        boxes[value.group(1).decode()] = b'checked="checked"' in tag
    return boxes


def login_with(server: Server, params: dict[str, str], ticked: list[str]) -> tuple[Any, bytes]:
    """Log alice in, ticking exactly C{ticked} (one value per checkbox)."""
    return server.login(params=params, extra={"scope": " ".join(ticked)})


def redeem_scoped(server: Server, requested: str | None, ticked: list[str]) -> dict[str, Any]:
    verifier, challenge = pkce()
    params = server.authorize_params(code_challenge=challenge, scope=requested)
    response, body = login_with(server, params, ticked)
    assert response.code == 303, body
    code = parse_qs(urlsplit(location(response)).query)["code"][0]
    response, tokens = server.redeem(code, verifier)
    assert response.code == 200, tokens
    return tokens


# -- the scope values ----------------------------------------------------------


def test_scope_parsing() -> None:
    """No scope, an empty one or the legacy ``mail`` mean all five; unknown values raise."""
    assert parse_scope(None) == parse_scope("") == parse_scope("mail") == FULL
    assert parse_scope("mail.send  mail.read") == {"mail.read", "mail.send"}
    with pytest.raises(UnknownScope):
        parse_scope("mail.read offline_access")
    assert format_scope({"mail.delete", "mail.read"}) == "mail.read mail.delete"
    assert parse_scope_list("mail.read,mail.draft") == {"mail.read", "mail.draft"}
    with pytest.raises(ValueError, match="unknown scope 'mail.all'"):
        parse_scope_list("mail.all")


def test_legacy_claims_keep_all_five() -> None:
    """SC-06: a token from before scopes (no claim, or ``mail``) keeps all five; a damaged claim grants nothing."""
    assert scopes_of_claim(None) == scopes_of_claim("mail") == FULL
    assert scopes_of_claim("mail.read") == {"mail.read"}
    assert scopes_of_claim(7) == scopes_of_claim("") == scopes_of_claim("mail.root") == frozenset()


def test_every_tool_declares_the_contract_scopes() -> None:
    """Each registered tool carries exactly the scope(s) of the contract table, next to its declaration."""
    for tool in all_tools():
        assert tool.name in CONTRACT, f"{tool.name} has no row in the scope contract"
        assert tool.scopes == CONTRACT[tool.name], tool.name
        assert (tool.scopes_for is not None) == (tool.name in ("reply_mail_message", "forward_mail_message"))


# -- discovery -----------------------------------------------------------------


def test_metadata_advertises_the_five_scopes(server: Server) -> None:
    """Both PRM paths and the AS metadata list the five scopes as scopes_supported."""
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
    ):
        _, body = server.request("GET", path)
        assert json.loads(body)["scopes_supported"] == list(ALL_SCOPES)


# -- the authorization request and the login page -------------------------------


@pytest.mark.parametrize("requested", [None, "", "mail", "mail mail.read"])
def test_no_scope_or_legacy_mail_offers_all_five(server: Server, requested: str | None) -> None:
    """No scope, or the legacy mail, pre-ticks all five checkboxes, in plain words."""
    response, body, _, _ = server.get_form(server.authorize_params(scope=requested))
    assert response.code == 200
    assert offered_boxes(body) == dict.fromkeys(ALL_SCOPES, True)
    assert b"Read and search your mail" in body and b"Send mail in your name" in body


def test_page_offers_what_the_client_asked_for(server: Server) -> None:
    """A request for mail.read and mail.draft shows those two checkboxes, ticked, and no other."""
    _, body, _, _ = server.get_form(server.authorize_params(scope="mail.draft mail.read"))
    assert offered_boxes(body) == {"mail.read": True, "mail.draft": True}


def test_narrowed_grant_carries_its_scopes(server: Server) -> None:
    """SC-04: unticking narrows the grant: token response scope, the token's account, and every refresh keep it."""
    tokens = redeem_scoped(server, None, ["mail.read", "mail.draft"])
    assert tokens["scope"] == "mail.read mail.draft"
    assert server.account(tokens["access_token"]).scopes == {"mail.read", "mail.draft"}
    refresh = tokens["refresh_token"]
    for _ in range(2):
        response, fresh = server.refresh(refresh)
        assert response.code == 200, fresh
        assert fresh["scope"] == "mail.read mail.draft"
        assert server.account(fresh["access_token"]).scopes == {"mail.read", "mail.draft"}
        refresh = fresh["refresh_token"]


def test_full_grant_reports_all_five(server: Server) -> None:
    """A grant left as offered (all five) says so in the token response."""
    tokens = redeem_scoped(server, "mail", list(ALL_SCOPES))
    assert tokens["scope"] == ALL
    assert server.account(tokens["access_token"]).scopes == FULL


@pytest.mark.parametrize("ticked", [["mail.read", "mail.send"], ["mail.read", "mail.everything"], ["mail"]])
def test_widening_or_unknown_submission_is_refused(server: Server, ticked: list[str]) -> None:
    """SC-02: a form offering mail.read that comes back with more, or an unknown value, is the error page; nothing is issued, no mail server asked."""
    params = server.authorize_params(scope="mail.read")
    response, body = login_with(server, params, ticked)
    assert response.code == 400
    assert not response.headers.hasHeader(b"location")
    assert b"not offered" in body
    assert server.store.grants == {}
    assert server.imap.calls == [] and server.smtp.calls == []


def test_nothing_ticked_rerenders_the_form(server: Server) -> None:
    """At least one scope: unticking everything re-renders the form with a line saying so; nothing issued."""
    params = server.authorize_params()
    response, body = login_with(server, params, [])
    assert response.code == 400
    assert b"choose at least one thing the assistant may do" in body
    assert offered_boxes(body) == dict.fromkeys(ALL_SCOPES, False)
    assert server.store.grants == {} and server.imap.calls == []


def test_edited_offer_fails_the_csrf_check(server: Server) -> None:
    """SC-02: the offer travels in the form, bound to the CSRF token: widening it in the page is refused."""
    params = server.authorize_params(scope="mail.read")
    _, body, cookie, csrf = server.get_form(params)
    form = dict(params, requested_scope=ALL, scope="mail.send", email="alice@example.test",
                imap_username="alice@example.test", imap_password="alice-pw",
                use_same_credentials="1", csrf_token=csrf)
    response, body = server.request(
        "POST", "/oauth/authorize", data=form,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 403
    assert server.store.grants == {} and server.imap.calls == []


def test_unticked_choice_is_kept_on_a_rerender(server: Server) -> None:
    """A wrong password re-renders the form with the user's ticks, not the client's."""
    params = server.authorize_params()
    response, body = server.login(password="wrong", params=params, extra={"scope": "mail.read"})
    assert response.code == 400
    assert offered_boxes(body) == {s: s == "mail.read" for s in ALL_SCOPES}


# -- caps ------------------------------------------------------------------------


def test_client_cap_is_sealed_in_the_client_id(server: Server) -> None:
    """SC-05: a client provisioned with --scope mail.read is offered only mail.read, whatever it asks for."""
    read_only, secret = provision_client(server.codec, IMAP, SMTP, [REDIRECT], scopes=frozenset({"mail.read"}))
    assert open_client(server.codec, read_only).scopes == {"mail.read"}
    _, body, _, _ = server.get_form(server.authorize_params(client_id=read_only))
    assert offered_boxes(body) == {"mail.read": True}
    # A request for a scope outside the cap only: nothing left to offer.
    response, _, _, _ = server.get_form(server.authorize_params(client_id=read_only, scope="mail.send"))
    assert response.code == 303
    assert parse_qs(urlsplit(location(response)).query)["error"] == ["invalid_scope"]
    # The whole flow: the token carries mail.read only.
    server.client_id, server.client_secret = read_only, secret or ""
    tokens = redeem_scoped(server, None, ["mail.read"])
    assert tokens["scope"] == "mail.read"


def test_client_ids_without_a_cap_allow_all_five(server: Server) -> None:
    """Client ids provisioned before scopes (no claim) allow all five."""
    assert open_client(server.codec, server.client_id).scopes == FULL


def test_max_scope_narrows_every_request(tmp_path: Path) -> None:
    """SC-05: --max-scope narrows requests (not refused) and the page shows only the allowed scopes."""
    server = make_server(tmp_path, max_scope=frozenset({"mail.read", "mail.draft"}))
    _, body, _, _ = server.get_form(server.authorize_params(scope="mail"))
    assert offered_boxes(body) == {"mail.read": True, "mail.draft": True}
    tokens = redeem_scoped(server, ALL, ["mail.read", "mail.draft"])
    assert tokens["scope"] == "mail.read mail.draft"
    checks = len(server.imap.calls)
    response, body = login_with(server, server.authorize_params(), ["mail.send"])
    assert response.code == 400 and b"not offered" in body
    assert len(server.imap.calls) == checks


# -- legacy tokens ---------------------------------------------------------------


def test_tokens_from_before_scopes_keep_full_access(server: Server) -> None:
    """SC-06: an access or refresh token sealed with sc="mail" (as before) still grants all five, also after refresh."""
    tokens = server.tokens()
    access = server.codec.open("access", tokens["access_token"])
    refresh = server.codec.open("refresh", tokens["refresh_token"])
    for claims in (access, refresh):
        claims["sc"] = "mail"
        for k in ("typ", "iat", "exp"):
            claims.pop(k)
    legacy_access = server.codec.seal("access", access, 600)
    legacy_refresh = server.codec.seal("refresh", refresh, 600)
    assert server.account(legacy_access).scopes == FULL
    response, fresh = server.refresh(legacy_refresh)
    assert response.code == 200, fresh
    assert fresh["scope"] == ALL
    assert server.account(fresh["access_token"]).scopes == FULL
    no_claim = {k: v for k, v in access.items() if k != "sc"}
    assert server.account(server.codec.seal("access", no_claim, 600)).scopes == FULL
    assert client_ref(server.client_id) == access["cl"]


# -- /mcp --------------------------------------------------------------------------


class Tripwire:
    """Mail services that record any use: a refused call must never reach them."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.touched.append(name)
        raise RuntimeError(f"mail service used: {name}")


def scoped_client(*scopes: str) -> tuple[Client, Any]:
    account = attrs.evolve(make_account(), scopes=frozenset(scopes))
    services = tool_services(imap=Tripwire(), smtp=Tripwire())
    config = make_config(base_url=BASE, max_request_body=1 << 20)
    app = MCPApp(config, FakeTokenVerifier({"good-token": account}), services, all_tools())
    return Client(app), services


def listed(client: Client) -> set[str]:
    code, body = client.rpc({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert code == 200, body
    return {tool["name"] for tool in body["result"]["tools"]}


def test_tools_list_shows_only_what_the_token_allows() -> None:
    """SC-03: each scope set sees exactly its tools; reply/forward show with mail.draft or mail.send."""
    names = {t.name for t in all_tools()}
    read = {n for n in names if CONTRACT[n] == {"mail.read"}}
    assert listed(scoped_client("mail.read")[0]) == read
    assert listed(scoped_client("mail.draft")[0]) == {
        "create_draft_mail_message", "reply_mail_message", "forward_mail_message"}
    assert listed(scoped_client("mail.delete")[0]) == {"delete_mail_message"}
    assert listed(scoped_client(*ALL_SCOPES)[0]) == names


SEND = {"to": ["bob@example.test"], "subject": "hi", "text_body": "hello"}
REPLY = {"folder": "INBOX", "uid": 1, "uidvalidity": 1, "text_body": "thanks"}


@pytest.mark.parametrize(("scopes", "tool", "arguments", "wanted"), [
    (("mail.read",), "send_mail_message", SEND, "mail.read mail.send"),
    (("mail.read", "mail.draft"), "delete_mail_message",
     {"folder": "INBOX", "uid": 1, "uidvalidity": 1}, "mail.read mail.draft mail.delete"),
    (("mail.draft",), "reply_mail_message", REPLY, "mail.draft mail.send"),
    (("mail.send",), "forward_mail_message", {**REPLY, "to": ["c@example.test"], "draft": True},
     "mail.draft mail.send"),
    (("mail.read",), "reply_mail_message", {**REPLY, "draft": True}, "mail.read mail.draft"),
    (("mail.read",), "send_mail_message", {"nonsense": 1}, "mail.read mail.send"),
])
def test_call_outside_the_scopes_is_403_step_up(scopes: tuple[str, ...], tool: str,
                                                arguments: dict[str, Any], wanted: str) -> None:
    """SC-03: the call gets 403 insufficient_scope naming needed + held scopes and the PRM; no mail service is touched."""
    client, services = scoped_client(*scopes)
    code, headers, content = client.request("POST", json.dumps(call(tool, arguments)).encode())
    assert code == 403
    challenge = headers.getRawHeaders(b"www-authenticate")[0].decode()
    assert challenge.startswith(
        f'Bearer error="insufficient_scope", scope="{wanted}", resource_metadata="{PRM_URL}"')
    assert json.loads(content)["error"] == "insufficient_scope"
    assert services.imap.touched == [] and services.smtp.touched == []


@pytest.mark.parametrize(("scopes", "tool", "arguments"), [
    (("mail.draft",), "reply_mail_message", {**REPLY, "draft": True}),
    (("mail.send",), "reply_mail_message", REPLY),
    (("mail.read",), "list_mailboxes", {}),
])
def test_call_inside_the_scopes_reaches_the_tool(scopes: tuple[str, ...], tool: str,
                                                 arguments: dict[str, Any]) -> None:
    """A call the token allows passes the gate and runs (here into the tripwire: an isError result, HTTP 200)."""
    client, services = scoped_client(*scopes)
    code, body = client.rpc(call(tool, arguments))
    assert code == 200, body
    assert body["result"]["isError"] is True
    assert services.imap.touched or services.smtp.touched


def test_401_challenge_names_all_five_scopes() -> None:
    """The 401 challenge names the PRM and the five scopes to ask for."""
    client, _ = scoped_client("mail.read")
    code, headers, _ = client.request("POST", b"{}", token=None)
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate") == [
        f'Bearer resource_metadata="{PRM_URL}", scope="{ALL}"'.encode()]


def test_provision_records_no_cap_for_all_five(server: Server) -> None:
    """A client with all five scopes seals no claim (ids stay as short as before)."""
    full, _ = provision_client(server.codec, IMAP, SMTP, [REDIRECT], scopes=FULL)
    assert "scope" not in server.codec.open("client", full)
    capped, _ = provision_client(server.codec, IMAP, SMTP, [REDIRECT], scopes=frozenset({"mail.send"}))
    assert server.codec.open("client", capped)["scope"] == "mail.send"


def test_tools_list_is_not_for_shared_caches() -> None:
    """The 2026 tools/list result depends on the token, so it is cacheScope private."""
    from tests.unit.mcp_client import modern, modern_headers

    client, _ = scoped_client("mail.read")
    code, body = client.rpc(modern("tools/list"), modern_headers("tools/list"))
    assert code == 200, body
    assert body["result"]["cacheScope"] == "private"


def test_lowered_max_scope_narrows_existing_tokens(server: Server) -> None:
    """SC-05: tokens issued with all five, then --max-scope mail.read: at use and at refresh they allow reading only."""
    tokens = server.tokens()
    capped = GrantService(server.store, server.codec, BASE + "/mcp", 60, 3600, 86400,
                          max_scope=frozenset({"mail.read"}))
    assert server.run(GrantTokenVerifier(capped).verify(tokens["access_token"])).scopes == {"mail.read"}
    client = open_client(server.codec, server.client_id)
    fresh = server.run(Deferred.fromCoroutine(capped.refresh(client, tokens["refresh_token"], None)))
    assert fresh.scope == "mail.read"
