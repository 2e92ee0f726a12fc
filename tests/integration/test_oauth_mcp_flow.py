"""
End to end: a real ``twistd mailmcp`` daemon, real Dovecot and Postfix, and
the real ``mcp`` 2.x client (its `OAuthClientProvider`, in a plain-asyncio
subprocess) completing the whole OAuth flow with a pre-registered client --
confidential (``client_secret_post``) and public (``none``) -- then listing
and calling tools, then rotating and reusing a refresh token.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.harness import generate_client
from tests.integration.oauth_mcp_run import run_client

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["confidential", "public", "confidential-redis"])
def test_mcp_client_completes_oauth_flow(services, daemon_factory, tmp_path, kind) -> None:
    """The mcp client logs in through the login page, gets tokens, lists tools, reads the mailbox; rotation, the refresh grace and reuse detection hold (SQLite and Redis stores)."""
    store = ("--store", services.redis_url) if kind.endswith("redis") else ()
    daemon = daemon_factory(services, *store)
    extra = ("--public",) if kind == "public" else ()
    client = generate_client(daemon.state_dir, services, *extra)
    config = {
        "base": daemon.base_url,
        "client_id": client["client_id"],
        "client_secret": client.get("client_secret") if kind != "public" else None,
        "auth_method": "client_secret_post" if kind != "public" else "none",
        "redirect_uri": "http://127.0.0.1:9/callback",
        "user": "alice@example.test",
        "password": "alicepw",
        "call_tool": "list_mailboxes",
    }
    for method, body in (("POST", b'{"jsonrpc":"2.0","id":1,"method":"initialize"}'), ("GET", None)):
        request = urllib.request.Request(daemon.base_url + "/mcp", data=body, method=method,
                                         headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert refused.value.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{daemon.base_url}/.well-known/oauth-protected-resource/mcp"')
    out = run_client(config)
    assert (daemon.state_dir / "mailmcp.sqlite3").exists() == (not store)
    assert out["registered_dynamically"] is False
    assert "code_challenge" in out["authorization_url_params"]
    assert "resource" in out["authorization_url_params"]
    assert out["form_status"] == 200
    assert out["login_status"] == 303
    assert out["redirect_prefix"] == "http://127.0.0.1:9/callback"
    assert out["got_refresh_token"] is True
    assert "list_mailboxes" in out["tools"] and "send_mail_message" in out["tools"]
    assert out["call_is_error"] is False, out["call_text"]
    assert "INBOX" in out["call_text"]
    assert out["refresh_status"] == 200
    assert out["refresh_cache_control"] == "no-store"
    assert out["fresh_access_status"] == 200
    assert (out["grace_status"], out["grace_same_successor"]) == (200, True)
    assert out["second_refresh_status"] == 200
    assert (out["reuse_status"], out["reuse_error"]) == (400, "invalid_grant")
    assert out["after_reuse_access_status"] == 401
    assert out["after_reuse_www_authenticate"].startswith(
        f'Bearer resource_metadata="{daemon.base_url}/.well-known/oauth-protected-resource/mcp"')
