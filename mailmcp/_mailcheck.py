"""
Live login checks for the login page: does the user's IMAP (and then SMTP)
server accept these credentials?

Both use Twisted's own protocol clients, hardened the way the stack audit
says: certificates always verified (`MailTLS`), STARTTLS mandatory when the
client id says ``starttls`` (no cleartext fallback), ``plain`` only when the
client id says so (the generator allows it for loopback hosts only), one
deadline over connect + TLS + greeting + login, and the greeting errbacked
from ``connectionLost`` so a failed handshake cannot hang the check.

Secrets never reach a log line: SMTP client exceptions carry the base64
transcript of the AUTH exchange in their ``str()``, so only the exception
*type* is ever logged, and callers see one of two exceptions with fixed,
safe messages.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.mail import imap4, smtp
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer

from ._clients import MailServer
from ._sasl import SASLInputError, SMTPTokenAuthenticator, TokenSASL
from ._tls import MailTLS
from .interfaces import ILoginChecker

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


def _token_command(sasl: TokenSASL, initial_in_command: bool, proto: Any) -> imap4.Command:
    """
    AUTHENTICATE XOAUTH2/OAUTHBEARER for Twisted's client: the initial
    response in the command (SASL-IR) or after the empty challenge, and the
    closing response to an error challenge (the server then answers NO).
    """
    initial = base64.b64encode(sasl.initial_response())

    def respond(rest: bytes) -> None:
        try:
            challenge = base64.b64decode(rest.strip(), validate=True)
        except ValueError:
            challenge = b"?"
        proto.sendLine(base64.b64encode(sasl.respond(challenge)))

    args = sasl.name + b" " + initial if initial_in_command else sasl.name
    return imap4.Command(b"AUTHENTICATE", args, (), respond)


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


class _CheckingIMAP4Client(_OnClock, imap4.IMAP4Client):
    """An IMAP4Client whose greeting is a Deferred that also fails on connection loss."""

    def __init__(self, context: Any, clock: IReactorTime) -> None:
        super().__init__(context)
        self.greeting: Deferred[Any] = Deferred()
        self.lost = False
        self._clock = clock

    #: A login check reads a greeting, CAPABILITY and a few short replies;
    #: the stock client would spool any announced literal, however large,
    #: to a temporary file (IM-08).  Anything bigger ends the check.
    max_literal = 64 * 1024
    #: A whole check receives a few kilobytes; a server that keeps talking
    #: (endless untagged lines) is cut off instead of read until the deadline.
    max_received = 1024 * 1024
    received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_received:
            if self.transport is not None and not self.lost:
                log.warn(
                    "IMAP server sent over {limit} bytes during the login check; hanging up",
                    limit=self.max_received,
                )
                self.transport.abortConnection()  # type: ignore[attr-defined]
                self.lost = True
            return
        super().dataReceived(data)

    def _setupForLiteral(self, rest: bytes, octets: int) -> None:
        if octets > self.max_literal:
            log.warn(
                "IMAP server announced a {size}-byte literal during the login check; hanging up",
                size=octets,
            )
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        super()._setupForLiteral(rest, octets)

    def _extraInfo(self, lines: list[Any]) -> None:
        # Twisted's Command.finish hands the BYE that always precedes LOGOUT's
        # OK (RFC 3501 6.1.3) to _extraInfo, which logs it as an "Unhandled
        # unsolicited response" at every login check: it is expected here.
        rest = [line for line in lines if not (line and line[0] == b"BYE")]
        if rest:
            super()._extraInfo(rest)

    def serverGreeting(self, caps: Any) -> None:
        if not self.greeting.called:
            self.greeting.callback(caps)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        super().connectionLost(reason)
        if not self.greeting.called:
            self.greeting.errback(reason)


@implementer(ILoginChecker)
class IMAPLoginChecker:
    """
    LOGIN over verified TLS (implicit, or mandatory STARTTLS), then LOGOUT.

    :param reactor: provides `IReactorTCP` and `IReactorTime`.
    :param timeout: seconds for the whole check.
    """

    def __init__(self, reactor: Any, tls: MailTLS, timeout: float = 20.0) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout

    def check(
        self, server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        holder: list[_CheckingIMAP4Client] = []
        d = Deferred.fromCoroutine(self._check(server, username, password, holder, mechanism))
        d.addTimeout(self._timeout, self._reactor)

        def done(result: Any) -> Any:
            for proto in holder:
                if not proto.lost and proto.transport is not None:
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
        holder: list[_CheckingIMAP4Client],
        mechanism: str = "password",
    ) -> None:
        user, secret = _credentials("IMAP", username, password)
        sasl = _token_sasl("IMAP", server, username, password, mechanism)
        options = self._tls.options_for(server.host) if server.security != "plain" else None
        proto = _CheckingIMAP4Client(options, self._reactor)
        proto.timeout = int(self._timeout)
        holder.append(proto)
        await _connect(_endpoint(self._reactor, self._tls, server, self._timeout), proto)
        await proto.greeting
        if server.security == "starttls":
            caps = await proto.getCapabilities()
            if b"STARTTLS" not in caps:
                log.warn(
                    "IMAP server {host}:{port} offers no STARTTLS; refusing to log in",
                    host=server.host,
                    port=server.port,
                )
                raise MailServerUnavailable("IMAP", "no-starttls")
            await proto.startTLS(options)
            if not proto.startedTLS:
                raise MailServerUnavailable("IMAP", "no-starttls")
        caps = await proto.getCapabilities()
        offered = [m.upper() for m in (caps.get(b"AUTH") or [])]
        try:
            if sasl is not None:
                if sasl.name not in offered:
                    raise MailServerUnavailable("IMAP", "no-token-login")
                await proto.sendCommand(_token_command(sasl, b"SASL-IR" in caps, proto))
            elif b"PLAIN" in offered:
                # SASL PLAIN carries UTF-8 credentials exactly; quoted LOGIN cannot.
                response = base64.b64encode(b"\0" + user + b"\0" + secret)
                await proto.sendCommand(
                    imap4.Command(
                        b"AUTHENTICATE", b"PLAIN", (), lambda rest: proto.sendLine(response)
                    )
                )
            elif b"LOGINDISABLED" in caps:
                raise MailServerUnavailable("IMAP", "login-disabled")
            else:
                await proto.sendCommand(
                    imap4.Command(b"LOGIN", imap4._quote(user) + b" " + imap4._quote(secret))
                )
        except imap4.IMAP4Exception as e:
            text = str(e.args[0] if e.args else b"").upper()
            if "UNAVAILABLE" in text or "SERVERBUG" in text:
                raise MailServerUnavailable("IMAP", "temporary") from None
            raise LoginRejected("IMAP") from None
        try:
            logout = proto.logout()
            logout.addTimeout(2, self._reactor)
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
        super().__init__(secret, context, identity)
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
        return super().lineReceived(line)

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if not self.done.called:
            self.done.callback(None)
        self._disconnectFromServer()

    def sendError(self, exc: Exception) -> None:
        if not self.done.called:
            self.done.errback(Failure(exc))
        super().sendError(exc)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
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


@implementer(ILoginChecker)
class FakeLoginChecker:
    """
    A test `ILoginChecker`: accepts exactly the C{accounts} given as
    ``{username: password}``, records every call (without the password) in
    C{calls}, and can be told the server is down or to never answer.
    """

    def __init__(self, protocol: str, accounts: dict[str, str], down: bool = False) -> None:
        self.protocol = protocol
        self.accounts = dict(accounts)
        self.down = down
        self.stall = False
        self.calls: list[tuple[str, int, str]] = []
        self.pending: list[Deferred[None]] = []

    def check(
        self, server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        """C{password} is the access token when C{mechanism} is a token one."""
        self.calls.append((server.host, server.port, username))
        if self.stall:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        if self.down:
            return defer.fail(MailServerUnavailable(self.protocol))
        if self.accounts.get(username) != password:
            return defer.fail(LoginRejected(self.protocol))
        return defer.succeed(None)
