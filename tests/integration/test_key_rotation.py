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

from pathlib import Path

import pytest

from tests.harness import Services, generate_client
from tests.integration.cluster import Cluster, kid_of
from tests.integration.generate_cli import generate_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


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
