"""
The audit trail (``--audit-log``): one JSON object per line for every
login, token issue, refresh, revocation and tool call, so an operator can
say afterwards what an assistant did with a mailbox (docs/threat-model.rst,
LG-06, LG-07).

A line says when, which client (a short id and its name), which account,
which tool, what it aimed at (folder, UID, destination, how many recipients
and their domains) and the outcome: ``ok``, ``error`` or ``unknown`` (a send
whose delivery status is unknown, a call cut off).  It never holds message
content (bodies, subjects, search text, file names) nor any secret: the
entries are built here from an explicit list of fields, never by dumping
arguments.

Lines go through `IAuditLog`: `FileAuditLog` appends to a file and reopens
it on SIGHUP (for logrotate), `LogAuditLog` writes into the main log
(``--audit-log -``), `MemoryAuditLog` keeps them for tests.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .oauth._grants import client_ref

log = Logger()

#: Where the caller's arguments may name a target, and nothing else is read.
_TARGET_FIELDS = ("folder", "uid", "uidvalidity", "destination", "part_id")
_TEXT_TARGETS = ("folder", "destination", "part_id")
_RECIPIENT_FIELDS = ("to", "cc", "bcc")
MAX_DOMAINS = 20


class IAuditLog(Interface):
    """Where audit entries go."""

    def record(entry: Mapping[str, Any]) -> None:
        """Keep one entry (a JSON-able mapping); never raises."""

    def reopen() -> None:
        """Close and reopen the underlying file, if any (after log rotation)."""


@implementer(IAuditLog)
class MemoryAuditLog:
    """Entries kept in a list (tests)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.reopened = 0

    def record(self, entry: Mapping[str, Any]) -> None:
        self.entries.append(dict(entry))

    def reopen(self) -> None:
        self.reopened += 1


@implementer(IAuditLog)
class LogAuditLog:
    """Entries as events in the daemon's main log (``--audit-log -``)."""

    def record(self, entry: Mapping[str, Any]) -> None:
        log.info("audit {audit_line}", audit_line=_line(entry), audit=dict(entry))

    def reopen(self) -> None:
        pass


@implementer(IAuditLog)
class FileAuditLog:
    """
    Entries appended to C{path} (created 0600), one line each, flushed at
    once: a line is a few hundred bytes, so the write costs less than the
    call it records.  A failed write is logged, never raised into the call.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def record(self, entry: Mapping[str, Any]) -> None:
        try:
            if self._file is None:
                self.open()
            assert self._file is not None
            self._file.write(_line(entry) + "\n")
            self._file.flush()
        except OSError as e:
            log.error("audit log {path} not written: {error}", path=self.path, error=e.strerror)

    def reopen(self) -> None:
        try:
            self.close()
            self.open()
        except OSError as e:
            log.error("audit log {path} not reopened: {error}", path=self.path, error=e.strerror)
            return
        log.info("audit log {path} reopened", path=self.path)


def _line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


class AuditFileService(Service):
    """
    Opens the audit file when the daemon starts (a bad path ends the start
    with one line), reopens it on SIGHUP, closes it on stop.
    """

    def __init__(self, audit_log: FileAuditLog, reactor: Any) -> None:
        self._log = audit_log
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._log.open()
        self._previous = signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of whatever the main
        # thread was doing: hand the work to the reactor.
        self._reactor.callFromThread(self._log.reopen)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        self._log.close()


class Audit:
    """Builds the entries (the only place that decides what a line may hold)."""

    def __init__(self, sink: IAuditLog, clock: Any) -> None:
        self.sink = sink
        self._clock = clock

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        when = datetime.fromtimestamp(self._clock.seconds(), UTC)
        entry = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        entry["event"] = event
        self.sink.record({**entry, **fields})

    def oauth(
        self,
        event: str,
        client: Any,
        outcome: str,
        account: str | None = None,
        error: str | None = None,
    ) -> None:
        """
        A login (``login``), token issue (``token``), refresh (``refresh``)
        or revocation (``revoke``) by C{client} (a `mailmcp.oauth._clients.Client`
        or None when it could not be identified).  C{error} is an OAuth
        error code, never a description.
        """
        fields: dict[str, Any] = {"client": _client(client), "account": account}
        fields["outcome"] = outcome
        if error is not None:
            fields["error"] = error
        self._emit(event, fields)

    def tool_call(
        self,
        account: Any,
        tool: str,
        arguments: Mapping[str, Any],
        output: Any,
        outcome: str,
    ) -> None:
        """One ``tools/call``: its targets from C{arguments} and C{output}, never their content."""
        client_ref = str(getattr(account, "client_ref", "") or "")
        self._emit(
            "tool",
            {
                "client": {"id": client_ref[:12] or None},
                "grant": str(account.owner)[:12],
                "account": account.email,
                "tool": tool,
                "targets": targets(arguments, output),
                "outcome": outcome,
            },
        )


def _client(client: Any) -> dict[str, Any]:
    if client is None:
        return {"id": None, "name": None}
    name = getattr(client, "name", None)
    return {"id": client_ref(client.client_id)[:12], "name": name[:100] if name else None}


def targets(arguments: Any, output: Any = None) -> dict[str, Any]:
    """
    What a call aimed at: folder, UID, destination as given (short scalars
    only), and the recipients as a count and their domains, from the SMTP
    answer when there is one (a reply-all's recipients come from the
    original) or else from to/cc/bcc.
    """
    found: dict[str, Any] = {}
    if not isinstance(arguments, Mapping):
        return found
    for name in _TARGET_FIELDS:
        value = arguments.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            found[name] = value
        elif isinstance(value, str) and name in _TEXT_TARGETS:
            found[name] = value[:200]
    addresses = _sent_addresses(output)
    if addresses is None:
        addresses = []
        for name in _RECIPIENT_FIELDS:
            value = arguments.get(name)
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list):
                addresses += [a for a in items if isinstance(a, str)]
    emails = [addr for _, addr in getaddresses(addresses) if "@" in addr]
    if emails:
        domains = sorted({e.rpartition("@")[2].lower().rstrip(".") for e in emails})
        found["recipients"] = len(emails)
        found["recipient_domains"] = domains[:MAX_DOMAINS]
    return found


def _sent_addresses(output: Any) -> list[str] | None:
    # The output model, or a tool's plain JSON-ready output in its shape.
    if isinstance(output, Mapping):
        recipients = output.get("recipients")
        if isinstance(recipients, list) and recipients:
            return [str(r.get("address", "")) if isinstance(r, Mapping) else "" for r in recipients]
        return None
    recipients = getattr(output, "recipients", None)
    if isinstance(recipients, list) and recipients:
        return [str(getattr(r, "address", "")) for r in recipients]
    return None


def build_audit(path: str | None, reactor: Any, parent: Any) -> Audit | None:
    """The daemon's `Audit` for ``--audit-log`` (a file service added to C{parent}), or None."""
    if path is None:
        return None
    if path == "-":
        return Audit(LogAuditLog(), reactor)
    sink = FileAuditLog(path)
    service = AuditFileService(sink, reactor)
    service.setName("audit-log")
    service.setServiceParent(parent)
    return Audit(sink, reactor)
