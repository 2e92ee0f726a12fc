"""
Staged key rotation across two real daemons sharing one Redis store:
``mailmcp-generate --add-key --inactive`` then ``--activate-key KID``, each
followed by a rolling restart.  At every step, tokens minted by either running
daemon (access and refresh tokens from a real login, a client id provisioned
with its key ring) are accepted by the other.  A control shows the trap the
stages avoid: a key activated at once on one daemon makes its tokens
unreadable at the other.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import httpx2
import pytest

from benchmarks._clients import oauth_login
from benchmarks._http import Connection
from mailmcp._keyring import read_keyring_file
from tests.harness import Daemon, Services, free_port, generate_client
from tests.hostile import mcp_http
from tests.integration.test_generate import generate_json, sealed_kid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def kid_of(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


class Cluster:
    """Two daemons, A and B, behind one base URL, each with its own state dir (own key ring copy)."""

    def __init__(self, services: Services, tmp_path: Path) -> None:
        self.services = services
        self.tmp_path = tmp_path
        self.base = f"http://127.0.0.1:{free_port()}"
        self.states = {name: tmp_path / name / "state" for name in "AB"}
        self.daemons: dict[str, Daemon] = {}

    def start(self, name: str) -> Daemon:
        old = self.daemons.pop(name, None)
        if old is not None:
            assert old.stop() == 0
        daemon = Daemon.start(self.states[name], self.services,
                              ["--store", self.services.redis_url, "--base-url", self.base])
        self.daemons[name] = daemon
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()

    def client_kid(self, client_id: str) -> str:
        """The key a compact client id is sealed under, among both daemons' keys."""
        kids = {k for state in self.states.values() if (state / "keys.json").exists()
                for k in read_keyring_file(state / "keys.json").kids}
        return sealed_kid(client_id, sorted(kids))

    def copy_ring(self, source: str, target: str) -> None:
        shutil.copy2(self.states[source] / "keys.json", self.states[target] / "keys.json")

    def login(self, name: str, client: dict[str, Any]) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            conn = Connection(self.daemons[name].base_url, timeout=60)
            try:
                return await oauth_login(self.base, client, "alice@example.test", "alicepw", conn)
            finally:
                conn.close()

        return asyncio.run(run())

    def accepts_access(self, name: str, access_token: str) -> bool:
        status, body = mcp_http.rpc(self.daemons[name].base_url, access_token, "tools/list")
        return status == 200 and body is not None and "result" in body

    def refresh(self, name: str, client: dict[str, Any], refresh_token: str) -> httpx2.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": client["client_id"], "client_secret": client["client_secret"]}
        return httpx2.post(self.daemons[name].base_url + "/oauth/token", data=form, timeout=30)

    def authorize_page(self, name: str, client: dict[str, Any]) -> int:
        params = {"response_type": "code", "client_id": client["client_id"],
                  "redirect_uri": "http://127.0.0.1:34567/callback", "state": "s",
                  "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                  "code_challenge_method": "S256"}
        return httpx2.get(self.daemons[name].base_url + "/oauth/authorize", params=params,
                          timeout=30).status_code

    def assert_interchangeable(self, client: dict[str, Any], expect_kid: dict[str, str]) -> None:
        """
        Tokens minted by each daemon (sealed under the key it encrypts with,
        C{expect_kid}) work at every daemon: access token at /mcp, refresh
        token at /oauth/token, and a client id provisioned from its key ring.
        """
        for minter in "AB":
            tokens = self.login(minter, client)
            assert kid_of(tokens["access_token"]) == expect_kid[minter]
            assert kid_of(tokens["refresh_token"]) == expect_kid[minter]
            own_client = generate_client(self.states[minter], self.services)
            assert self.client_kid(own_client["client_id"]) == expect_kid[minter]
            for other in "AB":
                assert self.accepts_access(other, tokens["access_token"]), (minter, other)
                assert self.authorize_page(other, own_client) == 200, (minter, other)
            other = "B" if minter == "A" else "A"
            fresh = self.refresh(other, client, tokens["refresh_token"])
            assert fresh.status_code == 200, (minter, other, fresh.text)
            assert self.accepts_access(minter, fresh.json()["access_token"]), (minter, other)


def test_staged_rotation_keeps_every_token_valid_at_every_step(services: Services, tmp_path: Path) -> None:
    """
    The staggered rollout: (0) A and B share key k0; (1) k1 added inactive
    and B restarted with it; (2) A restarted with it; (3) k1 activated and B
    restarted (B now encrypts with k1, A can already open it); (4) A
    restarted.  At every step every token works at both daemons.
    """
    cluster = Cluster(services, tmp_path)
    try:
        cluster.start("A")
        cluster.states["B"].mkdir(mode=0o700, parents=True)
        cluster.copy_ring("A", "B")
        cluster.start("B")
        client = generate_client(cluster.states["A"], services)
        k0 = cluster.client_kid(client["client_id"])
        cluster.assert_interchangeable(client, {"A": k0, "B": k0})

        staged = generate_json(tmp_path, "--add-key", "--inactive", "--state-dir", str(cluster.states["B"]))
        k1 = staged["kids"][-1]
        assert staged["current_kid"] == k0 and staged["inactive_kids"] == [k1]
        cluster.start("B")
        cluster.assert_interchangeable(client, {"A": k0, "B": k0})
        cluster.copy_ring("B", "A")
        cluster.start("A")
        cluster.assert_interchangeable(client, {"A": k0, "B": k0})

        active = generate_json(tmp_path, "--activate-key", k1, "--state-dir", str(cluster.states["B"]))
        assert active["current_kid"] == k1 and active["inactive_kids"] == []
        cluster.start("B")
        cluster.assert_interchangeable(client, {"A": k0, "B": k1})
        cluster.copy_ring("B", "A")
        cluster.start("A")
        cluster.assert_interchangeable(client, {"A": k1, "B": k1})
    finally:
        cluster.stop()


def test_unstaged_rotation_breaks_the_other_daemon(services: Services, tmp_path: Path) -> None:
    """
    The control: a key added active at once (plain --add-key) on B only.
    B's new tokens are refused by A (401), which is why several processes
    rotate in stages.
    """
    cluster = Cluster(services, tmp_path)
    try:
        cluster.start("A")
        cluster.states["B"].mkdir(mode=0o700, parents=True)
        cluster.copy_ring("A", "B")
        rotated = generate_json(tmp_path, "--add-key", "--state-dir", str(cluster.states["B"]))
        cluster.start("B")
        client = generate_client(cluster.states["A"], services)
        tokens = cluster.login("B", client)
        assert kid_of(tokens["access_token"]) == rotated["current_kid"]
        assert cluster.accepts_access("B", tokens["access_token"])
        assert not cluster.accepts_access("A", tokens["access_token"])
    finally:
        cluster.stop()
