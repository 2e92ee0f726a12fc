"""
Two processes starting at once on a fresh state directory end up with one
key ring (issue 17): each runs the daemon's own `load_or_create_keyring`,
released at the same moment, round after round, and every process of a round
must hold the ring that is on disk.  Before the exclusive create, the loser
of a round overwrote the winner's keys.json, so one process sealed tokens
the other could not open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mailmcp.oauth._keyring import KEYRING_FILENAME, read_keyring_file
from tests.harness import ROOT

#: One process: for each state directory read from stdin, load (or create)
#: its key ring at once and print the ring's key ids and a subkey digest.
WORKER = """
import hashlib, json, sys
from pathlib import Path
from mailmcp.oauth._keyring import load_or_create_keyring
print("ready", flush=True)
for line in sys.stdin:
    ring = load_or_create_keyring(Path(line.strip()), None, {})
    digest = hashlib.sha256(ring.current_subkey("race")[1]).hexdigest()
    print(json.dumps([ring.kids, digest]), flush=True)
"""

ROUNDS = 40
PROCESSES = 3


def test_processes_starting_together_share_one_key_ring(tmp_path: Path) -> None:
    """
    In every round, all processes released together on a fresh state dir
    return the same ring, and it is the one in keys.json (no temporary file
    left behind).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if k != "MAILMCP_KEYS"}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        for number in range(ROUNDS):
            state = tmp_path / f"state{number}"
            state.mkdir(mode=0o700)
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"{state}\n")
            for worker in workers:  # released as close together as pipes allow
                assert worker.stdin is not None
                worker.stdin.flush()
            answers = [json.loads(w.stdout.readline()) for w in workers if w.stdout is not None]
            on_disk = read_keyring_file(state / KEYRING_FILENAME)
            assert all(kids == on_disk.kids for kids, _ in answers), (number, answers, on_disk.kids)
            assert len({digest for _, digest in answers}) == 1, (number, answers)
            assert sorted(p.name for p in state.iterdir()) == [KEYRING_FILENAME]
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in workers:
            assert worker.wait(timeout=30) == 0
