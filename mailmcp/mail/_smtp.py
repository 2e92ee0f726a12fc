"""
Sending one message over ESMTP, at most once.

Built on `twisted.mail.smtp.ESMTPSender`, with every unsafe default of the
stock sender overridden (docs/threat-model.rst, P-09, P-10, P-12):

- **TLS is required and verified**: implicit TLS for ``tls`` (port 465),
  mandatory STARTTLS for ``starttls`` (a server that does not offer it is
  refused before AUTH), both with `mailmcp._tls.MailTLS` options that check
  the chain and the host name.  ``plain`` is accepted only for a loopback
  host, as ``mailmcp-generate`` enforces for client ids.
- **AUTH is required** (PLAIN with an empty authorization identity, else
  LOGIN; no cleartext fallback, no second PLAIN attempt after a refusal).
- **No retries** (``retries=0``) and **bounded time**: an idle timeout per
  server reply and a deadline for the whole send, both aborting the
  connection.
- **Dot-stuffing is correct across chunk boundaries**: Twisted's
  `FileSender` hands the body over in 16 KiB chunks and the stock
  ``transformChunk`` stuffs each chunk on its own, so a line starting with
  ``.`` right at a chunk boundary would go out unstuffed (a lone ``.`` there
  ends DATA early and turns the rest of the body into SMTP commands).
  `DotStuffer` carries the line-start state from one chunk to the next.
- **The outcome is classified, never guessed**: `SendResult` when the server
  accepted the message; `SMTPSendFailed` when it definitely was not sent
  (refused before the end of DATA, or the connection was lost before the
  terminating ``.`` went out); `SMTPOutcomeUnknown` when the terminating
  ``.`` was written but no reply came.  The sender never resends.
- **All or nothing per recipient**: if any ``RCPT TO`` is refused the
  transaction is abandoned before DATA, so fixing one address and sending
  again duplicates nothing; every recipient's code is reported.
- **Nothing secret is logged or returned**: the transcript Twisted keeps
  (which holds the base64 AUTH exchange) is switched off, and errors are
  rebuilt from codes and server replies, never from ``str(exception)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any, Literal

import attrs
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from .._account import MailAccount
from .._tls import MailTLS
from ..oauth._clients import is_loopback_host
from ..oauth._tokens import InvalidToken
from ..provider._client import ProviderUnavailable
from ..provider._refresh import GrantEnded
from ._compose import is_canonical_crlf
from ._sasl import SASLInputError, SMTPTokenAuthenticator, TokenSASL

log = Logger()

_ENVELOPE_ADDRESS = re.compile(r"[^\s<>()\[\],;:\\\"\x00-\x1f\x7f]+@[A-Za-z0-9.-]+")

# How long a connection may linger for a polite QUIT once the outcome is known.
_QUIT_GRACE = 5.0


@attrs.frozen
class RecipientResult:
    """The server's answer to one ``RCPT TO``."""

    address: str
    code: int
    message: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


@attrs.frozen
class SendResult:
    """The server accepted the message (its reply to the end of DATA)."""

    code: int
    message: str
    recipients: tuple[RecipientResult, ...]


class SMTPFailure(Exception):
    """
    Base of the sender's errors.  ``message`` is safe to show the user: it
    never contains credentials or the SMTP transcript.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        code: int | None = None,
        recipients: tuple[RecipientResult, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.code = code
        self.recipients = recipients

    @property
    def transient(self) -> bool:
        """A 4xx reply, a timeout or a lost connection: trying later may work."""
        return self.code is None or 400 <= self.code < 500


class SMTPSendFailed(SMTPFailure):
    """The message was definitely not accepted by the server."""


class SMTPAuthFailed(SMTPSendFailed):
    """The server refused the account's SMTP credentials."""


class SMTPOutcomeUnknown(SMTPFailure):
    """
    The whole message and its terminating ``.`` were sent but no reply came:
    it may have been delivered.  Never resend automatically.
    """


def _text(value: bytes | str | None, limit: int = 300) -> str:
    """A server reply as printable, bounded text."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = " ".join(value.split())
    return value[:limit]


class DotStuffer:
    """
    SMTP dot-stuffing (RFC 5321 §4.5.2) over a stream of chunks.

    Input must use CRLF line endings only (see `is_canonical_crlf`).  A line
    starts after every LF, so a chunk that begins with ``.`` is the start of
    a line exactly when the previous chunk ended with LF (or it is the first
    chunk).
    """

    def __init__(self) -> None:
        self.at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        out = chunk.replace(b"\n.", b"\n..")
        if self.at_line_start and chunk[:1] == b".":
            out = b"." + out
        self.at_line_start = chunk[-1:] == b"\n"
        return out

    def terminator(self) -> bytes:
        """What ends DATA after the stuffed body (without the final CRLF)."""
        return b"." if self.at_line_start else b"\r\n."


class _PlainAuthenticator(smtp.PLAINAuthenticator):
    """
    SASL PLAIN with an empty authorization identity (RFC 4616), the form
    every server accepts.  Twisted's sends ``user\\0user\\0pw`` first and
    then retries with this form, which costs the user two failed logins per
    wrong password.
    """

    def challengeResponse(self, secret: bytes, chal: Any = 1) -> bytes:
        user: bytes = self.user
        return b"\0" + user + b"\0" + secret


class _Phase:
    CONNECT = "connect"  # TCP/TLS, greeting, EHLO, STARTTLS, AUTH
    ENVELOPE = "envelope"  # MAIL FROM, RCPT TO
    DATA_COMMAND = "data"  # DATA sent, waiting for 354
    BODY = "body"  # 354 received, body being written
    AWAITING_REPLY = "after-data"  # terminating "." written: ambiguous from here
    DONE = "done"


#: Most lines accepted in one multi-line SMTP reply.
MAX_REPLY_LINES = 1000


class _Sender(smtp.ESMTPSender):
    """One ESMTP transaction for `_SenderFactory`, with a classified outcome."""

    # Twisted keeps a transcript (including the base64 AUTH exchange) when
    # debug is on and puts it into every exception's str().
    debug = False
    factory: _SenderFactory

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)  # type: ignore[no-untyped-call]
        self.phase = _Phase.CONNECT
        self._stuffer = DotStuffer()
        self._grace: IDelayedCall | None = None

    # -- authentication ---------------------------------------------------

    def _registerAuthenticators(self) -> None:
        self.registerAuthenticator(_PlainAuthenticator(self.username))
        self.registerAuthenticator(smtp.LOGINAuthenticator(self.username))

    def lineReceived(self, line: bytes) -> Any:
        # Twisted keeps every line of a multi-line reply in self.resp with no
        # bound: a server sending "250-" lines forever would fill memory
        # until the deadline.  No real reply has this many lines.
        if len(self.resp) >= MAX_REPLY_LINES:
            self.resp = []
            self.sendError(smtp.SMTPProtocolError(-1, b"reply too long"))
            self._abort()
            return None
        return super().lineReceived(line)  # type: ignore[no-untyped-call]

    def esmtpEHLORequired(self, code: int = -1, resp: bytes | None = None) -> None:
        # EHLO refused: report the server's own reply, not Twisted's fixed
        # "502 no ESMTP" (which read as "no supported authentication").
        self._fail(
            SMTPSendFailed(
                f"the SMTP server refused EHLO: {code} {_text(resp or b'')}",
                stage=self.phase,
                code=code if code > 0 else None,
            )
        )
        self._disconnectFromServer()

    def _esmtpState_plainAuth(self, code: int, resp: bytes) -> None:
        # PLAIN was refused: that is the answer, no second attempt.
        self.esmtpAUTHDeclined(code, resp)

    # -- the transaction --------------------------------------------------

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if self.phase == _Phase.CONNECT:
            self.phase = _Phase.ENVELOPE
        super().smtpState_from(code, resp)  # type: ignore[no-untyped-call]

    def smtpState_toOrData(self, code: int, resp: bytes) -> None:
        if self.lastAddress is not None:
            self.toAddressesResult.append((self.lastAddress, code, resp))
            if code in smtp.SUCCESS:
                self.successAddresses.append(self.lastAddress)
        try:
            self.lastAddress = next(self.toAddresses)
        except StopIteration:
            results = self._recipient_results()
            refused = [r for r in results if not r.accepted]
            if refused or not results:
                detail = ", ".join(f"{r.address} ({r.code} {r.message})" for r in refused)
                self._fail(
                    SMTPSendFailed(
                        f"the SMTP server refused recipients, nothing was sent: {detail}",
                        stage=_Phase.ENVELOPE,
                        code=refused[0].code if refused else None,
                        recipients=results,
                    )
                )
                self._disconnectFromServer()
                return
            self.phase = _Phase.DATA_COMMAND
            self.sendLine(b"DATA")
            self._expected = [354]
            self._okresponse = self.smtpState_data
        else:
            self.sendLine(b"RCPT TO:" + smtp.quoteaddr(self.lastAddress))

    def smtpState_data(self, code: int, resp: bytes) -> None:
        self.phase = _Phase.BODY
        super().smtpState_data(code, resp)  # type: ignore[no-untyped-call]

    def transformChunk(self, chunk: bytes) -> bytes:
        self.resetTimeout()
        return self._stuffer.feed(chunk)

    def finishedFileTransfer(self, lastsent: bytes) -> None:
        if self.phase != _Phase.BODY:
            return
        self.sendLine(self._stuffer.terminator())
        self.phase = _Phase.AWAITING_REPLY

    def smtpState_msgSent(self, code: int, resp: bytes) -> None:
        # Reached with the reply to the end of DATA, and (through
        # smtpTransferFailed) with any refusal after MAIL FROM.
        results = self._recipient_results()
        if self.phase == _Phase.AWAITING_REPLY and code in smtp.SUCCESS:
            self._succeed(SendResult(code=code, message=_text(resp), recipients=results))
        elif code in smtp.SUCCESS:
            self._fail(
                SMTPOutcomeUnknown(
                    "the SMTP server answered out of order; delivery status unknown",
                    stage=self.phase,
                    code=code,
                    recipients=results,
                )
            )
            self._abort()
            return
        else:
            what = {
                _Phase.ENVELOPE: "refused the sender",
                _Phase.DATA_COMMAND: "refused DATA",
                _Phase.BODY: "refused the message",
                _Phase.AWAITING_REPLY: "refused the message",
            }.get(self.phase, "refused the message")
            self._fail(
                SMTPSendFailed(
                    f"the SMTP server {what}: {code} {_text(resp)}",
                    stage=self.phase,
                    code=code,
                    recipients=results,
                )
            )
        self._disconnectFromServer()

    # -- failures ---------------------------------------------------------

    def sendError(self, exc: Exception) -> None:
        """
        Twisted reports protocol-level failures here (bad greeting, TLS
        required, AUTH refused, timeouts, garbage).  The exception's str()
        may hold the transcript, so only its type and code are used.
        """
        self._fail(self._classify(exc))
        if isinstance(exc, smtp.SMTPClientError) and not exc.isFatal:
            self._disconnectFromServer()
        else:
            self._abort()

    def _classify(self, exc: Exception) -> SMTPFailure:
        code = getattr(exc, "code", None)
        code = code if isinstance(code, int) and code > 0 else None
        results = self._recipient_results()
        if isinstance(exc, smtp.AUTHDeclinedError | smtp.AuthenticationError):
            token = getattr(self.factory, "sasl", None) is not None
            return SMTPAuthFailed(
                (
                    "the SMTP server refused the sign-in token"
                    if token
                    else "the SMTP server rejected the login (wrong username or password?)"
                )
                + (f" [{code}]" if code else ""),
                stage=self.phase,
                code=code,
            )
        if isinstance(exc, smtp.TLSRequiredError):
            return SMTPSendFailed(
                "the SMTP server does not offer STARTTLS; refusing to send without TLS",
                stage=self.phase,
            )
        if isinstance(exc, smtp.AUTHRequiredError | smtp.EHLORequiredError):
            sasl = getattr(self.factory, "sasl", None)
            return SMTPSendFailed(
                "the SMTP server offers no supported authentication "
                + (f"({sasl.name.decode()})" if sasl is not None else "(PLAIN or LOGIN)"),
                stage=self.phase,
            )
        if isinstance(exc, smtp.TLSError):
            return SMTPSendFailed("the SMTP server refused STARTTLS", stage=self.phase, code=code)
        if isinstance(exc, smtp.SMTPTimeoutError):
            return self._lost("no reply from the SMTP server in time")
        if isinstance(exc, smtp.SMTPConnectError):
            return SMTPSendFailed(
                "the SMTP server refused the connection"
                + (f": {code} {_text(getattr(exc, 'resp', b''))}" if code else ""),
                stage=self.phase,
                code=code,
            )
        if isinstance(exc, smtp.SMTPProtocolError):
            return self._lost("the SMTP server sent an invalid reply")
        return self._lost("sending failed", recipients=results)

    def _lost(self, why: str, recipients: tuple[RecipientResult, ...] | None = None) -> SMTPFailure:
        """A failure without a server verdict: ambiguous only once "." was sent."""
        if recipients is None:
            recipients = self._recipient_results()
        if self.phase == _Phase.AWAITING_REPLY:
            return SMTPOutcomeUnknown(
                f"{why} after the whole message was sent: delivery status unknown. "
                "Do not resend; check the recipient or the Sent folder.",
                stage=self.phase,
                recipients=recipients,
            )
        return SMTPSendFailed(f"{why}; nothing was sent", stage=self.phase, recipients=recipients)

    def timeoutConnection(self) -> None:
        self._fail(self._lost("no reply from the SMTP server in time"))
        self._abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if reason.check(SSL.Error):
            self._fail(
                SMTPSendFailed(
                    "TLS with the SMTP server failed (certificate not trusted, wrong "
                    "host name, or no common protocol); nothing was sent",
                    stage=self.phase,
                )
            )
        else:
            self._fail(self._lost("the connection to the SMTP server was lost"))

    def deadline_passed(self) -> None:
        """The send's overall deadline: give up and close the connection."""
        self._fail(self._lost("the SMTP send took too long"))
        self._abort()

    # -- helpers ----------------------------------------------------------

    def _recipient_results(self) -> tuple[RecipientResult, ...]:
        return tuple(
            RecipientResult(
                address=addr.decode("ascii", "replace") if isinstance(addr, bytes) else str(addr),
                code=code,
                message=_text(resp),
            )
            for addr, code, resp in self.toAddressesResult
        )

    def _succeed(self, result: SendResult) -> None:
        self.phase = _Phase.DONE
        self.factory.settle(result)

    def _fail(self, failure: SMTPFailure) -> None:
        if self.phase != _Phase.DONE:
            self.phase = _Phase.DONE
        self.factory.settle(failure)

    def _disconnectFromServer(self) -> None:
        super()._disconnectFromServer()  # type: ignore[no-untyped-call]
        if self._grace is None and self.transport is not None:
            self._grace = self.factory.reactor.callLater(_QUIT_GRACE, self._abort)

    def _abort(self) -> None:
        transport = self.transport
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        elif transport is not None:
            transport.loseConnection()


class _SenderFactory(smtp.ESMTPSenderFactory):
    """
    Builds the one `_Sender` of a send and settles its outcome exactly once
    (``done``).  Reconnection is disabled: the stock factory re-sends on a
    lost connection when ``retries`` allows, even after DATA.
    """

    protocol = _Sender

    def __init__(self, reactor: Any, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.done: Deferred[SendResult] = Deferred()
        self.sender: _Sender | None = None

    #: A token login (provider sign-in): the only mechanism offered.
    sasl: TokenSASL | None = None

    def buildProtocol(self, addr: IAddress | None) -> _Sender:  # type: ignore[override]
        p = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        assert isinstance(p, _Sender)
        if self.sasl is not None:
            p.authenticators = [SMTPTokenAuthenticator(self.sasl)]
        self.sender = p
        return p

    def settle(self, outcome: SendResult | SMTPFailure) -> None:
        if self.done.called:
            return
        if isinstance(outcome, SendResult):
            self.done.callback(outcome)
        else:
            self.done.errback(outcome)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.settle(
            SMTPSendFailed(
                f"cannot connect to the SMTP server: {_text(reason.getErrorMessage())}; "
                "nothing was sent",
                stage=_Phase.CONNECT,
            )
        )

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        # The protocol's connectionLost has already classified this.
        self.settle(SMTPSendFailed("the connection to the SMTP server was lost", stage="connect"))


class SMTPSender:
    """
    Sends messages for accounts, one connection per message.

    :param reactor: provides ``IReactorTCP``, ``IReactorSSL`` and
        ``IReactorTime``.
    :param tls: verifying client TLS options.
    :param timeout: seconds the whole send may take; also the idle timeout
        for each server reply.
    :param connect_timeout: seconds for the TCP connection.
    :param helo_name: the name sent in EHLO.
    """

    def __init__(
        self,
        reactor: Any,
        tls: MailTLS,
        timeout: float = 60.0,
        connect_timeout: float | None = None,
        helo_name: str = "mailmcp.localhost",
    ) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout
        self._connect_timeout = (
            connect_timeout if connect_timeout is not None else min(timeout, 30.0)
        )
        self._helo_name = helo_name
        self._in_flight: set[str] = set()

    def claim(self, message_id: str) -> Callable[[], None] | Literal[False]:
        """
        Mark C{message_id} as being sent by this process.  Returns a callable
        that releases the claim, or False when a send of the same Message-ID
        (the same idempotency key) is already in flight here, so two
        concurrent retries cannot both miss it in Sent and both send.
        """
        if message_id in self._in_flight:
            return False
        self._in_flight.add(message_id)
        return lambda: self._in_flight.discard(message_id)

    async def send(
        self,
        account: MailAccount,
        envelope_from: str,
        recipients: Sequence[str],
        message: bytes,
    ) -> SendResult:
        """
        Send C{message} (CRLF line endings) from C{envelope_from} to
        C{recipients} with C{account}'s SMTP server and credentials.

        A provider access token the server refuses is renewed once and the
        send tried once more: the refusal comes before MAIL FROM, so
        nothing was sent.

        :raises SMTPSendFailed: the message was definitely not sent.
        :raises SMTPOutcomeUnknown: it may have been sent.
        """
        try:
            return await self._send_once(account, envelope_from, recipients, message)
        except SMTPAuthFailed as e:
            if not account.uses_token or account.renew is None or e.stage != _Phase.CONNECT:
                raise
        try:
            account = await account.renew()
        except GrantEnded as e:
            raise SMTPAuthFailed(e.message, stage=_Phase.CONNECT) from None
        except ProviderUnavailable as e:
            raise SMTPSendFailed(
                f"the sign-in could not be renewed: {e.message}", stage=_Phase.CONNECT
            ) from None
        except InvalidToken:
            raise SMTPAuthFailed(
                "this sign-in has ended; sign in again", stage=_Phase.CONNECT
            ) from None
        return await self._send_once(account, envelope_from, recipients, message)

    async def _send_once(
        self,
        account: MailAccount,
        envelope_from: str,
        recipients: Sequence[str],
        message: bytes,
    ) -> SendResult:
        for address in (envelope_from, *recipients):
            if not _ENVELOPE_ADDRESS.fullmatch(address):
                raise ValueError("invalid envelope address")
        if not recipients:
            raise ValueError("no recipients")
        if not is_canonical_crlf(message):
            raise ValueError("message must use CRLF line endings only")
        server = account.smtp
        if server.security == "plain" and not is_loopback_host(server.host):
            raise SMTPSendFailed(
                "refusing to send without TLS to a non-loopback SMTP server", stage=_Phase.CONNECT
            )
        secure = server.security != "plain"
        options = self._tls.options_for(server.host) if secure else None
        sasl: TokenSASL | None = None
        secret = account.smtp_password
        if account.uses_token:
            assert account.oauth is not None
            try:
                sasl = TokenSASL(
                    account.imap_auth,
                    account.smtp_username,
                    account.oauth.access_token,
                    host=server.host,
                    port=server.port,
                )
            except SASLInputError:
                raise SMTPAuthFailed(
                    "the stored sign-in token cannot be used", stage=_Phase.CONNECT
                ) from None
            secret = "token"  # noqa: S105 - a placeholder: Twisted authenticates only with a secret
        factory = _SenderFactory(
            self._reactor,
            account.smtp_username.encode("utf-8"),
            secret.encode("utf-8"),
            envelope_from,
            list(recipients),
            BytesIO(message),
            Deferred(),
            retries=0,
            timeout=self._timeout,
            contextFactory=options,
            heloFallback=False,
            requireAuthentication=True,
            requireTransportSecurity=secure,
        )
        factory.domain = self._helo_name.encode("ascii")
        factory.sasl = sasl
        if server.security == "tls":
            connector = self._reactor.connectSSL(
                server.host, server.port, factory, options, timeout=self._connect_timeout
            )
        else:
            connector = self._reactor.connectTCP(
                server.host, server.port, factory, timeout=self._connect_timeout
            )

        def deadline() -> None:
            if factory.sender is not None:
                factory.sender.deadline_passed()
            else:
                factory.settle(
                    SMTPSendFailed(
                        "connecting to the SMTP server took too long; nothing was sent",
                        stage=_Phase.CONNECT,
                    )
                )
                connector.disconnect()

        timer = self._reactor.callLater(self._timeout, deadline)
        try:
            result = await factory.done
        except SMTPFailure as e:
            log.info(
                "SMTP send for {account} failed at {stage}: {kind} {code}",
                account=account.email,
                stage=e.stage,
                kind=type(e).__name__,
                code=e.code,
            )
            raise
        finally:
            if timer.active():
                timer.cancel()
        log.info(
            "SMTP send for {account}: {count} recipients accepted",
            account=account.email,
            count=sum(1 for r in result.recipients if r.accepted),
        )
        return result
