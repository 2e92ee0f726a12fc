"""
`Session`: the `IMAPSession` contract on one logged-in connection.

It speaks UIDs only, never sends a bare EXPUNGE, compiles every argument
through `mailmcp.mail.imap._wire`, and tracks the open mailbox so that a repeat
call in the same folder costs a single NOOP (untagged EXISTS/EXPUNGE, and
VANISHED once QRESYNC is enabled, keep the count current).
"""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport

from ..._logging import Logger
from ...oauth._clients import is_loopback_host
from .._mailbox_api import (
    Appended,
    FetchedMessage,
    IMAPAuthError,
    IMAPError,
    IMAPLoginRefused,
    IMAPNoSuchMailbox,
    IMAPTokenRejected,
    Literal,
    MailboxInfo,
    MailboxState,
)
from .._sasl import TokenSASL
from ._client import CommandFailed, IMAPClientProtocol, RawCommand, Response, capabilities_from
from ._parser import (
    MAX_MODSEQ,
    MAX_UINT32,
    ParseError,
    RawResponse,
    Value,
    as_atom_str,
    expand_sequence_set,
    is_sequence_set,
    merge_fetched,
    parse_fetch,
    parse_values,
    sequence_ranges,
    split_code,
)
from ._wire import (
    astring,
    check_atom_token,
    check_date_time,
    check_uids,
    decode_mailbox,
    encode_mailbox,
    flag_list,
    quote,
)

log = Logger()

#: Most UIDs a SEARCH or COPYUID answer may expand to.
MAX_RESULT_UIDS = 1_000_000
_STATUS_ITEMS = {
    "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
    "DELETED", "APPENDLIMIT",
}  # fmt: skip
_FETCH_ITEMS_OK = re.compile(rb"[\x20-\x7e]{1,4096}")
_BODY_NO_PEEK = re.compile(rb"(?i)\b(BODY|BINARY)\[")
_RFC822_SEEN = re.compile(rb"(?i)\bRFC822(?!\.(?:SIZE|HEADER)\b)(?:\.TEXT)?\b")
_HAS_UID = re.compile(rb"(?i)(?:^|[\s(])UID(?:$|[\s)])")
_STORE_MODES = {"+FLAGS", "-FLAGS", "FLAGS"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Session:
    """
    One logged-in IMAP connection implementing `IMAPSession`.

    Built by `Session.open` (connect-time work: greeting, STARTTLS, login);
    the pool owns its lifetime.
    """

    def __init__(self, protocol: IMAPClientProtocol) -> None:
        self.protocol = protocol
        self._capabilities: frozenset[str] = frozenset()
        self._name: str | None = None
        self._encoded: bytes | None = None
        self._read_only = True
        self._exists = 0
        self._uidvalidity = 0
        self._uidnext: int | None = None
        self._flags: tuple[str, ...] = ()
        self._permanent_flags: tuple[str, ...] = ()
        self._highest_modseq: int | None = None
        self._qresync = False
        #: Counts the untagged news about the open mailbox (EXISTS, EXPUNGE...).
        self._changes = 0
        protocol.untagged_hook = self._untagged

    # -- state -------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    @property
    def selected(self) -> MailboxState | None:
        if self._name is None:
            return None
        return MailboxState(
            name=self._name,
            exists=self._exists,
            uidvalidity=self._uidvalidity,
            uidnext=self._uidnext,
            read_only=self._read_only,
            flags=self._flags,
            permanent_flags=self._permanent_flags,
            highest_modseq=self._highest_modseq,
        )

    @property
    def usable(self) -> bool:
        """Connected, logged in, and no command left in flight."""
        p = self.protocol
        return not p.closed and not p.busy and p.transport is not None

    def _untagged(self, response: RawResponse) -> None:
        """Keep the open mailbox's counters current from any untagged line."""
        if self._name is None:
            return
        head = response[0]
        first, _, rest = head.partition(b" ")
        if first.isdigit():
            kind = rest[:7].upper()
            if kind == b"EXISTS" and len(first) <= 10:
                self._changes += 1
                self._exists = int(first)
                if self._uidnext is not None and self._exists > 0:
                    self._uidnext = None  # new mail: UIDNEXT no longer known
            elif kind == b"EXPUNGE":
                self._changes += 1
                self._exists = max(0, self._exists - 1)
        elif first.upper() == b"VANISHED" and not rest[:1] == b"(":
            # After ENABLE QRESYNC expunges arrive as VANISHED <uid-set>
            # instead of one EXPUNGE each (RFC 7162 §3.2.10); (EARLIER) ones
            # answer a FETCH and never change the count.
            self._changes += 1
            self._exists = max(0, self._exists - _vanished_count(rest))
        elif first.upper() == b"OK" and rest[:1] == b"[":
            code, _ = split_code(rest)
            if not code or len(code) < 2 or type(code[1]) is not int:
                return
            if code[0] == b"HIGHESTMODSEQ" and code[1] <= MAX_MODSEQ:
                self._highest_modseq = code[1]
            elif code[0] == b"UIDVALIDITY" and code[1] <= MAX_UINT32:
                self._changes += 1
                # The folder was renumbered while open (RFC 3501 §2.3.1.1):
                # callers comparing UIDVALIDITY must see the new value.
                self._uidvalidity = code[1]
                self._uidnext = None

    # -- plumbing -----------------------------------------------------------------

    async def command(
        self,
        name: bytes,
        *pieces: bytes | Literal,
        log_args: str | None = None,
        continuation: Any = None,
    ) -> Response:
        """
        Send one command made of already validated pieces and wait for its
        tagged OK (`CommandFailed` on NO/BAD, `IMAPError` on anything else).
        """
        return await self._send(name, *pieces, log_args=log_args, continuation=continuation)

    def _send(
        self,
        name: bytes,
        *pieces: bytes | Literal,
        log_args: str | None = None,
        continuation: Any = None,
        pipeline: bool = False,
    ) -> Deferred[Response]:
        """`command` without waiting: the command is written (or queued) now."""
        literal_plus = "LITERAL+" in self._capabilities or (
            "LITERAL-" in self._capabilities
            and all(len(p.data) <= 4096 for p in pieces if isinstance(p, Literal))
        )
        cmd = RawCommand(
            name, pieces, log_args=log_args, continuation=continuation, literal_plus=literal_plus
        )
        return self.protocol.send(cmd, pipeline=pipeline)

    async def capability(self) -> frozenset[str]:
        response = await self.command(b"CAPABILITY")
        caps: set[str] = set()
        for line in response.lines:
            if line[0][:11].upper() == b"CAPABILITY ":
                caps |= capabilities_from(_parse(line)[1:])
        return frozenset(caps)

    # -- connection setup ------------------------------------------------------------

    async def open(self, account: Any, tls_options: Any) -> None:
        """
        Greeting, mandatory TLS and login for C{account}.  Credentials are
        only ever written after TLS is established (``tls``/``starttls``)
        or on a loopback server configured ``plain``.
        """
        caps = await self.protocol.greeting
        security = account.imap.security
        if security == "starttls":
            if caps is None:
                caps = await self.capability()
            if "STARTTLS" not in caps:
                raise IMAPError(
                    "the mail server does not offer STARTTLS; refusing to log in without TLS"
                )
            try:
                await self.command(b"STARTTLS")
            except CommandFailed as e:
                raise IMAPError(
                    f"the mail server refused STARTTLS ({e.text}); not logging in"
                ) from None
            transport = ITLSTransport(self.protocol.transport, None)
            if transport is None:
                raise IMAPError("this connection cannot start TLS")
            transport.startTLS(tls_options)
            self.protocol.startedTLS = True
            # The handshake (and certificate verification) completes before
            # this answer can arrive; a failure loses the connection here.
            caps = await self.capability()
        elif security == "plain":
            if not is_loopback_host(account.imap.host):
                raise IMAPError("plain (unencrypted) IMAP is only allowed to a loopback server")
        elif security != "tls":
            raise IMAPError(f"unknown IMAP security mode {security!r}")
        if caps is None:
            caps = await self.capability()
        self._capabilities = caps
        if getattr(account, "uses_token", False):
            sasl = TokenSASL(
                account.imap_auth,
                account.imap_username,
                account.oauth.access_token,
                host=account.imap.host,
                port=account.imap.port,
            )
            caps = await self._login_token(sasl, caps)
        else:
            caps = await self._login(account.imap_username, account.imap_password, caps)
        self._capabilities = caps

    async def _login_token(self, sasl: TokenSASL, caps: frozenset[str]) -> frozenset[str]:
        """
        AUTHENTICATE XOAUTH2/OAUTHBEARER with the access token: in the
        command with SASL-IR, else after the server's empty challenge.  An
        error challenge is answered with the closing response, and the NO
        that follows is an `IMAPAuthError` (the caller may refresh the
        token and try once more).
        """
        mechanism = sasl.name.decode("ascii")
        if f"AUTH={mechanism}" not in caps:
            raise IMAPAuthError(f"the mail server does not offer {mechanism} login")
        initial = base64.b64encode(sasl.initial_response())

        def respond(challenge: bytes) -> None:
            transport = self.protocol.transport
            assert transport is not None
            try:
                decoded = base64.b64decode(challenge.strip(), validate=True)
            except ValueError:
                decoded = b"?"
            transport.write(base64.b64encode(sasl.respond(decoded)) + b"\r\n")

        pieces = (b" " + sasl.name + b" " + initial,) if "SASL-IR" in caps else (b" " + sasl.name,)
        try:
            response = await self.command(
                b"AUTHENTICATE",
                *pieces,
                log_args=f"{mechanism} <token redacted>",
                continuation=respond,
            )
        except CommandFailed as e:
            if e.transient:
                raise IMAPError(
                    f"the mail server cannot log in right now: {e.text}", transient=True
                ) from None
            raise IMAPTokenRejected(
                f"the mail server refused the sign-in token ({e.text})"
            ) from None
        self.protocol.logged_in = True
        if response.code and response.code[0] == b"CAPABILITY":
            return capabilities_from(response.code[1:])
        return await self.capability()

    async def _login(self, username: str, password: str, caps: frozenset[str]) -> frozenset[str]:
        if _CONTROL.search(username) or _CONTROL.search(password) or "\0" in password:
            raise IMAPAuthError("the stored IMAP credentials contain control characters")
        user = username.encode("utf-8")
        secret = password.encode("utf-8")
        printable = all(0x20 <= b < 0x7F for b in user + secret)
        login_allowed = "LOGINDISABLED" not in caps
        try:
            if printable and login_allowed:
                response = await self.command(
                    b"LOGIN",
                    b" ",
                    quote(user),
                    b" ",
                    quote(secret),
                    log_args="<credentials redacted>",
                )
            elif "AUTH=PLAIN" in caps:
                response = await self._authenticate_plain(user, secret, caps)
            elif login_allowed:
                response = await self.command(
                    b"LOGIN", b" ", astring(user), b" ", astring(secret),
                    log_args="<credentials redacted>",
                )  # fmt: skip
            else:
                raise IMAPAuthError("the mail server offers no login method this server can use")
        except CommandFailed as e:
            if e.transient:
                raise IMAPError(
                    f"the mail server cannot log in right now: {e.text}", transient=True
                ) from None
            raise IMAPLoginRefused(
                f"the mail server rejected the login ({e.text}); sign in again with the right password"
            ) from None
        self.protocol.logged_in = True
        if response.code and response.code[0] == b"CAPABILITY":
            return capabilities_from(response.code[1:])
        return await self.capability()

    async def _authenticate_plain(
        self, user: bytes, secret: bytes, caps: frozenset[str]
    ) -> Response:
        initial = base64.b64encode(b"\0" + user + b"\0" + secret)
        if "SASL-IR" in caps:
            return await self.command(
                b"AUTHENTICATE", b" PLAIN ", initial, log_args="PLAIN <credentials redacted>"
            )
        sent: list[bool] = []

        def respond(_challenge: bytes) -> None:
            transport = self.protocol.transport
            assert transport is not None
            if sent:
                transport.write(b"*\r\n")  # a second challenge: cancel
                return
            sent.append(True)
            transport.write(initial + b"\r\n")

        return await self.command(
            b"AUTHENTICATE",
            b" PLAIN",
            log_args="PLAIN <credentials redacted>",
            continuation=respond,
        )

    async def logout(self) -> None:
        """LOGOUT, ignoring every failure: the connection is going away anyway."""
        if self.protocol.closed:
            return
        try:
            await self.command(b"LOGOUT")
        except IMAPError:
            pass
        finally:
            transport = self.protocol.transport
            if transport is not None and not self.protocol.closed:
                transport.loseConnection()

    # -- mailboxes -------------------------------------------------------------------

    async def noop(self) -> None:
        await self.command(b"NOOP")

    async def list_mailboxes(self) -> list[MailboxInfo]:
        boxes, _ = await self._list(())
        return boxes

    async def list_mailboxes_status(
        self, items: Sequence[str]
    ) -> list[tuple[MailboxInfo, dict[str, int]]]:
        """
        Every mailbox with the STATUS C{items} of each selectable one: a
        single LIST ... RETURN (STATUS (...)) round trip when the server has
        LIST-STATUS (RFC 5819), else LIST and one STATUS per folder.
        """
        wanted = _status_items(items)
        if "LIST-STATUS" in self._capabilities:
            boxes, statuses = await self._list(wanted)
            return [(box, statuses.get(box.name, {})) for box in boxes]
        boxes, _ = await self._list(())
        result: list[tuple[MailboxInfo, dict[str, int]]] = []
        for box in boxes:
            counts: dict[str, int] = {}
            if box.selectable:
                try:
                    counts = await self.status(box.name, wanted)
                except IMAPNoSuchMailbox:
                    pass
            result.append((box, counts))
        return result

    async def _list(
        self, status_items: Sequence[str]
    ) -> tuple[list[MailboxInfo], dict[str, dict[str, int]]]:
        pieces: list[bytes | Literal] = [b' "" "*"']
        options = []
        if "LIST-EXTENDED" in self._capabilities:
            if "SPECIAL-USE" in self._capabilities:
                options.append(b"SPECIAL-USE")
            options.append(b"CHILDREN")
        if status_items:
            options.append(b"STATUS (" + " ".join(status_items).encode("ascii") + b")")
        if options:
            pieces.append(b" RETURN (" + b" ".join(options) + b")")
        response = await self.command(b"LIST", *pieces)
        result: list[MailboxInfo] = []
        statuses: dict[str, dict[str, int]] = {}
        for line in response.lines:
            head = line[0][:7].upper()
            if head.startswith(b"STATUS "):
                try:
                    values = parse_values(line)
                    if len(values) < 3 or not isinstance(values[-1], list):
                        raise ParseError("bad STATUS response")
                    name = _mailbox_name(values[1])
                except ParseError as e:
                    log.warn("IMAP: skipping a malformed STATUS line: {error}", error=e.detail)
                    continue
                statuses[name] = _status_pairs(values[-1])
                continue
            if not head.startswith(b"LIST "):
                continue
            try:
                values = parse_values(line)
                if len(values) < 4 or not isinstance(values[1], list):
                    raise ParseError("bad LIST response")
                flags = tuple(as_atom_str(f) for f in values[1])
                delimiter = values[2]
                if isinstance(delimiter, list):
                    raise ParseError("bad LIST response")
                name = _mailbox_name(values[3])
            except ParseError as e:
                log.warn("IMAP: skipping a malformed LIST line: {error}", error=e.detail)
                continue
            result.append(
                MailboxInfo(
                    name=name,
                    delimiter=None if delimiter is None else as_atom_str(delimiter),
                    flags=flags,
                )
            )
        return result, statuses

    async def status(self, mailbox: str, items: Sequence[str]) -> dict[str, int]:
        wanted = _status_items(items)
        names = " ".join(wanted).encode("ascii")
        try:
            response = await self.command(
                b"STATUS", b" ", quote(encode_mailbox(mailbox)), b" (", names, b")"
            )
        except CommandFailed as e:
            if e.status == "NO":
                raise IMAPNoSuchMailbox(f"no mailbox named {mailbox!r} ({e.text})") from None
            raise
        result: dict[str, int] = {}
        for line in response.lines:
            if line[0][:7].upper() != b"STATUS ":
                continue
            values = _parse(line)
            if len(values) < 3 or not isinstance(values[-1], list):
                raise IMAPError("the mail server sent a malformed STATUS response")
            result.update(_status_pairs(values[-1]))
        return result

    async def create_mailbox(self, mailbox: str) -> None:
        """CREATE (used by tests and by tools that file into new folders)."""
        await self.command(b"CREATE", b" ", quote(encode_mailbox(mailbox)))

    async def delete_mailbox(self, mailbox: str) -> None:
        """DELETE a mailbox (closing it first if it is the open one)."""
        if self._encoded == encode_mailbox(mailbox):
            await self.unselect()
        await self.command(b"DELETE", b" ", quote(encode_mailbox(mailbox)))

    async def unselect(self) -> None:
        """Leave the open mailbox without expunging (UNSELECT, or EXAMINE of nothing)."""
        if self._name is None:
            return
        self._forget()
        if "UNSELECT" in self._capabilities:
            await self.command(b"UNSELECT")

    def _forget(self) -> None:
        self._name = None
        self._encoded = None
        self._read_only = True
        self._uidnext = None
        self._highest_modseq = None

    async def examine(self, mailbox: str) -> MailboxState:
        encoded = encode_mailbox(mailbox)
        if self._encoded == encoded:
            await self.noop()
            state = self.selected
            assert state is not None
            return state
        return await self._open(b"EXAMINE", mailbox, encoded)

    async def examine_fetch(
        self, mailbox: str, message_set: Callable[[int], str | None], items: str
    ) -> tuple[MailboxState, list[FetchedMessage] | IMAPError | None]:
        """
        `examine` C{mailbox} and, when it is already open here, ``FETCH``
        C{message_set(exists)} (sequence numbers) in the same round trip:
        the freshness ``NOOP`` and the ``FETCH`` are written together.

        A server may run the two in either order, or at once (Dovecot runs
        the FETCH first and reports new mail after it), so the FETCH counts
        only when the NOOP brought no news: no EXISTS, EXPUNGE, VANISHED or
        UIDVALIDITY, and no FETCH line but the ones asked for.  Otherwise
        the numbers asked for may be stale and nothing is returned.

        Returns the state after both and the FETCH's outcome: its messages,
        or the `IMAPError` it failed with (the caller decides whether to
        retry), or None when nothing usable was fetched (the mailbox was
        not open, C{message_set} gave None, the NOOP brought news, or the
        answer did not parse): then the caller fetches for the returned
        state as usual, and a malformed answer fails there as it always did.
        """
        encoded = encode_mailbox(mailbox)
        before = self._changes
        wanted = message_set(self._exists) if self._encoded == encoded else None
        if wanted is None:
            return await self.examine(mailbox), None
        spec = self._fetch_spec(wanted, items)
        noop = self._send(b"NOOP")
        fetch = self._send(b"FETCH", b" ", wanted.encode("ascii"), b" ", spec, pipeline=True)
        try:
            noop_response = await noop
        except BaseException:
            fetch.addErrback(lambda _: None)  # the NOOP's error is the one to report
            raise
        try:
            fetch_response = await fetch
        except IMAPError as e:
            state = self.selected
            assert state is not None
            return state, (e if self._changes == before else None)
        state = self.selected
        assert state is not None
        if self._changes != before:
            return state, None
        # Untagged lines are kept by the oldest command in flight: the
        # FETCH's own lines may sit in the NOOP's response.
        lines = noop_response.lines + fetch_response.lines
        try:
            messages = self._fetched(Response(lines, b""), wanted, uid=False)
        except IMAPError:
            return state, None
        if sum(1 for line in lines if _is_fetch(line[0])) != len(messages):
            return state, None  # an unsolicited FETCH (flags changed elsewhere)
        return state, messages

    async def examine_uid_fetch(
        self, mailbox: str, uids: str, items: str, then: str | None = None
    ) -> tuple[MailboxState, list[FetchedMessage] | IMAPError | None]:
        """
        `examine` C{mailbox} and, when it is already open here, ``UID FETCH``
        C{uids} C{items} in the same round trip (``get_mail_message``'s
        head), and with C{then} a second ``UID FETCH`` of the same UIDs (its
        body parts, when the caller knows them already): the freshness
        ``NOOP`` and the FETCHes are written together.  The messages come
        back with the items of both FETCHes.

        As for `examine_fetch`, the answer counts only when the NOOP brought
        no news at all (a UID stays valid when mail comes and goes, but the
        message may just have been expunged, or its flags changed): then
        None, and the caller fetches again for the returned state.  An
        `IMAPError` of the first FETCH is handed back for the caller's
        retry; if only C{then} failed, None.
        """
        encoded = encode_mailbox(mailbox)
        if self._encoded != encoded:
            return await self.examine(mailbox), None
        before = self._changes
        specs = [self._fetch_spec(uids, items)]
        if then is not None:
            specs.append(self._fetch_spec(uids, then))
        uid_set = uids.encode("ascii")
        noop = self._send(b"NOOP")
        fetches = [
            self._send(b"UID FETCH", b" ", uid_set, b" ", spec, pipeline=True) for spec in specs
        ]
        try:
            noop_response = await noop
        except BaseException:
            for fetch in fetches:
                fetch.addErrback(lambda _: None)  # the NOOP's error is the one to report
            raise
        lines = list(noop_response.lines)
        head_error: IMAPError | None = None
        then_failed = False
        for index, fetch in enumerate(fetches):
            try:
                lines += (await fetch).lines
            except IMAPError as e:
                if index == 0:
                    head_error = e
                else:
                    then_failed = True
        state = self.selected
        assert state is not None
        if self._changes != before:
            return state, None
        if head_error is not None:
            return state, head_error
        if then_failed:
            return state, None
        try:
            messages = self._fetched(Response(lines, b""), uids, uid=True)
        except IMAPError:
            return state, None
        if sum(1 for line in lines if _is_fetch(line[0])) != len(specs) * len(messages):
            return state, None  # an unsolicited FETCH (flags changed elsewhere)
        return state, messages

    async def select(self, mailbox: str) -> MailboxState:
        encoded = encode_mailbox(mailbox)
        if self._encoded == encoded and not self._read_only:
            await self.noop()
            state = self.selected
            assert state is not None
            return state
        return await self._open(b"SELECT", mailbox, encoded)

    async def _open(self, verb: bytes, mailbox: str, encoded: bytes) -> MailboxState:
        self._forget()  # a failed SELECT leaves no mailbox open (RFC 3501 §6.3.1)
        pieces: list[bytes | Literal] = [b" ", quote(encoded)]
        if "CONDSTORE" in self._capabilities:
            pieces.append(b" (CONDSTORE)")
        try:
            response = await self.command(verb, *pieces)
        except CommandFailed as e:
            if e.status == "NO":
                raise IMAPNoSuchMailbox(f"no mailbox named {mailbox!r} ({e.text})") from None
            raise
        exists = 0
        uidvalidity: int | None = None
        uidnext: int | None = None
        flags: tuple[str, ...] = ()
        permanent: tuple[str, ...] = ()
        modseq: int | None = None
        for line in response.lines:
            head = line[0]
            first, _, rest = head.partition(b" ")
            upper = rest[:6].upper()
            if first.isdigit() and upper == b"EXISTS":
                exists = _bounded(first)
            elif first.upper() == b"FLAGS":
                values = _parse(line)
                if len(values) == 2 and isinstance(values[1], list):
                    flags = tuple(as_atom_str(f) for f in values[1])
            elif first.upper() == b"OK":
                code, _ = split_code(rest)
                if not code or len(code) < 2:
                    continue
                name, value = code[0], code[1]
                if name == b"UIDVALIDITY" and type(value) is int and value <= MAX_UINT32:
                    uidvalidity = value
                elif name == b"UIDNEXT" and type(value) is int and value <= MAX_UINT32:
                    uidnext = value
                elif name == b"HIGHESTMODSEQ" and type(value) is int and value <= MAX_MODSEQ:
                    modseq = value
                elif name == b"PERMANENTFLAGS" and isinstance(value, list):
                    permanent = tuple(as_atom_str(f) for f in value)
        if uidvalidity is None:
            raise IMAPError(f"the mail server sent no UIDVALIDITY for {mailbox!r}")
        read_only = verb == b"EXAMINE" or bool(response.code and response.code[0] == b"READ-ONLY")
        self._name = mailbox
        self._encoded = encoded
        self._read_only = read_only
        self._exists = exists
        self._uidvalidity = uidvalidity
        self._uidnext = uidnext
        self._flags = flags
        self._permanent_flags = permanent
        self._highest_modseq = modseq
        state = self.selected
        assert state is not None
        return state

    def _require_open(self) -> None:
        if self._name is None:
            raise IMAPError("no mailbox is open; examine or select one first")

    async def _writable(self) -> None:
        """Upgrade an EXAMINEd mailbox to SELECTed before a write."""
        self._require_open()
        if not self._read_only:
            return
        assert self._name is not None
        before = self._uidvalidity
        state = await self.select(self._name)
        if state.read_only:
            raise IMAPError(f"the mailbox {state.name!r} is read-only")
        if state.uidvalidity != before:
            raise IMAPError("the mailbox was renumbered (UIDVALIDITY changed); list it again")

    # -- messages ------------------------------------------------------------------------

    async def fetch(
        self, message_set: str, items: str, *, uid: bool = True
    ) -> list[FetchedMessage]:
        spec = self._fetch_spec(message_set, items)
        response = await self.command(
            b"UID FETCH" if uid else b"FETCH", b" ", message_set.encode("ascii"), b" ", spec
        )
        return self._fetched(response, message_set, uid=uid)

    def _fetch_spec(self, message_set: str, items: str) -> bytes:
        """The validated, side-effect free FETCH items for C{message_set}."""
        self._require_open()
        if not isinstance(message_set, str) or not is_sequence_set(message_set):
            raise IMAPError(f"invalid message set {message_set!r:.40}")
        return _fetch_items(items)

    def _fetched(self, response: Response, message_set: str, *, uid: bool) -> list[FetchedMessage]:
        """The messages of a FETCH C{response}, only those C{message_set} asked for."""
        ranges = _merge_ranges(sequence_ranges(message_set))
        starts = [r[0] for r in ranges]
        merged: dict[int, FetchedMessage] = {}
        for line in response.lines:
            try:
                message = parse_fetch(line)
            except ParseError as e:
                raise IMAPError(
                    f"the mail server sent a malformed FETCH response ({e.detail})"
                ) from None
            if message is None:
                continue
            key = message.uid if uid else message.seq
            if not _in_ranges(key, ranges, starts):
                continue  # unsolicited or not what we asked for (IM-11)
            previous = merged.get(message.seq)
            merged[message.seq] = message if previous is None else merge_fetched(previous, message)
        return list(merged.values())

    async def uid_search(self, criteria: Sequence[bytes | Literal]) -> list[int]:
        self._require_open()
        if not criteria:
            raise IMAPError("empty search")
        pieces: list[bytes | Literal] = []
        esearch = "ESEARCH" in self._capabilities
        if esearch:
            pieces.append(b" RETURN (ALL)")
        if any(isinstance(c, Literal) for c in criteria):
            pieces.append(b" CHARSET UTF-8")
        for token in criteria:
            pieces.append(b" ")
            pieces.append(token if isinstance(token, Literal) else check_atom_token(token))
        try:
            response = await self.command(b"UID SEARCH", *pieces)
        except CommandFailed as e:
            if e.code_name == b"BADCHARSET":
                raise IMAPError(
                    "the mail server cannot search for non-ASCII text (it answered BADCHARSET); "
                    "search with ASCII words instead"
                ) from None
            raise
        uids: set[int] = set()
        for line in response.lines:
            head = line[0][:8].upper()
            if head.startswith(b"ESEARCH"):
                values = _parse(line)
                for i in range(1, len(values) - 1):
                    word = values[i]
                    if isinstance(word, bytes) and word.upper() == b"ALL":
                        uids.update(_uid_set(values[i + 1]))
            elif head.startswith(b"SEARCH"):
                for value in _parse(line)[1:]:
                    if type(value) is not int or not 0 < value <= MAX_UINT32:
                        raise IMAPError("the mail server sent a malformed SEARCH response")
                    uids.add(value)
            if len(uids) > MAX_RESULT_UIDS:
                raise IMAPError("the search matched too many messages")
        return sorted(uids)

    async def uid_store(
        self, uids: Sequence[int], mode: str, flags: Sequence[str], *, silent: bool = True
    ) -> dict[int, tuple[str, ...]]:
        uid_set = check_uids(uids)
        if mode not in _STORE_MODES:
            raise IMAPError(f"invalid STORE mode {mode!r:.20}")
        flags_b = flag_list(flags)
        await self._writable()
        item = mode.encode("ascii") + (b".SILENT" if silent else b"")
        response = await self.command(b"UID STORE", b" ", uid_set, b" ", item, b" ", flags_b)
        if silent:
            return {}
        wanted = set(uids)
        result: dict[int, tuple[str, ...]] = {}
        for line in response.lines:
            try:
                message = parse_fetch(line)
            except ParseError:
                continue
            if message is not None and message.uid in wanted and message.flags is not None:
                result[message.uid] = message.flags
        return result

    async def uid_copy(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        uid_set = check_uids(uids)
        target = quote(encode_mailbox(mailbox))
        self._require_open()
        response = await self._to_mailbox(b"UID COPY", uid_set, target, mailbox)
        return _copyuid(response)

    async def uid_move(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        uid_set = check_uids(uids)
        target = quote(encode_mailbox(mailbox))
        if "MOVE" in self._capabilities:
            await self._writable()
            response = await self._to_mailbox(b"UID MOVE", uid_set, target, mailbox)
            return _copyuid(response)
        if "UIDPLUS" not in self._capabilities:
            raise IMAPError(
                "the mail server supports neither MOVE nor UIDPLUS, so a move could delete "
                "other messages; refusing"
            )
        await self._writable()
        mapping = _copyuid(await self._to_mailbox(b"UID COPY", uid_set, target, mailbox))
        await self.uid_store(uids, "+FLAGS", ["\\Deleted"])
        await self.uid_expunge(uids)
        return mapping

    async def _to_mailbox(
        self, verb: bytes, uid_set: bytes, target: bytes, mailbox: str
    ) -> Response:
        try:
            return await self.command(verb, b" ", uid_set, b" ", target)
        except CommandFailed as e:
            if e.code_name in (b"TRYCREATE", b"NONEXISTENT"):
                raise IMAPNoSuchMailbox(f"no mailbox named {mailbox!r}") from None
            raise

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        uid_set = check_uids(uids)
        if "UIDPLUS" not in self._capabilities:
            raise IMAPError(
                "the mail server lacks UIDPLUS, so only a bare EXPUNGE could remove messages, "
                "which might remove others too; refusing"
            )
        await self._writable()
        await self.command(b"UID EXPUNGE", b" ", uid_set)

    async def append(
        self, mailbox: str, message: bytes, flags: Sequence[str] = (), date: str | None = None
    ) -> Appended:
        if not isinstance(message, bytes) or not message:
            raise IMAPError("the message to store is empty")
        if len(message) > self.protocol.max_literal:
            raise IMAPError("the message is too large to store")
        pieces: list[bytes | Literal] = [b" ", quote(encode_mailbox(mailbox))]
        if flags:
            pieces += [b" ", flag_list(flags)]
        if date is not None:
            pieces += [b" ", check_date_time(date)]
        pieces += [b" ", Literal(message)]
        try:
            response = await self.command(b"APPEND", *pieces)
        except CommandFailed as e:
            if e.code_name in (b"TRYCREATE", b"NONEXISTENT"):
                raise IMAPNoSuchMailbox(f"no mailbox named {mailbox!r}") from None
            raise
        code = response.code
        if code and code[0] == b"APPENDUID" and len(code) >= 3:
            uidvalidity = code[1] if type(code[1]) is int and code[1] <= MAX_UINT32 else None
            uid = code[2] if type(code[2]) is int and 0 < code[2] <= MAX_UINT32 else None
            return Appended(uidvalidity, uid)
        return Appended(None, None)

    # -- conversations, folder management, changes (issue 16) ---------------------------
    #
    # Kept apart from the commands above: THREAD (RFC 5256), RENAME, and the
    # CONDSTORE/QRESYNC reads behind get_mailbox_changes (RFC 7162).

    @property
    def qresync_enabled(self) -> bool:
        return self._qresync

    async def uid_thread_references(self, criteria: Sequence[bytes]) -> list[list[int]]:
        """
        ``UID THREAD REFERENCES UTF-8 <criteria>`` on the open mailbox: each
        thread's UIDs, flattened in tree order.  Only when the server
        advertises ``THREAD=REFERENCES``.
        """
        self._require_open()
        if "THREAD=REFERENCES" not in self._capabilities:
            raise IMAPError("the mail server does not offer THREAD=REFERENCES")
        if not criteria:
            raise IMAPError("empty search")
        pieces: list[bytes | Literal] = [b" REFERENCES UTF-8"]
        for token in criteria:
            pieces += [b" ", check_atom_token(token)]
        response = await self.command(b"UID THREAD", *pieces)
        threads: list[list[int]] = []
        total = 0
        for line in response.lines:
            if line[0][:7].upper() not in (b"THREAD", b"THREAD "):
                continue
            for tree in _parse(line)[1:]:
                uids = _thread_uids(tree)
                total += len(uids)
                if total > MAX_RESULT_UIDS:
                    raise IMAPError("the THREAD answer holds too many messages")
                threads.append(uids)
        return threads

    async def rename_mailbox(self, old: str, new: str) -> None:
        """
        RENAME C{old} to C{new}.  The open mailbox is left first: it may be
        C{old} or below it, and the cached selection would then name a
        mailbox that no longer exists.
        """
        source, target = quote(encode_mailbox(old)), quote(encode_mailbox(new))
        await self.unselect()
        await self.command(b"RENAME", b" ", source, b" ", target)

    async def enable_qresync(self) -> None:
        """
        ``ENABLE QRESYNC`` once per connection (RFC 7162).  ENABLE belongs
        before any SELECT, so an open mailbox is left first.  From then on
        the server reports expunges as VANISHED, which `_untagged` counts.
        """
        if self._qresync:
            return
        if "QRESYNC" not in self._capabilities:
            raise IMAPError("the mail server does not offer QRESYNC")
        await self.unselect()
        response = await self.command(b"ENABLE", b" QRESYNC")
        for line in response.lines:
            if line[0][:8].upper() == b"ENABLED " and b"QRESYNC" in line[0].upper():
                self._qresync = True
        if not self._qresync:
            raise IMAPError("the mail server did not enable QRESYNC")

    async def reopen(self, mailbox: str) -> MailboxState:
        """EXAMINE C{mailbox} afresh (not the cached NOOP): exact UIDNEXT and HIGHESTMODSEQ."""
        return await self._open(b"EXAMINE", mailbox, encode_mailbox(mailbox))

    async def uid_fetch_changed(
        self, uid_range: tuple[int, int], modseq: int
    ) -> tuple[dict[int, tuple[str, ...]], list[int]]:
        """
        ``UID FETCH low:high (UID FLAGS) (CHANGEDSINCE modseq VANISHED)``:
        the flags of messages changed since C{modseq} and the UIDs expunged
        since then (QRESYNC must be enabled).
        """
        self._require_open()
        if not self._qresync:
            raise IMAPError("QRESYNC is not enabled on this connection")
        low, high = uid_range
        if not (0 < low <= high <= MAX_UINT32) or not 0 <= modseq <= MAX_MODSEQ:
            raise IMAPError("invalid CHANGEDSINCE range")
        response = await self.command(
            b"UID FETCH",
            b" %d:%d (UID FLAGS) (CHANGEDSINCE %d VANISHED)" % (low, high, modseq),
        )
        changed: dict[int, tuple[str, ...]] = {}
        vanished: set[int] = set()
        for line in response.lines:
            head = line[0]
            if head[:9].upper() == b"VANISHED ":
                values = _parse(line)
                uids = values[-1] if len(values) >= 2 else None
                if uids is None or isinstance(uids, list):
                    raise IMAPError("the mail server sent a malformed VANISHED response")
                vanished.update(u for u in _uid_set(uids) if low <= u <= high)
                if len(vanished) > MAX_RESULT_UIDS:
                    raise IMAPError("the VANISHED answer holds too many messages")
                continue
            try:
                message = parse_fetch(line)
            except ParseError as e:
                raise IMAPError(
                    f"the mail server sent a malformed FETCH response ({e.detail})"
                ) from None
            if message is not None and low <= message.uid <= high and message.flags is not None:
                changed[message.uid] = message.flags
        return changed, sorted(vanished - set(changed))

    async def highest_uid(self) -> int | None:
        """The UID of the last message of the open mailbox (``FETCH * (UID)``), None when empty."""
        self._require_open()
        if self._exists == 0:
            return None
        response = await self.command(b"FETCH", b" * (UID)")
        best: int | None = None
        for line in response.lines:
            try:
                message = parse_fetch(line)
            except ParseError:
                continue
            if message is not None and (best is None or message.uid > best):
                best = message.uid
        return best


def _status_items(items: Sequence[str]) -> list[str]:
    wanted = [str(i).upper() for i in items]
    if not wanted or any(i not in _STATUS_ITEMS for i in wanted):
        raise IMAPError(f"invalid STATUS items {list(items)!r:.80}")
    return wanted


def _status_pairs(pairs: list[Value]) -> dict[str, int]:
    result: dict[str, int] = {}
    for i in range(0, len(pairs) - 1, 2):
        key, value = pairs[i], pairs[i + 1]
        if isinstance(key, bytes) and type(value) is int and value <= MAX_MODSEQ:
            result[key.decode("latin-1").upper()] = value
    return result


def _mailbox_name(raw: Value) -> str:
    """A mailbox name from LIST/STATUS: atom, string or literal; decoded."""
    if isinstance(raw, int):
        return str(raw)
    if not isinstance(raw, bytes):
        raise ParseError("bad mailbox name")
    return "INBOX" if raw.upper() == b"INBOX" else decode_mailbox(raw)


def _parse(line: RawResponse) -> list[Value]:
    try:
        return parse_values(line)
    except ParseError as e:
        raise IMAPError(e.message) from None


def _is_fetch(head: bytes) -> bool:
    """Whether an untagged line is ``<n> FETCH ...``."""
    first, _, rest = head.partition(b" ")
    return first.isdigit() and rest[:6].upper() == b"FETCH "


def _bounded(raw: bytes) -> int:
    if len(raw) > 10 or int(raw) > MAX_UINT32:
        raise IMAPError("the mail server sent an out-of-range number")
    return int(raw)


def _vanished_count(rest: bytes) -> int:
    """How many UIDs an unsolicited ``VANISHED <uid-set>`` names (0 when malformed)."""
    try:
        return sum(high - low + 1 for low, high in sequence_ranges(rest.strip()))
    except (ParseError, ValueError):
        return 0


def _thread_uids(tree: Value) -> list[int]:
    """The UIDs of one THREAD tree, ``(3 6 (4 23)(44 7 96))``, in tree order."""
    out: list[int] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif type(node) is int and 0 < node <= MAX_UINT32:
            out.append(node)
        else:
            raise IMAPError("the mail server sent a malformed THREAD response")
    return out


def _uid_set(value: Value) -> list[int]:
    if type(value) is int:
        if not 0 < value <= MAX_UINT32:
            raise IMAPError("the mail server sent an out-of-range UID")
        return [value]
    if not isinstance(value, bytes):
        raise IMAPError("the mail server sent a malformed ESEARCH response")
    try:
        return expand_sequence_set(value, MAX_RESULT_UIDS)
    except ParseError as e:
        raise IMAPError(f"the mail server sent a malformed UID set ({e.detail})") from None


def _copyuid(response: Response) -> dict[int, int]:
    code: list[Value] | None = response.code
    if not (code and code[0] == b"COPYUID"):
        code = None
        for line in response.lines:
            if line[0][:10].upper() == b"OK [COPYUI":
                candidate, _ = split_code(line[0][2:])
                if candidate and candidate[0] == b"COPYUID":
                    code = candidate
    if not code or len(code) < 4:
        return {}
    try:
        source = _uid_set(code[2])
        target = _uid_set(code[3])
    except IMAPError:
        return {}
    if len(source) != len(target):
        return {}
    return dict(zip(source, target, strict=True))


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _in_ranges(value: int, ranges: list[tuple[int, int]], starts: list[int]) -> bool:
    """Whether C{value} is in merged, sorted C{ranges} (C{starts}: their lows)."""
    index = bisect.bisect_right(starts, value) - 1
    return index >= 0 and value <= ranges[index][1]


def _fetch_items(items: str) -> bytes:
    """
    Validate FETCH items and make them side-effect free: ``BODY[`` becomes
    ``BODY.PEEK[``, ``RFC822``/``RFC822.TEXT`` (which set \\Seen) are
    refused, and ``UID`` is always asked for.
    """
    if not isinstance(items, str):
        raise IMAPError("invalid FETCH items")
    raw = items.strip().encode("ascii", "replace")
    if not _FETCH_ITEMS_OK.fullmatch(raw) or b"{" in raw or raw.count(b"(") != raw.count(b")"):
        raise IMAPError(f"invalid FETCH items {items!r:.60}")
    if _RFC822_SEEN.search(raw):
        raise IMAPError("RFC822 and RFC822.TEXT would mark messages seen; use BODY.PEEK[]")
    raw = _BODY_NO_PEEK.sub(lambda m: m.group(1) + b".PEEK[", raw)
    if not _HAS_UID.search(raw):
        raw = b"(UID " + raw[1:] if raw.startswith(b"(") else b"(UID " + raw + b")"
    return raw
