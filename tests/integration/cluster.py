"""Two daemons sharing one state store, for key rotation and scale-out tests."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import httpx2

from benchmarks._clients import oauth_login
from benchmarks._http import Connection
from mailmcp.oauth._keyring import read_keyring_file
from tests.harness import Daemon, Services, free_port, generate_client
from tests.hostile import mcp_http
from tests.integration.generate_cli import sealed_kid


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
