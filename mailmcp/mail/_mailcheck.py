"""
Live login checks for the login page: does the user's IMAP (and then SMTP)
server accept these credentials (a password, or a provider access token
with XOAUTH2/OAUTHBEARER)?

IMAP uses the IMAP pool's own protocol class and session, so the check
makes exactly the login the pool will make; SMTP uses Twisted's ESMTP
client.  Both are hardened the way the stack audit says: certificates
always verified (`MailTLS`), STARTTLS mandatory when the client id says
``starttls`` (no cleartext fallback), ``plain`` only to a loopback server,
one deadline over connect + TLS + greeting + login, and a lost connection
fails the check instead of hanging it.

Secrets never reach a log line: SMTP client exceptions carry the base64
transcript of the AUTH exchange in their ``str()``, so only the exception
*type* is ever logged, and callers see one of two exceptions with fixed,
safe messages.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer

from .._tls import MailTLS
from ..interfaces import ILoginChecker
from ..oauth._clients import MailServer
from ._mailbox_api import IMAPAuthError, IMAPError, IMAPLoginRefused
from ._sasl import SASLInputError, SMTPTokenAuthenticator, TokenSASL
from .imap import IMAPClientProtocol, Session

log = Logger()


class LoginRejected(Exception):
    """The server is reachable and said no to these credentials."""

    def __init__(self, protocol: str) -> None:
        super().__init__(f"{protocol} login failed")
        self.protocol = protocol


class MailServerUnavailable(Exception):
    """The server could not be reached, securely, in time, or spoke nonsense."""

    def __init__(self, protocol: str, reason: str = "unavailable") -> None:
        super().__init__(f"{protocol} server unavailable")
        self.protocol = protocol
        self.reason = reason


def _kind(failure: Failure | BaseException) -> str:
    value = failure.value if isinstance(failure, Failure) else failure
    return type(value).__name__


def _endpoint(
    reactor: Any, tls: MailTLS, server: MailServer, timeout: float
) -> IStreamClientEndpoint:
    tcp = TCP4ClientEndpoint(reactor, server.host, server.port, timeout=max(1, int(timeout)))
    if server.security == "tls":
        return wrapClientTLS(tls.options_for(server.host), tcp)
    return tcp


class _QuietOneShot(Factory):
    """
    `connectProtocol`'s one-shot factory without its "Starting factory" /
    "Stopping factory" log lines: two per check were noise at every login.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol


def _connect(endpoint: IStreamClientEndpoint, protocol: Protocol) -> Deferred[Any]:
    """Connect C{protocol} through C{endpoint}, quietly."""
    d: Deferred[Any] = endpoint.connect(_QuietOneShot(protocol))
    return d


def _has_control(*values: bytes) -> bool:
    return any(c in v for v in values for c in (b"\r", b"\n", b"\0"))


class _OnClock(policies.TimeoutMixin):
    """For a protocol client: TimeoutMixin's idle timer runs on C{_clock}, not the global reactor."""

    _clock: IReactorTime

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        return self._clock.callLater(delay, f, *args, **kw)


def _credentials(protocol: str, username: str, password: str) -> tuple[bytes, bytes]:
    """The UTF-8 user and secret; a line break or NUL in either is refused without a connection."""
    user, secret = username.encode("utf-8"), password.encode("utf-8")
    if _has_control(user, secret):
        raise LoginRejected(protocol)
    return user, secret


def _token_sasl(
    protocol: str, server: MailServer, username: str, token: str, mechanism: str
) -> TokenSASL | None:
    """The token login for C{mechanism}, None for ``password``."""
    if mechanism == "password":
        return None
    try:
        return TokenSASL(mechanism, username, token, host=server.host, port=server.port)
    except SASLInputError:
        raise LoginRejected(protocol) from None


def credentials_check(credentials: Any, protocol: str) -> tuple[MailServer, str, str, str]:
    """
    What to pass to the C{protocol} ("IMAP"/"SMTP") `ILoginChecker.check`
    for a grant's `Credentials`: server, username, password or access
    token, and the mechanism.
    """
    imap = protocol == "IMAP"
    server = credentials.imap if imap else credentials.smtp
    username = credentials.imap_username if imap else credentials.smtp_username
    if credentials.imap_auth != "password" and credentials.oauth is not None:
        return server, username, credentials.oauth.access_token, credentials.imap_auth
    password = credentials.imap_password if imap else credentials.smtp_password
    return server, username, password, "password"


@attrs.frozen(repr=False)
class _CheckedAccount:
    """What `Session.open` reads of an account, for one login check."""

    imap: MailServer
    imap_username: str
    imap_password: str
    imap_auth: str

    @property
    def uses_token(self) -> bool:
        return self.imap_auth != "password"

    @property
    def oauth(self) -> Any:
        return _Token(self.imap_password)


@attrs.frozen(repr=False)
class _Token:
    access_token: str


@implementer(ILoginChecker)
class IMAPLoginChecker:
    """
    The login the IMAP pool makes, with the pool's own protocol class and
    session (`mailmcp.mail.imap`): verified TLS (implicit, or mandatory
    STARTTLS), LOGIN or AUTHENTICATE PLAIN, or XOAUTH2/OAUTHBEARER with a
    provider token; then LOGOUT.  A check that passes is a login the pool
    will be able to make.

    :param reactor: provides `IReactorTCP` and `IReactorTime`.
    :param timeout: seconds for the whole check.
    """

    #: A check reads a greeting, CAPABILITY and a few short replies: a
    #: larger literal (IM-08), a longer line, or a reply to one command
    #: totalling more (a server streaming untagged lines) ends it.
    max_literal = 64 * 1024
    max_line = 64 * 1024
    max_response = 256 * 1024

    def __init__(self, reactor: Any, tls: MailTLS, timeout: float = 20.0) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout

    def check(
        self, server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        holder: list[IMAPClientProtocol] = []
        d = Deferred.fromCoroutine(self._check(server, username, password, holder, mechanism))
        d.addTimeout(self._timeout, self._reactor)

        def done(result: Any) -> Any:
            for proto in holder:
                if not proto.closed and proto.transport is not None:
                    proto.transport.abortConnection()  # type: ignore[attr-defined]
            if isinstance(result, Failure):
                if result.check(LoginRejected, MailServerUnavailable):
                    return result
                reason = (
                    "timeout" if result.check(defer.TimeoutError, defer.CancelledError) else "error"
                )
                log.info(
                    "IMAP check of {host}:{port} failed: {kind}",
                    host=server.host,
                    port=server.port,
                    kind=_kind(result),
                )
                raise MailServerUnavailable("IMAP", reason)
            return result

        d.addBoth(done)
        return d

    async def _check(
        self,
        server: MailServer,
        username: str,
        password: str,
        holder: list[IMAPClientProtocol],
        mechanism: str = "password",
    ) -> None:
        _credentials("IMAP", username, password)
        _token_sasl("IMAP", server, username, password, mechanism)
        options = self._tls.options_for(server.host) if server.security != "plain" else None
        # The check's own deadline (in `check`) is what ends a slow server.
        proto = IMAPClientProtocol(
            self._reactor,
            timeout=self._timeout + 1,
            max_line=self.max_line,
            max_literal=self.max_literal,
            max_response=self.max_response,
            label="login check",
        )
        holder.append(proto)
        await _connect(_endpoint(self._reactor, self._tls, server, self._timeout), proto)
        session = Session(proto)
        try:
            await session.open(_CheckedAccount(server, username, password, mechanism), options)
        except IMAPLoginRefused:
            raise LoginRejected("IMAP") from None
        except IMAPAuthError as e:
            log.info(
                "IMAP server {host}:{port} cannot be logged in to: {why}",
                host=server.host,
                port=server.port,
                why=e.message,
            )
            reason = "no-token-login" if mechanism != "password" else "login-disabled"
            raise MailServerUnavailable("IMAP", reason) from None
        except IMAPError as e:
            if "STARTTLS" in e.message:
                log.warn(
                    "IMAP server {host}:{port}: {why}",
                    host=server.host,
                    port=server.port,
                    why=e.message,
                )
                raise MailServerUnavailable("IMAP", "no-starttls") from None
            log.info(
                "IMAP check of {host}:{port} failed: {why}",
                host=server.host,
                port=server.port,
                why=e.message,
            )
            raise MailServerUnavailable("IMAP", "temporary" if e.transient else "error") from None
        logout = Deferred.fromCoroutine(session.logout())
        logout.addTimeout(2, self._reactor)
        try:
            await logout
        except Exception:  # noqa: S110 - the login already succeeded; LOGOUT is a courtesy
            pass


class _AuthOnlyESMTPClient(_OnClock, smtp.ESMTPClient):
    """
    EHLO, (STARTTLS), AUTH, QUIT: reaching the MAIL FROM state means the
    server accepted the credentials, and no mail transaction is ever begun.
    """

    requireAuthentication = True
    heloFallback = False
    debug = False  # no transcript: it would hold the base64 password

    def __init__(
        self,
        username: bytes,
        secret: bytes,
        context: Any,
        require_tls: bool,
        identity: bytes,
        done: Deferred[None],
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        super().__init__(secret, context, identity)  # type: ignore[no-untyped-call]
        self._clock = clock
        self.requireTransportSecurity = require_tls
        self.timeout = int(timeout)  # type: ignore[assignment]
        self.done = done
        self.registerAuthenticator(smtp.PLAINAuthenticator(username))
        self.registerAuthenticator(smtp.LOGINAuthenticator(username))

    def lineReceived(self, line: bytes) -> Any:
        # The stock client keeps every line of a multi-line reply: bound it
        # (a server sending "250-" lines forever must not fill memory).
        if len(self.resp) >= 1000:
            self.resp = []
            self.sendError(smtp.SMTPProtocolError(-1, b"reply too long"))
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return None
        return super().lineReceived(line)  # type: ignore[no-untyped-call]

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if not self.done.called:
            self.done.callback(None)
        self._disconnectFromServer()

    def sendError(self, exc: Exception) -> None:
        if not self.done.called:
            self.done.errback(Failure(exc))
        super().sendError(exc)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if not self.done.called:
            self.done.errback(reason)


@implementer(ILoginChecker)
class SMTPLoginChecker:
    """
    SMTP AUTH over verified TLS (implicit, or mandatory STARTTLS); no mail
    is sent.
    """

    def __init__(
        self, reactor: Any, tls: MailTLS, timeout: float = 20.0, identity: str = "localhost"
    ) -> None:
        assert IReactorTCP.providedBy(reactor) and IReactorTime.providedBy(reactor)
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout
        self._identity = identity.encode("idna")

    def check(
        self, server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        holder: list[_AuthOnlyESMTPClient] = []
        d = Deferred.fromCoroutine(self._check(server, username, password, holder, mechanism))
        d.addTimeout(self._timeout, self._reactor)

        def done(result: Any) -> Any:
            if isinstance(result, Failure):
                for proto in holder:
                    if proto.transport is not None:
                        proto.transport.abortConnection()  # type: ignore[attr-defined]
                if result.check(LoginRejected, MailServerUnavailable):
                    return result
                if result.check(smtp.AUTHDeclinedError):
                    raise LoginRejected("SMTP")
                reason = (
                    "timeout"
                    if result.check(defer.TimeoutError, defer.CancelledError, smtp.SMTPTimeoutError)
                    else "error"
                )
                if result.check(smtp.TLSRequiredError, smtp.TLSError):
                    reason = "tls"
                elif result.check(smtp.AUTHRequiredError, smtp.EHLORequiredError):
                    reason = "no-auth"
                # Only the type: str() of SMTP errors holds the AUTH transcript.
                log.info(
                    "SMTP check of {host}:{port} failed: {kind}",
                    host=server.host,
                    port=server.port,
                    kind=_kind(result),
                )
                raise MailServerUnavailable("SMTP", reason)
            return result

        d.addBoth(done)
        return d

    async def _check(
        self,
        server: MailServer,
        username: str,
        password: str,
        holder: list[_AuthOnlyESMTPClient],
        mechanism: str = "password",
    ) -> None:
        user, secret = _credentials("SMTP", username, password)
        sasl = _token_sasl("SMTP", server, username, password, mechanism)
        context = self._tls.options_for(server.host) if server.security == "starttls" else None
        outcome: Deferred[None] = Deferred()
        proto = _AuthOnlyESMTPClient(
            user,
            secret,
            context,
            require_tls=server.security != "plain",
            identity=self._identity,
            done=outcome,
            timeout=self._timeout,
            clock=self._reactor,
        )
        if sasl is not None:
            proto.authenticators = [SMTPTokenAuthenticator(sasl)]
        holder.append(proto)
        await _connect(_endpoint(self._reactor, self._tls, server, self._timeout), proto)
        await outcome
