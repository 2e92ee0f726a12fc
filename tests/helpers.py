"""Small helpers shared by test modules."""

from __future__ import annotations

import smtplib
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mailmcp._account import MailAccount
from mailmcp.oauth._clients import MailServer

if TYPE_CHECKING:
    from tests.harness import Services

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Drive a coroutine that never really waits (the synchronous fakes answer
    at once) and return its result, or raise its exception.
    """
    outcome: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    assert outcome, "the coroutine waited on something the synchronous fakes never fire"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]  # type: ignore[no-any-return]


def live_account(services: Services, email: str, password: str, *, full_name: str,
                 smtp_security: str = "tls", smtp_host: str = "localhost", smtp_port: int | None = None,
                 smtp_password: str | None = None) -> MailAccount:
    """
    A `MailAccount` for a user of the test services: IMAP over TLS on
    localhost, SMTP with C{smtp_security} on that security's port unless
    C{smtp_port} is given, one password for both unless C{smtp_password}.
    """
    if smtp_port is None:
        smtp_port = {"tls": services.smtps_port, "starttls": services.submission_port,
                     "plain": services.smtp_plain_port}[smtp_security]
    return MailAccount(
        owner="grant-" + email,
        email=email,
        full_name=full_name,
        imap=MailServer(host="localhost", port=services.imaps_port, security="tls"),
        imap_username=email,
        imap_password=password,
        smtp=MailServer(host=smtp_host, port=smtp_port, security=smtp_security),  # type: ignore[arg-type]
        smtp_username=email,
        smtp_password=smtp_password if smtp_password is not None else password,
    )


class ClockedReactor:
    """
    The real reactor's network with a `Clock`'s time: for tests of real
    sockets where the code under test takes one reactor for both, so that a
    deadline is reached by ``clock.advance`` instead of by waiting for it.
    Everything but ``callLater``, ``seconds`` and ``getDelayedCalls`` is the
    real reactor's.
    """

    def __init__(self, network: Any, clock: Any) -> None:
        self._network = network
        self.clock = clock

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return float(self.clock.seconds())

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._network, name)


def _provide_reactor_interfaces() -> None:
    from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorTime
    from zope.interface import classImplements

    classImplements(ClockedReactor, IReactorTCP, IReactorTime, IReactorCore)


_provide_reactor_interfaces()


async def until(condition: Any, what: str, *, tries: int = 400, step: float = 0.025) -> None:
    """Poll C{condition} on the real reactor, a bounded number of times (not evidence by sleeping)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(tries):
        if condition():
            return
        await deferLater(reactor, step, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


def fresh_user(services: Services) -> tuple[str, str]:
    """
    A brand-new Dovecot user with an empty mailbox.  Dovecot notices the
    changed passwd-file only on a later lookup, so wait until LMTP knows the
    user (otherwise a delivery or a LOGIN right away may be refused).
    """
    email = f"r{uuid.uuid4().hex[:10]}@example.test"
    password = "pw-" + uuid.uuid4().hex[:8]
    services.add_user(email, password)
    deadline = time.monotonic() + 15
    while True:
        lmtp = smtplib.LMTP("127.0.0.1", services.lmtp_port)
        try:
            lmtp.ehlo_or_helo_if_needed()
            lmtp.mail("probe@example.test")
            code, _ = lmtp.rcpt(email)
            lmtp.rset()
        finally:
            lmtp.quit()
        if code == 250:
            return email, password
        if time.monotonic() > deadline:
            raise RuntimeError(f"Dovecot does not know the new user {email}")
        time.sleep(0.2)
