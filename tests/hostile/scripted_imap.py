"""
A scripted, misbehaving IMAP server: a real Twisted protocol listening on
127.0.0.1 (plain, or implicit TLS with the harness CA's ``localhost``
certificate), for the IMAP-misbehaviour cases of docs/threat-model.rst (IM).

It speaks just enough IMAP to log a client in (CAPABILITY, LOGIN,
AUTHENTICATE PLAIN, LOGOUT, NOOP) and answer LIST / EXAMINE / SELECT /
STATUS / FETCH for a one-message INBOX.  Its ``behaviour`` decides how it
misbehaves at the first *mailbox* command after login (so the daemon's live
login check, which only logs in and out, succeeds first):

``normal``           behaves.
``no-greeting``      accepts TCP and never says anything (IM-01).
``close``            closes right after the greeting (fault soak).
``stall``            never answers the first mailbox command (IM-02).
``reset-literal``    starts a FETCH literal, sends part of it, then RST (IM-03).
``giant-literal``    announces ``{99999999999}`` in a FETCH (IM-08).
``long-line``        sends a 2 MiB line with no end of line (IM-09).
``strip-starttls``   a plain port that never advertises STARTTLS (IM-05).
``starttls-bad``     advertises STARTTLS but answers it ``BAD`` (IM-05).
``starttls-ok``      a real STARTTLS (the factory's ``tls_svc`` certificate),
                     then behaves.
``login-once``       accepts the first LOGIN ever, then answers every LOGIN
                     ``NO [AUTHENTICATIONFAILED]`` (a password changed after
                     the daemon's login check; IM-04).
``reject-slow``      answers every LOGIN / AUTHENTICATE ``NO
                     [AUTHENTICATIONFAILED]`` after ``factory.reject_delay``
                     seconds, so concurrent login attempts overlap (the
                     login-throttle race).
``many-mailboxes``   LIST answers 50,000 mailboxes (IM-09).
``giant-greeting``   ends its greeting with ``{99999999999}`` and then streams
                     data (1 MiB every 10 ms, at most 2 GiB) until the client
                     hangs up; ``factory.streamed`` counts the bytes (IM-08).
``endless-untagged`` greets, then streams ``* OK`` lines (1 MiB every 10 ms,
                     at most 2 GiB) until the client hangs up.

Every received line is recorded in ``factory.lines`` (so a test can assert
that no ``LOGIN`` or ``AUTHENTICATE`` ever arrived) together with the
connection count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

#: Commands the daemon's login check and the pool's login use; never the trigger.
SESSION_VERBS = {b"CAPABILITY", b"LOGIN", b"AUTHENTICATE", b"LOGOUT", b"NOOP", b"ID", b"ENABLE"}
BEHAVIOURS = ("normal", "no-greeting", "close", "stall", "reset-literal", "giant-literal",
              "long-line", "strip-starttls", "starttls-bad", "giant-greeting", "endless-untagged",
              "starttls-ok", "many-mailboxes", "login-once", "reject-slow")
CHUNK = b"z" * (1 << 20)
UNTAGGED = (b"* OK " + b"u" * 1017 + b"\r\n") * 1024
MESSAGE = (b"From: Scripted <s@example.test>\r\nTo: alice@example.test\r\nSubject: scripted\r\n"
           b"Date: Tue, 01 Jul 2025 13:30:00 +0000\r\nMessage-ID: <s1@example.test>\r\n\r\nhello\r\n")


class ScriptedIMAP(LineReceiver):
    MAX_LENGTH = 1 << 20
    factory: ScriptedIMAPFactory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.open.add(self)
        self.pending_auth: bytes | None = None
        #: The "stall" behaviour left a command unanswered on this connection.
        self.stalled = False
        self.tls_started = False
        behaviour = self.factory.behaviour
        if behaviour == "no-greeting":
            return
        if behaviour in ("giant-greeting", "endless-untagged"):
            from twisted.internet.task import LoopingCall

            self.transport.write(b"* OK [CAPABILITY IMAP4rev1] hello {99999999999}\r\n"
                                 if behaviour == "giant-greeting" else b"* OK [CAPABILITY IMAP4rev1] hello\r\n")
            self.chunk = CHUNK if behaviour == "giant-greeting" else UNTAGGED
            self.streamer = LoopingCall(self.stream)
            self.streamer.start(0.01)
            return
        self.sendLine(b"* OK [CAPABILITY " + self.caps() + b"] scripted IMAP ready")
        if behaviour == "close":
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.discard(self)
        streamer = getattr(self, "streamer", None)
        if streamer is not None and streamer.running:
            streamer.stop()

    def stream(self) -> None:
        if self.factory.streamed >= 2 << 30:
            self.streamer.stop()
            return
        self.factory.streamed += len(self.chunk)
        self.transport.write(self.chunk)

    def caps(self) -> bytes:
        caps = b"IMAP4rev1 UIDPLUS MOVE LITERAL+"
        if self.factory.behaviour in ("starttls-bad", "starttls-ok") and not self.tls_started:
            caps += b" STARTTLS"
        return caps

    def lineReceived(self, line: bytes) -> None:
        if self.factory.record:
            self.factory.lines.append(line)
        if self.pending_auth is not None:
            tag, self.pending_auth = self.pending_auth, None
            if self.factory.behaviour == "reject-slow":
                self.reject_later(tag)
                return
            self.sendLine(tag + b" OK [CAPABILITY " + self.caps() + b"] logged in")
            return
        tag, _, rest = line.partition(b" ")
        verb, _, args = rest.partition(b" ")
        verb = verb.upper()
        if verb == b"UID":
            verb, _, args = args.partition(b" ")
            verb = verb.upper()
        if self.factory.record or verb in (b"LOGIN", b"AUTHENTICATE"):
            self.factory.verbs.append(verb)
        behaviour = self.factory.behaviour
        if verb == b"CAPABILITY":
            self.sendLine(b"* CAPABILITY " + self.caps())
            self.sendLine(tag + b" OK done")
        elif verb == b"STARTTLS" and behaviour == "starttls-ok" and self.factory.tls_svc is not None:
            self.sendLine(tag + b" OK begin TLS now")
            self.tls_started = True
            self.transport.startTLS(tls_context(self.factory.tls_svc))
        elif verb == b"STARTTLS":
            self.sendLine(tag + b" BAD STARTTLS not available")
        elif verb == b"LOGIN" and behaviour == "login-once" and self.factory.verbs.count(b"LOGIN") > 1:
            self.sendLine(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.")
        elif behaviour == "reject-slow" and (verb == b"LOGIN" or (verb == b"AUTHENTICATE"
                                                                  and len(args.split()) > 1)):
            self.reject_later(tag)
        elif verb == b"LOGIN":
            self.sendLine(tag + b" OK [CAPABILITY " + self.caps() + b"] logged in")
        elif verb == b"AUTHENTICATE":
            if len(args.split()) > 1:  # SASL-IR
                self.sendLine(tag + b" OK logged in")
            else:
                self.pending_auth = tag
                self.sendLine(b"+ ")
        elif verb == b"LOGOUT":
            self.sendLine(b"* BYE bye")
            self.sendLine(tag + b" OK done")
            self.transport.loseConnection()
        elif verb in SESSION_VERBS:
            self.sendLine(tag + b" OK done")
        elif behaviour in ("normal", "strip-starttls", "starttls-bad", "starttls-ok", "many-mailboxes",
                           "login-once"):
            self.answer(tag, verb)
        else:
            self.misbehave(tag, verb)

    def reject_later(self, tag: bytes) -> None:
        from twisted.internet import reactor

        def reject() -> None:
            if self in self.factory.open:
                self.sendLine(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.")

        reactor.callLater(self.factory.reject_delay, reject)

    def answer(self, tag: bytes, verb: bytes) -> None:
        if verb == b"LIST":
            self.sendLine(b'* LIST (\\HasNoChildren) "/" INBOX')
            if self.factory.behaviour == "many-mailboxes":
                self.transport.write(b"".join(b'* LIST (\\HasNoChildren) "/" "box%05d"\r\n' % i
                                              for i in range(50_000)))
        elif verb in (b"EXAMINE", b"SELECT"):
            self.sendLine(b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
            self.sendLine(b"* 1 EXISTS")
            self.sendLine(b"* OK [UIDVALIDITY 7] ok")
            self.sendLine(b"* OK [UIDNEXT 2] ok")
        elif verb == b"FETCH":
            self.sendLine(b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE %d BODY[] {%d}" % (len(MESSAGE), len(MESSAGE)))
            self.transport.write(MESSAGE + b")\r\n")
        elif verb == b"SEARCH":
            self.sendLine(b"* SEARCH 1")
        self.sendLine(tag + b" OK done")

    def misbehave(self, tag: bytes, verb: bytes) -> None:
        behaviour = self.factory.behaviour
        if behaviour == "stall":
            self.stalled = True
            return
        if behaviour == "reset-literal":
            if verb != b"FETCH":
                self.answer(tag, verb)
                return
            # The RST follows once the client has read the partial literal
            # (an RST arriving first may make the kernel drop unread data).
            self.transport.write(b"* 1 FETCH (UID 1 BODY[] {100000}\r\n" + b"x" * 3000)
            from twisted.internet import reactor

            reactor.callLater(0.2, self.transport.abortConnection)
        elif behaviour == "giant-literal":
            if verb not in (b"FETCH", b"LIST"):
                self.answer(tag, verb)
                return
            prefix = b"* 1 FETCH (UID 1 BODY[] " if verb == b"FETCH" else b'* LIST () "/" '
            self.transport.write(prefix + b"{99999999999}\r\n" + b"y" * 4096)
        elif behaviour == "long-line":
            self.transport.write(b"* " + b"9" * (2 << 20))
        else:  # pragma: no cover - a test asked for an unknown behaviour
            raise AssertionError(behaviour)


class ScriptedIMAPFactory(Factory):
    protocol = ScriptedIMAP

    def __init__(self, behaviour: str) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.behaviour = behaviour
        self.connections = 0
        self.lines: list[bytes] = []
        self.verbs: list[bytes] = []
        self.record = True  # keep every line (off for soaks; LOGIN/AUTHENTICATE always kept)
        self.open: set[ScriptedIMAP] = set()
        self.streamed = 0
        self.tls_svc: Path | None = None  # the certificate STARTTLS uses ("starttls-ok")
        self.reject_delay = 0.5  # seconds before "reject-slow" answers a login

    @property
    def saw_credentials(self) -> bool:
        """Whether any LOGIN or AUTHENTICATE command (or SASL response) ever arrived."""
        return any(v in (b"LOGIN", b"AUTHENTICATE") for v in self.verbs)

    def close_all(self) -> None:
        for proto in list(self.open):
            proto.transport.abortConnection()


def tls_context(svc: Path) -> ssl.CertificateOptions:
    """Server TLS options with the harness's ``localhost`` certificate (signed by its CA)."""
    cert = ssl.PrivateCertificate.loadPEM((svc / "cert.pem").read_text() + (svc / "key.pem").read_text())
    return cert.options()


async def listen(reactor: Any, behaviour: str, *, tls_svc: Path | None = None,
                 interface: str = "127.0.0.1") -> tuple[ScriptedIMAPFactory, Any]:
    """Start a scripted server on a loopback address (TLS when C{tls_svc}); returns (factory, port)."""
    assert interface.startswith("127."), "loopback only"
    factory = ScriptedIMAPFactory(behaviour)
    if behaviour == "starttls-ok":
        factory.tls_svc, tls_svc = tls_svc, None  # plain listener, TLS after STARTTLS
    if tls_svc is not None:
        endpoint: Any = SSL4ServerEndpoint(reactor, 0, tls_context(tls_svc), interface=interface)
    else:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface=interface)
    port = await endpoint.listen(factory)
    return factory, port
