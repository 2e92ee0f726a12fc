"""
Microbenchmark: the MCP side of a warm ``list_mail_messages`` call, without
sockets or an IMAP server, in CPU time per call.

A `Dispatcher` (no HTTP request needed: it takes the body bytes) answers
``tools/call list_mail_messages`` for a 20-message page; the IMAP session
replays FETCH results computed once from the in-memory fake, so what is
measured is the JSON-RPC decode and dispatch, argument validation, the
summaries, the output and its JSON, as on the daemon's warm path minus HTTP
and the IMAP parser.

    .venv/bin/python benchmarks/mcp_output_bench.py [--rounds N] [--profile]

Variants, measured alternately in the same run:

- ``model``: the handler as it was before (`model_list_mail_messages`): a
  `MessageSummary` per message in a `ListMessagesOutput`, then
  ``isinstance`` + ``model_dump`` + ``json.dumps`` in the runner;
- ``plain, json``: the handler returns plain data, encoded by the standard
  library;
- ``plain, orjson``: the same, encoded by orjson (what production does).

``--profile`` prints the top of a cProfile of the production variant.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from mailmcp.mcp import _results  # noqa: E402
from mailmcp.mcp._dispatch import Dispatcher  # noqa: E402
from mailmcp.mcp._runner import ToolRunner  # noqa: E402
from mailmcp.testing import FakeIMAPServer, make_account, tool_services  # noqa: E402
from mailmcp.tools import all_tools  # noqa: E402
from mailmcp.tools._reading import (  # noqa: E402
    ListMessagesOutput,
    fetch_summaries,
    list_mail_messages_data,
    page_range,
    summarise,
)
from mailmcp.tools._state import current_state  # noqa: E402

BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "list_mail_messages", "arguments": {"folder": "INBOX", "per_page": 20}},
    }
).encode()
HEADERS = {"mcp-protocol-version": ["2025-11-25"]}


def _message(i: int) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = f"Zoë Exämple {i} <zoe{i}@example.test>"
    message["To"] = "Alice Example <alice@example.test>, bob@example.test"
    if i % 3 == 0:
        message["Cc"] = "Carol <carol@example.test>"
    message["Subject"] = f"Réunion du lundi {i} — agenda and notes" if i % 2 else f"Report {i}"
    message["Date"] = "Tue, 01 Jul 2025 13:30:00 +0000"
    message["Message-ID"] = f"<{i}.bench@example.test>"
    message.set_content("hello " * 50)
    if i % 5 == 0:
        message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf",
                               filename="report.pdf")
    return message.as_bytes()


class ReplaySession:
    """
    A warm session: the fake's answers, computed once, given again (no IMAP
    cost), with QRESYNC as Dovecot has it (the folder state is then its
    HIGHESTMODSEQ, not a snapshot of every message's flags).
    """

    capabilities = frozenset({"IMAP4REV1", "UIDPLUS", "MOVE", "ESEARCH", "CONDSTORE", "QRESYNC"})

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._memo: dict[tuple[Any, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _once(self, key: tuple[Any, ...], call: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = await call()
        return self._memo[key]

    async def examine(self, folder: str) -> Any:
        async def modseq() -> Any:
            return attrs.evolve(await self._inner.examine(folder), highest_modseq=4242)

        return await self._once(("examine", folder), modseq)

    async def fetch(self, message_set: str, items: str, *, uid: bool) -> Any:
        return await self._once(
            ("fetch", message_set, items, uid),
            lambda: self._inner.fetch(message_set, items, uid=uid),
        )

    async def uid_search(self, *args: Any, **kwargs: Any) -> Any:
        return await self._once(
            ("search", args, tuple(sorted(kwargs.items()))),
            lambda: self._inner.uid_search(*args, **kwargs),
        )


@attrs.define
class WarmPool:
    session: ReplaySession

    async def run(self, account: Any, operation: Any, *, read_only: bool) -> Any:
        return await operation(self.session)


async def model_list_mail_messages(ctx: Any, arguments: Any) -> ListMessagesOutput:
    """The handler before plain output: a `MessageSummary` per message, a `ListMessagesOutput`."""
    folder, page, per_page = arguments.folder, arguments.page, arguments.per_page

    async def operation(session: Any) -> ListMessagesOutput:
        state = await session.examine(folder)
        window = page_range(state.exists, page, per_page)
        fetched: list[Any] = []
        warnings: list[str] = []
        if window is not None:
            low, high = window
            results, warnings = await fetch_summaries(session, f"{low}:{high}", uid=False)
            fetched = sorted(
                (m for m in results if low <= m.seq <= high), key=lambda m: m.seq, reverse=True
            )
        top = fetched[0].uid if fetched and fetched[0].seq == state.exists else None
        marker = await current_state(session, folder, state, top_uid=top)
        return ListMessagesOutput(
            folder=folder,
            uidvalidity=state.uidvalidity,
            total=state.exists,
            page=page,
            per_page=per_page,
            has_more=window is not None and window[0] > 1,
            messages=[summarise(m) for m in fetched],
            warnings=warnings,
            state=marker.encode(),
        )

    result: ListMessagesOutput = await ctx.services.imap.run(ctx.account, operation, read_only=True)
    return result


def dispatcher(handler: Any) -> Dispatcher:
    server = FakeIMAPServer()
    box = server.mailbox("INBOX")
    for i in range(200):
        box.add(_message(i), {"\\Seen"} if i % 4 else ())
    services = tool_services(
        reactor=MemoryReactorClock(), imap=WarmPool(ReplaySession(server.session()))
    )
    (tool,) = [t for t in all_tools() if t.name == "list_mail_messages"]
    tool = attrs.evolve(tool, handler=handler)
    return Dispatcher({tool.name: tool}, ToolRunner(services))


def call(d: Dispatcher) -> bytes:
    out: list[Any] = []
    Deferred.fromCoroutine(d.handle_body(ACCOUNT, lambda: BODY, HEADERS)).addBoth(out.append)
    reply = out[0]
    assert isinstance(reply, _results.Reply) and reply.status == 200, reply
    return reply.body


ACCOUNT = make_account()


def stdlib_plain_json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    orjson_plain_json = _results.plain_json
    model, plain = dispatcher(model_list_mail_messages), dispatcher(list_mail_messages_data)
    bodies = [json.loads(call(model)), json.loads(call(plain))]
    structured = [b["result"]["structuredContent"] for b in bodies]
    assert structured[0] == structured[1], "the two paths disagree"
    assert len(structured[0]["messages"]) == 20

    def set_encoder(encoder: Any) -> None:
        _results.plain_json = encoder
        sys.modules["mailmcp.mcp._runner"].plain_json = encoder  # type: ignore[attr-defined]

    variants = {
        "model": (model, orjson_plain_json),
        "plain, json": (plain, stdlib_plain_json),
        "plain, orjson": (plain, orjson_plain_json),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (d, encoder) in variants.items():
            set_encoder(encoder)
            started = time.process_time()
            for _ in range(args.calls):
                call(d)
            samples[name].append((time.process_time() - started) / args.calls * 1e6)
    set_encoder(orjson_plain_json)
    base = statistics.median(samples["model"])
    print(f"CPU per warm list_mail_messages call (MCP side, 20 messages), {args.rounds} rounds:")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"  {name:14s} median {med:7.1f} µs  min {min(values):7.1f} µs  x{med / base:.2f}")
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(args.calls):
            call(plain)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
