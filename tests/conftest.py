"""
Fixtures shared by the whole suite.

``services`` starts the real loopback servers once per test run (see
`tests.harness`); ``s3`` adds SeaweedFS on first use.  Tests that need no
server do not pay for them.  The fixtures that tests in both
``integration`` and ``hostile`` use live here too: headless Chromium and
its callback page (``browser``, ``callback_server``), the writing tools on
the real servers (``tools``) and scripted SMTP servers (``scripted``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from twisted.internet.endpoints import TCP4ServerEndpoint

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp._toolkit import ToolContext
from mailmcp.mail._smtp import SMTPSender
from mailmcp.mail.imap import IMAPPool
from mailmcp.testing import tool_services
from tests.harness import ARTIFACTS, Daemon, Services
from tests.helpers import ClockedReactor
from tests.integration.chromium import CHROME_FLAGS, CallbackPage

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


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Start scripted ESMTP servers on loopback (see `ScriptedFactory`); stopped afterwards."""
    from twisted.internet import reactor

    from tests.integration.mail_live import ScriptedFactory

    ports: list[Any] = []

    async def start(after_data: str) -> tuple[ScriptedFactory, int]:
        factory = ScriptedFactory(after_data)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        ports.append(port)
        return factory, port.getHost().port

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def tools(services: Services) -> Iterator[Any]:
    """Build ToolContexts over a real pool and sender; the pool is stopped afterwards."""
    from twisted.internet import reactor

    pools: list[IMAPPool] = []

    def make(acct: MailAccount, smtp_timeout: float = 20.0, smtp_clock: Any = None) -> ToolContext:
        """C{smtp_clock}: the sender's deadlines run on this Clock (real sockets still)."""
        pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=10.0)
        pools.append(pool)
        smtp_reactor = reactor if smtp_clock is None else ClockedReactor(reactor, smtp_clock)
        sender = SMTPSender(smtp_reactor, MailTLS(services.ca_file), timeout=smtp_timeout)
        return ToolContext(account=acct, services=tool_services(reactor=reactor, imap=pool,
                                                               smtp=sender))

    yield make
    for pool in pools:
        if pool.running or pool.open_connections:
            pytest_twisted.blockon(pool.stopService())


@pytest.fixture
def callback_server() -> Iterator[str]:
    """A tiny loopback HTTP listener playing the OAuth client's redirect target."""
    server = HTTPServer(("127.0.0.1", 0), CallbackPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    CallbackPage.hits = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium (the distribution's chromedriver), quit afterwards."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
