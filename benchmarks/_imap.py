"""
A bare IMAP client on asyncio streams: just enough protocol to send tagged
commands and read their responses (lines and ``{n}`` literals), with no
parsing beyond that.  It is the "physical floor" of the benchmark: the same
IMAP commands mailmcp sends, on an already logged-in connection with the
folder open, with nothing else in the way.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Sequence

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.I)


class IMAPFailure(Exception):
    pass


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    return context


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def warm_list_commands(exists: int, per_page: int = 20, page: int = 1) -> list[str]:
    """
    The IMAP commands a warm ``list_mail_messages(folder, page, per_page)``
    sends on a pooled connection that already has the folder open:
    ``NOOP`` (the pool's freshness check, which also reports new EXISTS) and
    one ``FETCH`` of the page by sequence number (newest first, so the last
    C{per_page} sequence numbers), asking for what the tool returns; both
    in one write (``Session.examine_fetch``).

    Kept in step with ``mailmcp/tools/_reading.py``.
    """
    hi = exists - (page - 1) * per_page
    lo = max(1, hi - per_page + 1)
    return ["NOOP", f"FETCH {lo}:{hi} (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"]


class BareIMAP:
    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tag = 0
        self.exists = 0
        self.bytes_read = 0

    async def connect(self, host: str, port: int, context: ssl.SSLContext | None,
                      server_hostname: str = "localhost") -> None:
        self._reader, self._writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_hostname if context else None, limit=1 << 22
        )
        greeting = await self._reader.readline()
        if not greeting.startswith(b"* OK"):
            raise IMAPFailure(f"bad greeting {greeting[:80]!r}")

    async def command(self, text: str) -> list[bytes]:
        """Send one command; return the untagged response lines (literals inlined)."""
        assert self._reader is not None and self._writer is not None
        self._tag += 1
        tag = b"b%d" % self._tag
        self._writer.write(tag + b" " + text.encode("utf-8") + b"\r\n")
        reader = self._reader
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line:
                raise IMAPFailure("connection closed")
            m = _LITERAL.search(line)
            while m:
                literal = await reader.readexactly(int(m.group(1)))
                rest = await reader.readline()
                line = line + literal + rest
                m = _LITERAL.search(rest)
            self.bytes_read += len(line)
            if line.startswith(tag + b" "):
                if line[len(tag) + 1:len(tag) + 3].upper() != b"OK":
                    raise IMAPFailure(line.decode("utf-8", "replace").strip())
                return lines
            e = _EXISTS.match(line)
            if e:
                self.exists = int(e.group(1))
            lines.append(line)

    async def pipeline(self, texts: Sequence[str]) -> list[bytes]:
        """
        Send C{texts} in one write without waiting (as mailmcp sends NOOP and
        FETCH); return the untagged lines once every command is answered
        (a server may answer them in any order).
        """
        assert self._reader is not None and self._writer is not None
        tags = []
        out = []
        for text in texts:
            self._tag += 1
            tags.append(b"b%d " % self._tag)
            out.append(tags[-1] + text.encode("utf-8") + b"\r\n")
        self._writer.write(b"".join(out))
        reader = self._reader
        pending = set(tags)
        lines: list[bytes] = []
        while pending:
            line = await reader.readline()
            if not line:
                raise IMAPFailure("connection closed")
            m = _LITERAL.search(line)
            while m:
                literal = await reader.readexactly(int(m.group(1)))
                rest = await reader.readline()
                line = line + literal + rest
                m = _LITERAL.search(rest)
            self.bytes_read += len(line)
            if not line.startswith(b"* "):
                tag = line[: line.find(b" ") + 1]
                if tag in pending:
                    pending.discard(tag)
                    if line[len(tag):len(tag) + 2].upper() != b"OK":
                        raise IMAPFailure(line.decode("utf-8", "replace").strip())
                    continue
            e = _EXISTS.match(line)
            if e:
                self.exists = int(e.group(1))
            lines.append(line)
        return lines

    async def login(self, user: str, password: str) -> None:
        await self.command(f"LOGIN {quote(user)} {quote(password)}")

    async def examine(self, folder: str) -> int:
        await self.command(f"EXAMINE {quote(folder)}")
        return self.exists

    async def logout(self) -> None:
        try:
            await self.command("LOGOUT")
        except (IMAPFailure, ConnectionError):
            pass
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def open_session(host: str, port: int, context: ssl.SSLContext, user: str, password: str,
                       folder: str) -> BareIMAP:
    client = BareIMAP()
    await client.connect(host, port, context)
    await client.login(user, password)
    await client.examine(folder)
    return client


async def timed_warm_calls(client: BareIMAP, iterations: int,
                           commands: Callable[[int], Sequence[str]] = warm_list_commands,
                           pipelined: bool = True) -> list[float]:
    """
    Latency (s) of C{iterations} warm listings on an open session: the
    commands in one write, as mailmcp sends them (C{pipelined}), or one
    round trip each (what mailmcp did before it pipelined NOOP and FETCH).
    """
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        if pipelined:
            await client.pipeline(commands(client.exists))
        else:
            for text in commands(client.exists):
                await client.command(text)
        out.append(time.perf_counter() - t0)
    return out


async def connect_per_call(host: str, port: int, context: ssl.SSLContext, user: str, password: str,
                           folder: str) -> float:
    """The seed's design, from a bare client: connect, TLS, LOGIN, EXAMINE, UID SEARCH ALL, FETCH, LOGOUT."""
    t0 = time.perf_counter()
    client = BareIMAP()
    await client.connect(host, port, context)
    await client.login(user, password)
    exists = await client.examine(folder)
    await client.command("UID SEARCH ALL")
    await client.command(warm_list_commands(exists)[-1])
    await client.logout()
    return time.perf_counter() - t0


async def ceiling(host: str, port: int, context: ssl.SSLContext, accounts: Sequence[tuple[str, str]],
                  folder: str, duration: float) -> dict[str, float]:
    """
    The raw IMAP ceiling: one logged-in connection per entry of C{accounts},
    each looping warm listings for C{duration} seconds.  Returns calls/s.
    """
    sessions = [await open_session(host, port, context, u, p, folder) for u, p in accounts]
    for s in sessions:  # one untimed call each: Dovecot's caches warm
        await timed_warm_calls(s, 1)
    deadline = time.perf_counter() + duration
    counts = [0] * len(sessions)
    latencies: list[float] = []

    async def loop(i: int, s: BareIMAP) -> None:
        while time.perf_counter() < deadline:
            latencies.extend(await timed_warm_calls(s, 1))
            counts[i] += 1

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(i, s) for i, s in enumerate(sessions)))
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - c0
    for s in sessions:
        await s.logout()
    latencies.sort()
    return {
        "connections": len(sessions),
        "calls": sum(counts),
        "seconds": elapsed,
        "calls_per_s": sum(counts) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "client_cpu_share": client_cpu / elapsed,
    }


def ceiling_process(args: tuple[str, int, str, list[tuple[str, str]], str, float]) -> dict[str, float]:
    """`ceiling` in a child process (so that the client's own CPU is spread over cores)."""
    host, port, ca_file, accounts, folder, duration = args
    return asyncio.run(ceiling(host, port, tls_context(ca_file), accounts, folder, duration))


_CODE = re.compile(rb"^\* OK \[(UIDNEXT|HIGHESTMODSEQ) (\d+)\]", re.I)


def response_codes(lines: Sequence[bytes]) -> dict[str, int]:
    """UIDNEXT / HIGHESTMODSEQ from the untagged OK lines of a SELECT/EXAMINE."""
    out = {}
    for line in lines:
        m = _CODE.match(line)
        if m:
            out[m.group(1).decode().upper()] = int(m.group(2))
    return out


def changes_commands(folder: str, uidnext: int, modseq: int) -> list[str]:
    """
    The IMAP commands a warm ``get_mailbox_changes(folder, since=state)``
    sends when nothing changed, on a connection with QRESYNC enabled: a
    fresh EXAMINE, CHANGEDSINCE ... VANISHED over the old UIDs, and the
    search for new ones.  Kept in step with ``mailmcp/tools/_changes.py``.
    """
    return [
        f"EXAMINE {quote(folder)} (CONDSTORE)",
        f"UID FETCH 1:{uidnext - 1} (UID FLAGS) (CHANGEDSINCE {modseq} VANISHED)",
        f"UID SEARCH RETURN (ALL) UID {uidnext}:*",
    ]


def thread_members(line: bytes, uid: int) -> list[int]:
    """The other UIDs of the top-level THREAD tree that holds C{uid}."""
    depth = 0
    start = 0
    body = line.split(b"THREAD", 1)[-1]
    for i, ch in enumerate(body):
        if ch == 40:  # (
            if depth == 0:
                start = i
            depth += 1
        elif ch == 41:  # )
            depth -= 1
            if depth == 0:
                numbers = [int(n) for n in re.findall(rb"\d+", body[start : i + 1])]
                if uid in numbers:
                    return [n for n in numbers if n != uid]
    return []


def thread_commands(uid: int, message_id: str, members: Sequence[int] = ()) -> list[str]:
    """
    The IMAP commands a warm ``get_mail_thread("INBOX", uid)`` sends for a
    message that is a conversation of its own (folder already open): LIST,
    the freshness NOOP, the seed's headers, THREAD, the three threading
    headers of the other members of its THREAD tree (same-subject messages,
    C{members}), one header search in
    INBOX (open), Sent and Archive, and the snippet back in INBOX.  Kept in
    step with ``mailmcp/tools/_threads.py``.
    """
    q = quote(message_id)
    search = (f"UID SEARCH RETURN (ALL) OR OR HEADER Message-ID {q} HEADER In-Reply-To {q} "
              f"HEADER References {q}")
    head = ("(UID FLAGS INTERNALDATE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS "
            "(MESSAGE-ID IN-REPLY-TO REFERENCES)]<0.16384>)")
    return [
        'LIST "" "*" RETURN (SPECIAL-USE CHILDREN)',
        "NOOP",
        f"UID FETCH {uid} {head}",
        "UID THREAD REFERENCES UTF-8 ALL",
        *([f"UID FETCH {','.join(map(str, sorted(members)[:499]))} (UID BODY.PEEK[HEADER.FIELDS "
           "(MESSAGE-ID IN-REPLY-TO REFERENCES)]<0.16384>)"] if members else []),
        "NOOP",
        search,
        f"EXAMINE {quote('Sent')} (CONDSTORE)",
        search,
        f"EXAMINE {quote('Archive')} (CONDSTORE)",
        search,
        f"EXAMINE {quote('INBOX')} (CONDSTORE)",
        f"UID FETCH {uid} (UID BODY.PEEK[1]<0.2048>)",
    ]



# -- the raw floors of get_mail_message, search_mail_messages and the Sent copy
# (kept in step with mailmcp/tools/_reading.py and mailmcp/attachments/_helpers.py)

MESSAGE_ITEMS = ("(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE "
                 "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES)]<0.32768>)")
SUMMARY_ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"
#: What get_mail_message asks for of one text part at its default 20,000 characters.
_TEXT_BUDGET = {"text/plain": 20_000 * 3 // 2 + 4096, "text/html": 20_000 * 12 + 4096}


def search_uids(lines: Sequence[bytes]) -> list[int]:
    """The UIDs of a ``* SEARCH`` answer."""
    out: list[int] = []
    for line in lines:
        if line.upper().startswith(b"* SEARCH"):
            out += [int(t) for t in line.split()[2:] if t.isdigit()]
    return sorted(out)


def message_commands(uid: int, parts: Sequence[tuple[str, str]], attachments: Sequence[str] = ()) -> list[str]:
    """
    The commands of a warm ``get_mail_message``: the pool's NOOP, the head
    (envelope, structure, threading headers), the text parts within their
    budget, and, on a first read, each attachment part with its MIME header.
    """
    commands = ["NOOP", f"UID FETCH {uid} {MESSAGE_ITEMS}"]
    if parts:
        items = " ".join(f"BODY.PEEK[{p}]<0.{_TEXT_BUDGET[kind]}>" for p, kind in parts)
        commands.append(f"UID FETCH {uid} (UID {items})")
    if attachments:
        items = " ".join(f"BODY.PEEK[{p}.MIME] BODY.PEEK[{p}]" for p in attachments)
        commands.append(f"UID FETCH {uid} (UID {items})")
    return commands


def search_commands(subject: str) -> list[str]:
    """A warm ``search_mail_messages(subject=…)``: NOOP, then the UID SEARCH (ESEARCH form)."""
    return ["NOOP", f"UID SEARCH RETURN (ALL) CHARSET UTF-8 SUBJECT {quote(subject)}"]


def summary_fetch(uids: Sequence[int]) -> list[str]:
    """The summaries' FETCH of a search result (compact UID set), or nothing."""
    if not uids:
        return []
    ordered = sorted(set(uids))
    pieces: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        pieces.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return [f"UID FETCH {','.join(pieces)} {SUMMARY_ITEMS}"]


def append_command(folder: str, message: bytes) -> str:
    """APPEND with a non-synchronising literal (LITERAL+), so one write sends it all."""
    return f"APPEND {quote(folder)} (\\Seen) {{{len(message)}+}}\r\n" + message.decode("utf-8")
