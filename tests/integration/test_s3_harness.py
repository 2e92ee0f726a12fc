"""
The harness starts SeaweedFS when the first test needs it, often minutes
after the other servers.  A CI run once lost all its S3 tests because a port
picked for it at session start was no longer free by then; these tests hold
the harness to picking its ports where outgoing connections do not take
them, and to starting anyway when one of them is taken.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing

import pytest

from tests import harness
from tests.harness import Services

pytestmark = pytest.mark.integration


def test_port_blocks_stay_out_of_the_ephemeral_range() -> None:
    """Every block lies outside the kernel's range for outgoing connections' local ports."""
    low, high = harness._ephemeral_ports()
    for _ in range(50):
        base = harness.free_port_block(11)
        assert base + 11 <= low or base > high, (base, low, high)


@pytest.fixture
def own_services() -> Iterator[Services]:
    """A set of servers of its own, so that its SeaweedFS starts here and nowhere else."""
    services = Services.start()
    try:
        yield services
    finally:
        services.stop()


def test_seaweedfs_starts_on_new_ports_when_one_is_taken(
    own_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The first block's master port is held by another socket: SeaweedFS
    exits, services.sh says so at once (not after its 20 s wait) and cleans
    up, and the harness starts it on a second block, where it serves S3.
    """
    blocks = [harness.free_port_block(11), harness.free_port_block(11)]
    while abs(blocks[1] - blocks[0]) < 11:
        blocks[1] = harness.free_port_block(11)
    picked = iter(blocks)
    monkeypatch.setattr(harness, "free_port_block", lambda size: next(picked))
    master_port = blocks[0] + 1 + 2  # S3 port, then the block: s3 grpc, master, ...
    with closing(socket.socket()) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", master_port))
        taken.listen()
        started = time.monotonic()
        own_services.start_s3()
        elapsed = time.monotonic() - started
    assert own_services.s3_started
    assert own_services.s3_port == blocks[1]
    assert elapsed < 15, f"the failed start was waited out ({elapsed:.1f} s)"
    try:
        with urllib.request.urlopen(own_services.s3_endpoint + "/", timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status in (200, 403)
