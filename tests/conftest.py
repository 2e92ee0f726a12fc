"""
Fixtures shared by the whole suite.

``services`` starts the real loopback servers once per test run (see
`tests.harness`); ``s3`` adds SeaweedFS on first use.  Tests that need no
server do not pay for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.harness import ARTIFACTS, Daemon, Services

# Property tests explore the same examples on every run ("ci", the default),
# so that a submission cannot pass or fail by luck; no per-example deadline,
# since a busy machine is not a failure.  A longer random exploration is its
# own command: HYPOTHESIS_PROFILE=fuzz pytest tests/hostile/test_hostile_fuzz.py
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", max_examples=5000, derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    running = Services.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def s3(services: Services) -> Services:
    services.start_s3()
    return services


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    """Start real ``twistd mailmcp`` processes; all are stopped afterwards."""
    started: list[Daemon] = []

    def start(services: Services | None = None, *extra: str, state_dir: Path | None = None,
              env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon.start(state_dir or tmp_path / "state", services, extra, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
