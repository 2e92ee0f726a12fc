"""
Fixtures shared by the whole suite.

``services`` starts the real loopback servers once per test run (see
`tests.harness`); ``s3`` adds SeaweedFS on first use.  Tests that need no
server do not pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ARTIFACTS, Daemon, Services


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
