"""
The benchmark run: set up a real Dovecot with synthetic mail, start mailmcp,
log accounts in through OAuth, then measure every item side by side and
return the report (a JSON-able dict).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks import _imap, _seed
from benchmarks._clients import McpClient, ToolCallFailed, count_messages, login_many
from benchmarks._http import Connection, HTTPError, client_overhead
from benchmarks._procs import Daemon, Peer, cpu_seconds, ensure_peer, generate_client, proc_status
from benchmarks._webfloor import WebFloor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_USER = "bench@example.test"
BENCH_PASSWORD = "bench-pw"
LARGE_FOLDER = "Large"
READING_FOLDER = "Reading"
SINK_USER = "sink@example.test"
SEARCH_SUBJECT = "Weekly digest"
LIST_TOOL = "list_mail_messages"
PEER_TOOL = "list_emails_metadata"
THROUGHPUT_ACCOUNTS = 8
# scale_out: accounts enough for the Authorization-header hash to spread
# them over 2 processes (8 landed all on one process in a run).
SCALE_ACCOUNTS = 32

def cold_args() -> tuple[str, ...]:
    """
    How the daemon is told to connect per call (no pooling) for the ``cold``
    item: ``MAILMCP_BENCH_COLD_ARGS`` if set, else the connect-per-call flag
    that ``twistd mailmcp --help`` lists.
    """
    import re
    import shlex

    if os.environ.get("MAILMCP_BENCH_COLD_ARGS"):
        return tuple(shlex.split(os.environ["MAILMCP_BENCH_COLD_ARGS"]))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    help_text = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "mailmcp", "--help"],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout
    m = re.search(r"(--[a-z-]*(?:per-call|no-pool|disable-pool)[a-z-]*)(=?)", help_text)
    if not m:
        raise RuntimeError("this mailmcp has no connect-per-call option (twistd mailmcp --help)")
    return (m.group(1),) if not m.group(2) else (m.group(1) + "=1",)


@attrs.frozen
class Sizes:
    small: int  # the "10,000-message" folder
    large: int  # the "100,000-message" folder
    concurrency: tuple[int, ...]
    per_account_messages: int
    floor_iterations: int
    warm_iterations: int
    cold_iterations: int
    large_iterations: int
    concurrency_seconds: float
    throughput_levels: tuple[int, ...]
    throughput_seconds: float
    ceiling_seconds: float
    peer_calls: int
    peer_seconds: float
    seed_compare_sample: int
    blocks: int = 10
    reading_iterations: int = 200
    attachment_copies: int = 20
    search_iterations: int = 100
    send_iterations: int = 50


FULL = Sizes(
    small=10_000, large=100_000, concurrency=(100, 1000), per_account_messages=50,
    floor_iterations=1000, warm_iterations=1000, cold_iterations=200, large_iterations=500,
    concurrency_seconds=15.0, throughput_levels=(1, 2, 4, 8, 16, 32, 64), throughput_seconds=5.0,
    ceiling_seconds=5.0, peer_calls=10, peer_seconds=20.0, seed_compare_sample=300,
    reading_iterations=200, attachment_copies=20, search_iterations=100, send_iterations=50,
)
QUICK = Sizes(
    small=2_000, large=10_000, concurrency=(20, 100), per_account_messages=30,
    floor_iterations=200, warm_iterations=200, cold_iterations=30, large_iterations=100,
    concurrency_seconds=2.0, throughput_levels=(1, 4, 16), throughput_seconds=1.5,
    ceiling_seconds=1.5, peer_calls=3, peer_seconds=3.0, seed_compare_sample=60,
    reading_iterations=30, attachment_copies=4, search_iterations=10, send_iterations=8,
)


# -- small statistics helpers --------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def cpu_per_call(cpu: Sequence[float], calls: Sequence[float]) -> float | None:
    """Milliseconds of daemon CPU per call, from per-block CPU seconds (None: unmeasured)."""
    return round(sum(cpu) / len(calls) * 1000, 3) if cpu and calls else None


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "iterations": len(values),
        "p50_ms": ms(pct(values, 0.50)),
        "p90_ms": ms(pct(values, 0.90)),
        "p99_ms": ms(pct(values, 0.99)),
        "mean_ms": ms(statistics.fmean(values)) if values else None,
        "max_ms": ms(max(values)) if values else None,
    }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- machine ----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import twisted

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        info["dovecot"] = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                                         timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["dovecot"] = None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="ascii") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


# -- the phases ---------------------------------------------------------------


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def _smtp_message(sender: str, recipient: str, subject: str, text: str) -> Callable[[int], bytes]:
    """The message the send floor submits: the shape and size of what send_mail_message composes."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    def build(n: int) -> bytes:
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = sender, recipient, subject
        m["Date"] = formatdate(usegmt=True)
        m["Message-ID"] = make_msgid(f"floor{n}", "bench.example.test")
        m.set_content(text)
        return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))

    return build


def _smtp_submit(port: int, ca_file: str, user: str, password: str, recipient: str, data: bytes) -> None:
    """One bare submission over SMTPS, connection per message (as mailmcp does)."""
    import smtplib
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    with smtplib.SMTP_SSL("localhost", port, context=context, timeout=30) as smtp:
        smtp.login(user, password)
        smtp.sendmail(user, [recipient], data)


async def listing(client: McpClient, folder: str, expect: int | None = 20, page: int = 1) -> None:
    result = await client.call(LIST_TOOL, {"folder": folder, "page": page, "per_page": 20})
    if expect is not None:
        n = count_messages(result)
        if n is not None and n != expect:
            raise ToolCallFailed(f"listing returned {n} messages, expected {expect}")


async def closed_loop(
    clients: Sequence[Any], call: Callable[[Any], Awaitable[Any]], seconds: float, warmup: bool = True,
    min_calls: int = 1,
) -> dict[str, Any]:
    """
    Each client keeps one call in flight for C{seconds} (at least C{min_calls}
    each).  Returns counts, latencies, failures and elapsed time.
    """
    if warmup:
        await asyncio.gather(*(call(c) for c in clients), return_exceptions=True)
    latencies: list[float] = []
    failures: list[str] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def one(c: Any) -> None:
        done = 0
        while done < min_calls or time.perf_counter() < deadline:
            s = time.perf_counter()
            try:
                await call(c)
                latencies.append(time.perf_counter() - s)
            except (TimeoutError, ToolCallFailed, HTTPError, OSError) as e:
                failures.append(str(e)[:200])
            done += 1

    await asyncio.gather(*(one(c) for c in clients))
    elapsed = time.perf_counter() - t0
    return {"latencies": latencies, "failures": failures, "seconds": elapsed}


class Bench:
    def __init__(self, sizes: Sizes, quick: bool, workdir: Path) -> None:
        self.sizes = sizes
        self.quick = quick
        self.workdir = workdir
        self.report: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if quick else "full",
            "machine": machine_info(),
            "sizes": attrs.asdict(sizes),
        }
        self.services: Any = None
        self.daemon: Daemon | None = None
        self.web_floor_server: WebFloor | None = None
        self.cold_daemon: Daemon | None = None
        self.tokens: dict[str, str] = {}
        self.ctx = None
        self.profile_copy: Path | None = None

    # -- setup ------------------------------------------------------------

    def start_services(self) -> None:
        from tests.harness import Services

        t0 = time.perf_counter()
        self.services = Services.start()
        self.ctx = _imap.tls_context(str(self.services.ca_file))
        self.report["setup"] = {"services_start_s": round(time.perf_counter() - t0, 2)}

    def seed(self) -> None:
        s = self.sizes
        svc = self.services.svc
        mail_root = svc / "mail"
        setup = self.report["setup"]
        users = {BENCH_USER: BENCH_PASSWORD}
        users.update({self.tp_user(i): f"tp{i}-pw" for i in range(1, THROUGHPUT_ACCOUNTS)})
        users.update({self.c_user(i): f"c{i}-pw" for i in range(max(s.concurrency))})
        users.update(_seed.COMPARE_USERS)
        users[SINK_USER] = "sink-pw"
        _seed.add_users(svc / "users", users)

        t0 = time.perf_counter()
        inbox = _seed.make_maildir(mail_root, BENCH_USER)
        small_names = _seed.fill_maildir(inbox, s.small, BENCH_USER, seed=1)
        setup["write_small_folder_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        large = _seed.make_maildir(mail_root, BENCH_USER, LARGE_FOLDER)
        _seed.fill_maildir(large, s.large, BENCH_USER, seed=2)
        setup["write_large_folder_s"] = round(time.perf_counter() - t0, 2)
        setup["seed_msgs_per_s"] = round(s.large / setup["write_large_folder_s"]) if setup[
            "write_large_folder_s"] else None
        t0 = time.perf_counter()
        for i in range(1, THROUGHPUT_ACCOUNTS):
            _seed.link_maildir(inbox, small_names, _seed.make_maildir(mail_root, self.tp_user(i)))
        few = small_names[-s.per_account_messages:]
        for i in range(max(s.concurrency)):
            _seed.link_maildir(inbox, few, _seed.make_maildir(mail_root, self.c_user(i)))
        setup["link_accounts_s"] = round(time.perf_counter() - t0, 2)
        reading = _seed.make_maildir(mail_root, BENCH_USER, READING_FOLDER)
        _seed.write_messages(
            reading,
            [_seed.newsletter(0, BENCH_USER)]
            + [_seed.with_attachment(i, BENCH_USER) for i in range(s.attachment_copies)],
            start=time.time() - 86400,
        )
        setup["accounts"] = len(users)
        setup["method"] = "Maildir files written directly (cur/, :2,<flags>, S=/W= sizes), " \
                          "hard links for the extra accounts; Dovecot indexes on first access"

    async def first_access(self) -> None:
        """Dovecot builds its index on first SELECT; do it (timed) for the two big folders."""
        setup = self.report["setup"]
        for key, folder in (("index_small_folder_s", "INBOX"), ("index_large_folder_s", LARGE_FOLDER)):
            t0 = time.perf_counter()
            c = await _imap.open_session("127.0.0.1", self.services.imaps_port, self.ctx, BENCH_USER,
                                         BENCH_PASSWORD, folder)
            await _imap.timed_warm_calls(c, 1)
            await c.logout()
            setup[key] = round(time.perf_counter() - t0, 2)
        # The throughput accounts' INBOXes: index them too (off the clock).
        for i in range(1, THROUGHPUT_ACCOUNTS):
            c = await _imap.open_session("127.0.0.1", self.services.imaps_port, self.ctx, self.tp_user(i),
                                         f"tp{i}-pw", "INBOX")
            await c.logout()
        setup["seed_total_s"] = round(sum(v for k, v in setup.items()
                                          if k.startswith(("write_", "link_", "index_"))), 2)
        try:
            setup["seeding_methods"] = _seed.compare_methods(self.services.svc, self.services.lmtp_port,
                                                             self.sizes.seed_compare_sample)
        except Exception as e:  # informative only
            setup["seeding_methods"] = {"error": str(e)[:200]}

    def start_daemon(self, extra: Sequence[str] = ()) -> None:
        from tests.harness import free_port

        self.state_dir = self.workdir / "state"
        t0 = time.perf_counter()
        # The send item sends a few hundred messages: lift the per-account budget.
        self.daemon = Daemon(self.workdir, free_port(), self.state_dir, self.services.ca_file,
                             extra=("--send-burst", "100000", "--sends-per-hour", "100000", *extra))
        self.client = generate_client(self.workdir, self.state_dir, self.services.imaps_port,
                                      self.services.smtps_port)
        self.report["setup"]["daemon_start_s"] = round(time.perf_counter() - t0, 2)

    async def login_all(self) -> None:
        assert self.daemon is not None
        accounts = [(BENCH_USER, BENCH_PASSWORD)]
        accounts += [(self.tp_user(i), f"tp{i}-pw") for i in range(1, THROUGHPUT_ACCOUNTS)]
        accounts += [(self.c_user(i), f"c{i}-pw") for i in range(max(self.sizes.concurrency))]
        tokens, stats = await login_many(self.daemon.base_url, self.client, accounts, concurrency=16)
        self.tokens = tokens
        self.report["setup"]["oauth_logins"] = stats
        if BENCH_USER not in tokens:
            # Keep going: the bare-IMAP items are still measured, the rest say why not.
            self.report["errors"]["oauth"] = f"OAuth login failed: {stats['errors'][:2]}"

    @staticmethod
    def tp_user(i: int) -> str:
        return BENCH_USER if i == 0 else f"tp{i}@example.test"

    @staticmethod
    def c_user(i: int) -> str:
        return f"c{i:04d}@example.test"

    # -- items ------------------------------------------------------------

    async def floor_and_warm(self) -> None:
        """floor and warm, measured in alternating blocks so that drift hits both alike."""
        assert self.daemon is not None
        s = self.sizes
        bare = await _imap.open_session("127.0.0.1", self.services.imaps_port, self.ctx, BENCH_USER,
                                        BENCH_PASSWORD, "INBOX")
        client = McpClient(self.daemon.base_url, self.tokens.get(BENCH_USER, ""))
        warmup = max(50, s.warm_iterations // 10)
        await _imap.timed_warm_calls(bare, warmup)
        try:
            for _ in range(warmup):
                await listing(client, "INBOX")
        except Exception:
            # No working tool: still report the floor, then fail the rest.
            floor_only = await _imap.timed_warm_calls(bare, s.floor_iterations)
            self.report["floor"] = {"commands": _imap.warm_list_commands(bare.exists),
                                    "folder_messages": s.small, **latency_summary(floor_only)}
            await bare.logout()
            raise
        web, post = await self._start_web_floor(client)
        web_client = Connection(web.base_url)
        web_call = functools.partial(post, web_client)
        for _ in range(warmup):
            await web_call()
        web_floor: list[float] = []
        web_cpu = 0.0
        floor: list[float] = []
        sequential: list[float] = []
        warm: list[float] = []
        # Pages never listed before in this run (2, 3, ...): the daemon reads
        # their FETCH lines for the first time, where page 1 again and again
        # finds its lines already read (mailmcp/mail/imap/_parser.py, _SCANNED).
        fresh: list[float] = []
        fresh_pages = iter(range(2, s.small // 20 + 1))
        fresh_per_block = min(30, (s.small // 20 - 1) // s.blocks)
        # The daemon's CPU in the warm blocks only: unlike latency, hardly
        # moved by other load on a shared machine (10 ms clock ticks).
        daemon_cpu = 0.0
        fresh_cpu = 0.0
        floor_client_cpu = 0.0
        for _ in range(s.blocks):
            client0 = time.process_time()
            floor += await _imap.timed_warm_calls(bare, s.floor_iterations // s.blocks)
            floor_client_cpu += time.process_time() - client0
            web0 = cpu_seconds(web.pid)
            for _ in range(s.floor_iterations // s.blocks):
                web_floor.append(await timed(web_call))
            web1 = cpu_seconds(web.pid)
            if web0 is not None and web1 is not None:
                web_cpu += web1 - web0
            sequential += await _imap.timed_warm_calls(bare, s.floor_iterations // s.blocks,
                                                       pipelined=False)
            cpu0 = cpu_seconds(self.daemon.pid)
            for _ in range(s.warm_iterations // s.blocks):
                warm.append(await timed(lambda: listing(client, "INBOX")))
            cpu1 = cpu_seconds(self.daemon.pid)
            if cpu0 is not None and cpu1 is not None:
                daemon_cpu += cpu1 - cpu0
            for _ in range(fresh_per_block):
                page = next(fresh_pages)
                fresh.append(await timed(lambda page=page: listing(client, "INBOX", page=page)))
            cpu2 = cpu_seconds(self.daemon.pid)
            if cpu1 is not None and cpu2 is not None:
                fresh_cpu += cpu2 - cpu1
        commands = _imap.warm_list_commands(bare.exists)
        await bare.logout()
        web_client.close()
        try:
            loaded = await self._loaded_web_floor(web, post)
        finally:
            web.stop()
        self.report["web_floor"] = {
            "what": "bare twisted.web Site (this Twisted, the default reactor; no access log, no"
                    " authentication, MCP or IMAP) answering the warm call's exact request with a JSON"
                    " body of the warm response's size, measured in the same blocks as floor and warm",
            "response_bytes": web.response_bytes,
            **latency_summary(web_floor),
            "server_cpu_ms_per_call": round(web_cpu / len(web_floor) * 1000, 3) if web_floor else None,
            "loaded": loaded,
        }
        self.report["floor"] = {
            "what": "bare asyncio IMAP client, logged in, folder open, the IMAP commands of a warm listing"
                    " in one write (pipelined, as mailmcp sends them)",
            "commands": commands,
            "folder_messages": s.small,
            **latency_summary(floor),
            "client_cpu_ms_per_call": round(floor_client_cpu / len(floor) * 1000, 3) if floor else None,
            "client_cpu_note": "the bare client's own CPU per call (TLS, reading the lines): an IMAP client's"
                               " share of the floor, which the daemon pays too",
            "sequential_p50_ms": ms(pct(sequential, 0.5)),
            "sequential_note": "the same commands one round trip each (the floor before NOOP and FETCH"
                               " were pipelined), measured in the same blocks",
        }
        self.report["warm"] = {
            "what": f"{LIST_TOOL}(per_page=20) over MCP/HTTP, pool warm, {s.small}-message folder",
            "folder_messages": s.small,
            **latency_summary(warm),
            "warm_p50/floor_p50": ratio(pct(warm, 0.5), pct(floor, 0.5)),
            "warm_p50/sequential_floor_p50": ratio(pct(warm, 0.5), pct(sequential, 0.5)),
            "warm_p50/(floor_p50+web_floor_p50)": ratio(pct(warm, 0.5),
                                                         pct(floor, 0.5) + pct(web_floor, 0.5)),
            "beyond_floors_p50_ms": ms(pct(warm, 0.5) - pct(floor, 0.5) - pct(web_floor, 0.5)),
            "beyond_floors_note": "warm p50 minus the IMAP floor's and the web floor's: what mailmcp adds"
                                  " (authentication, MCP, the pooled session, parsing, summaries, JSON,"
                                  " the access log)",
            "daemon_cpu_ms_per_call": round(daemon_cpu / len(warm) * 1000, 3) if warm else None,
            "first_sight": {
                "what": "the same call on pages 2, 3, ... (each listed once in the run): lines the"
                        " daemon reads for the first time; the floor fetches page 1",
                **latency_summary(fresh),
                "p50/floor_p50": ratio(pct(fresh, 0.5), pct(floor, 0.5)),
                "daemon_cpu_ms_per_call": round(fresh_cpu / len(fresh) * 1000, 3) if fresh else None,
            },
        }
        self._warm_client = client

    async def _start_web_floor(
        self, client: McpClient
    ) -> tuple[WebFloor, Callable[[Connection], Awaitable[Any]]]:
        """
        The web floor's server, answering with as many bytes as the daemon's
        warm response, and the one request both send: C{post(connection)}
        sends the warm call's path, headers and body on C{connection}.
        """
        from tests.harness import free_port

        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": LIST_TOOL, "arguments": {"folder": "INBOX", "page": 1, "per_page": 20}}}
        path, headers, request = client.path, dict(client.headers), json.dumps(message).encode()

        def post(connection: Connection) -> Awaitable[Any]:
            return connection.request("POST", path, headers, request)

        status, _, body = await post(client.conn)
        if status != 200:
            raise ToolCallFailed(f"HTTP {status} for the web floor's sample request")
        self.web_floor_server = WebFloor(self.workdir, free_port(), len(body))
        return self.web_floor_server, post

    async def _loaded_web_floor(self, web: WebFloor, post: Callable[[Connection], Awaitable[Any]],
                                concurrency: int = 32) -> dict[str, Any]:
        """The web floor with C{concurrency} C{post}s in flight: calls/s and server CPU per call."""
        clients = [Connection(web.base_url) for _ in range(concurrency)]
        cpu0 = cpu_seconds(web.pid)
        r = await closed_loop(clients, post, self.sizes.throughput_seconds)
        cpu1 = cpu_seconds(web.pid)
        for c in clients:
            c.close()
        n = len(r["latencies"])
        return {
            "concurrency": concurrency,
            "calls_per_s": round(n / r["seconds"], 1),
            "server_cpu_ms_per_call": round((cpu1 - cpu0) / n * 1000, 3)
            if n and cpu0 is not None and cpu1 is not None else None,
            "failures": len(r["failures"]),
        }

    async def large_folder(self) -> None:
        s = self.sizes
        client = getattr(self, "_warm_client", None) or McpClient(self.daemon.base_url,
                                                                   self.tokens.get(BENCH_USER, ""))
        bare = await _imap.open_session("127.0.0.1", self.services.imaps_port, self.ctx, BENCH_USER,
                                        BENCH_PASSWORD, LARGE_FOLDER)
        await _imap.timed_warm_calls(bare, 5)
        try:
            first = await timed(lambda: listing(client, LARGE_FOLDER))
            for _ in range(5):
                await listing(client, LARGE_FOLDER)
        except Exception:
            floor_only = await _imap.timed_warm_calls(bare, s.large_iterations)
            self.report["large_folder"] = {"large_folder_messages": s.large,
                                           "floor_large_p50_ms": ms(pct(floor_only, 0.5))}
            await bare.logout()
            raise
        large: list[float] = []
        small: list[float] = []
        floor_large: list[float] = []
        for _ in range(s.blocks):
            floor_large += await _imap.timed_warm_calls(bare, s.large_iterations // s.blocks)
            for _ in range(s.large_iterations // s.blocks):
                large.append(await timed(lambda: listing(client, LARGE_FOLDER)))
        await bare.logout()
        # The small folder again, right after, on the same client (its pool
        # connection now has to switch folders once; the warm-up absorbs it).
        for _ in range(5):
            await listing(client, "INBOX")
        for _ in range(s.large_iterations):
            small.append(await timed(lambda: listing(client, "INBOX")))
        self.report["large_folder"] = {
            "what": "first page (20) of the large folder vs the small one, both warm",
            "small_folder_messages": s.small,
            "large_folder_messages": s.large,
            "small_p50_ms": ms(pct(small, 0.5)),
            "large_p50_ms": ms(pct(large, 0.5)),
            "large_p99_ms": ms(pct(large, 0.99)),
            "large_first_call_ms": ms(first),
            "floor_large_p50_ms": ms(pct(floor_large, 0.5)),
            "large_p50/small_p50": ratio(pct(large, 0.5), pct(small, 0.5)),
        }

    async def conversations(self) -> None:
        """
        get_mailbox_changes (nothing changed) and get_mail_thread (a message
        that is its own conversation) over MCP, warm, against the raw IMAP
        commands each sends on a logged-in connection (their floor).
        """
        assert self.daemon is not None
        s = self.sizes
        client = getattr(self, "_warm_client", None) or McpClient(self.daemon.base_url,
                                                                   self.tokens.get(BENCH_USER, ""))
        listed = (await client.call(LIST_TOOL, {"folder": "INBOX", "per_page": 1}))["structuredContent"]
        state, newest = listed["state"], listed["messages"][0]
        uid, message_id = newest["uid"], newest["message_id"]
        bare = _imap.BareIMAP()
        await bare.connect("127.0.0.1", self.services.imaps_port, self.ctx)
        await bare.login(BENCH_USER, BENCH_PASSWORD)
        await bare.command("ENABLE QRESYNC")
        codes = _imap.response_codes(await bare.command('EXAMINE "INBOX" (CONDSTORE)'))
        changes = _imap.changes_commands("INBOX", codes["UIDNEXT"], codes["HIGHESTMODSEQ"])
        threads = [ln for ln in await bare.command("UID THREAD REFERENCES UTF-8 ALL")
                   if ln.upper().startswith(b"* THREAD")]
        members = _imap.thread_members(threads[0], uid) if threads else []
        thread = _imap.thread_commands(uid, message_id, members)
        iterations = max(20, s.warm_iterations // 4)

        async def floor(commands: list[str]) -> None:
            for text in commands:
                await bare.command(text)

        async def tool(name: str, arguments: dict[str, Any]) -> None:
            await client.call(name, arguments)

        out: dict[str, Any] = {"what": "warm tool over MCP/HTTP vs its raw IMAP commands on a "
                                       f"logged-in connection, {s.small}-message INBOX"}
        for name, commands, arguments in (
            ("get_mailbox_changes", changes, {"folder": "INBOX", "since": state}),
            ("get_mail_thread", thread, {"folder": "INBOX", "uid": uid}),
        ):
            for _ in range(10):
                await tool(name, arguments)
                await floor(commands)
            tool_times: list[float] = []
            floor_times: list[float] = []
            for _ in range(s.blocks):
                for _ in range(iterations // s.blocks):
                    floor_times.append(await timed(functools.partial(floor, commands)))
                for _ in range(iterations // s.blocks):
                    tool_times.append(await timed(functools.partial(tool, name, arguments)))
            out[name] = {
                "commands": commands,
                "p50_ms": ms(pct(tool_times, 0.5)),
                "p99_ms": ms(pct(tool_times, 0.99)),
                "floor_p50_ms": ms(pct(floor_times, 0.5)),
                "p50/floor_p50": ratio(pct(tool_times, 0.5), pct(floor_times, 0.5)),
            }
        await bare.logout()
        self.report["conversations"] = out

    # -- reading, searching and sending, each against its own raw floor --------

    async def _alternate(
        self, blocks: int, per_block: int, tool: Callable[[], Awaitable[Any]],
        floors: dict[str, Callable[[], Awaitable[Any]]], daemon_cpu: list[float] | None = None,
    ) -> tuple[list[float], dict[str, list[float]]]:
        """
        Tool and floors timed in alternating blocks, so drift hits all alike.
        With C{daemon_cpu}: the daemon's CPU seconds in the tool blocks only
        are appended to it (unlike latency, hardly moved by other load).
        """
        tool_times: list[float] = []
        floor_times: dict[str, list[float]] = {name: [] for name in floors}
        pid = self.daemon.pid if self.daemon is not None else None
        for _ in range(blocks):
            for name, floor in floors.items():
                for _ in range(per_block):
                    floor_times[name].append(await timed(floor))
            cpu0 = cpu_seconds(pid) if pid is not None and daemon_cpu is not None else None
            for _ in range(per_block):
                tool_times.append(await timed(tool))
            cpu1 = cpu_seconds(pid) if cpu0 is not None and pid is not None else None
            if daemon_cpu is not None and cpu0 is not None and cpu1 is not None:
                daemon_cpu.append(cpu1 - cpu0)
        return tool_times, floor_times

    async def _bare(self, folder: str) -> _imap.BareIMAP:
        return await _imap.open_session("127.0.0.1", self.services.imaps_port, self.ctx, BENCH_USER,
                                        BENCH_PASSWORD, folder)

    async def get_message(self) -> None:
        """
        get_mail_message over MCP, warm, on a 60 KB HTML newsletter (MIME and
        HTML-to-text are the work) and on a message with a 2 MB attachment
        (stored and linked on first read, linked from the index after), against
        a bare client sending the same UID FETCHes of the same parts.
        """
        assert self.daemon is not None
        s = self.sizes
        client = McpClient(self.daemon.base_url, self.tokens.get(BENCH_USER, ""))
        bare = await self._bare(READING_FOLDER)
        news = _imap.search_uids(await bare.command("UID SEARCH HEADER X-Bench-Item newsletter"))
        copies = _imap.search_uids(await bare.command("UID SEARCH HEADER X-Bench-Item attachment"))
        if not news or len(copies) < 2:
            raise RuntimeError(f"seeded reading folder not found (newsletter {news}, attachments {copies})")
        news_uid, warm_uid, first_reads = news[0], copies[0], copies[1:]

        async def read(uid: int) -> dict[str, Any]:
            return await client.call("get_mail_message", {"folder": READING_FOLDER, "uid": uid})

        def floor(commands: list[str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                for text in commands:
                    await bare.command(text)
            return run

        def pipelined(commands: list[str]) -> Callable[[], Awaitable[None]]:
            # The same commands in one write, as mailmcp sends them when it
            # reads a message again on a pooled connection (NOOP, head, body).
            async def run() -> None:
                await bare.pipeline(commands)
            return run

        first = (await read(news_uid))["structuredContent"]
        attached = (await read(warm_uid))["structuredContent"]
        news_cmds = _imap.message_commands(news_uid, [("1", "text/html")])
        warm_cmds = _imap.message_commands(warm_uid, [("1", "text/plain")])
        iterations = max(s.blocks, s.reading_iterations)
        per_block = iterations // s.blocks
        for _ in range(5):
            await read(news_uid)
            await floor(news_cmds)()
        news_cpu: list[float] = []
        warm_cpu: list[float] = []
        news_times, news_floor = await self._alternate(
            s.blocks, per_block, functools.partial(read, news_uid),
            {"floor": floor(news_cmds), "pipelined": pipelined(news_cmds)}, news_cpu)
        warm_times, warm_floor = await self._alternate(
            s.blocks, per_block, functools.partial(read, warm_uid),
            {"floor": floor(warm_cmds), "pipelined": pipelined(warm_cmds)}, warm_cpu)
        # First reads: each copy once (the attachment is fetched, stored and
        # linked), its floor the same FETCHes plus the attachment part.
        first_times: list[float] = []
        first_floor: list[float] = []
        first_cpu: list[float] = []
        for uid in first_reads:
            first_floor.append(await timed(floor(_imap.message_commands(uid, [("1", "text/plain")],
                                                                        attachments=["2"]))))
            cpu0 = cpu_seconds(self.daemon.pid)
            first_times.append(await timed(functools.partial(read, uid)))
            cpu1 = cpu_seconds(self.daemon.pid)
            if cpu0 is not None and cpu1 is not None:
                first_cpu.append(cpu1 - cpu0)
        await bare.logout()
        client.close()
        self.report["get_message"] = {
            "what": "get_mail_message over MCP/HTTP, pool warm, vs a bare client's UID FETCHes of the "
                    "same parts on a logged-in connection with the folder open",
            "newsletter_html": {
                "message_bytes": len(_seed.newsletter(0, BENCH_USER)),
                "body_chars": len(first.get("body", "") or ""),
                "commands": news_cmds,
                "p50_ms": ms(pct(news_times, 0.5)), "p99_ms": ms(pct(news_times, 0.99)),
                "floor_p50_ms": ms(pct(news_floor["floor"], 0.5)),
                "p50/floor_p50": ratio(pct(news_times, 0.5), pct(news_floor["floor"], 0.5)),
                "pipelined_floor_p50_ms": ms(pct(news_floor["pipelined"], 0.5)),
                "p50/pipelined_floor_p50": ratio(pct(news_times, 0.5), pct(news_floor["pipelined"], 0.5)),
                "daemon_cpu_ms_per_call": cpu_per_call(news_cpu, news_times),
            },
            "attachment_2mb_linked": {
                "what": "the attachment already stored: its link comes from the index, no part FETCH",
                "attachments": len(attached.get("attachments", []) or []),
                "commands": warm_cmds,
                "p50_ms": ms(pct(warm_times, 0.5)), "p99_ms": ms(pct(warm_times, 0.99)),
                "floor_p50_ms": ms(pct(warm_floor["floor"], 0.5)),
                "p50/floor_p50": ratio(pct(warm_times, 0.5), pct(warm_floor["floor"], 0.5)),
                "pipelined_floor_p50_ms": ms(pct(warm_floor["pipelined"], 0.5)),
                "p50/pipelined_floor_p50": ratio(pct(warm_times, 0.5), pct(warm_floor["pipelined"], 0.5)),
                "daemon_cpu_ms_per_call": cpu_per_call(warm_cpu, warm_times),
            },
            "attachment_2mb_first_read": {
                "what": "first read of each copy: the 2 MB part is fetched, decoded, stored and linked; "
                        "floor: the same FETCHes plus BODY.PEEK[2.MIME] BODY.PEEK[2]",
                "copies": len(first_reads),
                "p50_ms": ms(pct(first_times, 0.5)),
                "floor_p50_ms": ms(pct(first_floor, 0.5)),
                "p50/floor_p50": ratio(pct(first_times, 0.5), pct(first_floor, 0.5)),
                "daemon_cpu_ms_per_call": cpu_per_call(first_cpu, first_times),
            },
        }

    async def search(self) -> None:
        """
        search_mail_messages over MCP, warm, on the small and the large folder
        (a Subject search matching a tenth of the messages, the newest `limit`
        summarised), against a bare ``UID SEARCH`` alone and against the same
        ``UID SEARCH`` plus the ``UID FETCH`` of the returned summaries.
        """
        assert self.daemon is not None
        s = self.sizes
        client = McpClient(self.daemon.base_url, self.tokens.get(BENCH_USER, ""))
        out: dict[str, Any] = {
            "what": f"search_mail_messages(subject={SEARCH_SUBJECT!r}) over MCP/HTTP, warm, vs bare "
                    "UID SEARCH (and UID SEARCH + UID FETCH of the summaries) on a logged-in connection",
        }
        for label, folder, size in (("small_folder", "INBOX", s.small), ("large_folder", LARGE_FOLDER, s.large)):
            arguments = {"folder": folder, "subject": SEARCH_SUBJECT}

            async def tool(arguments: dict[str, Any] = arguments) -> None:
                await client.call("search_mail_messages", arguments)

            result = (await client.call("search_mail_messages", arguments))["structuredContent"]
            bare = await self._bare(folder)
            search_cmds = _imap.search_commands(SEARCH_SUBJECT)
            full_cmds = search_cmds + _imap.summary_fetch(result["uids"])

            def floor(commands: list[str], bare: _imap.BareIMAP = bare) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    for text in commands:
                        await bare.command(text)
                return run

            for _ in range(3):
                await tool()
                await floor(full_cmds)()
            iterations = max(s.blocks, s.search_iterations)
            tool_times, floors = await self._alternate(
                s.blocks, iterations // s.blocks, tool,
                {"uid_search": floor(search_cmds), "search_and_fetch": floor(full_cmds)})
            await bare.logout()
            out[label] = {
                "folder_messages": size,
                "matches": result["total"],
                "returned": result["returned"],
                "commands": full_cmds[:2] + ([full_cmds[2][:60] + "…"] if len(full_cmds) > 2 else []),
                "p50_ms": ms(pct(tool_times, 0.5)), "p99_ms": ms(pct(tool_times, 0.99)),
                "uid_search_p50_ms": ms(pct(floors["uid_search"], 0.5)),
                "search_and_fetch_p50_ms": ms(pct(floors["search_and_fetch"], 0.5)),
                "p50/uid_search_p50": ratio(pct(tool_times, 0.5), pct(floors["uid_search"], 0.5)),
                "p50/floor_p50": ratio(pct(tool_times, 0.5), pct(floors["search_and_fetch"], 0.5)),
            }
        client.close()
        self.report["search"] = out

    async def send(self) -> None:
        """
        send_mail_message over MCP (a verified-TLS SMTP submission, then the
        Sent copy by IMAP APPEND) against a bare smtplib submission of the
        same message (connect, TLS, AUTH, MAIL/RCPT/DATA, QUIT), and against
        that submission plus a bare IMAP APPEND of the copy.
        """
        assert self.daemon is not None
        s = self.sizes
        client = McpClient(self.daemon.base_url, self.tokens.get(BENCH_USER, ""))
        bare = await self._bare("INBOX")
        subject, text = "Benchmark send", "Hello,\n\nthis is a benchmark message.\n\nRegards\n"
        counter = iter(range(10**9))

        async def tool() -> None:
            await client.call("send_mail_message", {"to": [SINK_USER], "subject": subject, "text_body": text})

        message = _smtp_message(BENCH_USER, SINK_USER, subject, text)

        async def submit() -> None:
            await asyncio.to_thread(_smtp_submit, self.services.smtps_port, str(self.services.ca_file),
                                    BENCH_USER, BENCH_PASSWORD, SINK_USER, message(next(counter)))

        async def submit_and_file() -> None:
            data = message(next(counter))
            await asyncio.to_thread(_smtp_submit, self.services.smtps_port, str(self.services.ca_file),
                                    BENCH_USER, BENCH_PASSWORD, SINK_USER, data)
            await bare.command(_imap.append_command("Sent", data))

        for _ in range(2):
            await tool()
            await submit_and_file()
        iterations = max(s.blocks, s.send_iterations)
        tool_times, floors = await self._alternate(
            s.blocks, max(1, iterations // s.blocks), tool,
            {"smtplib": submit, "smtplib_and_append": submit_and_file})
        await bare.logout()
        client.close()
        self.report["send"] = {
            "what": "send_mail_message over MCP/HTTP (SMTPS submission + Sent copy) vs bare smtplib "
                    "over SMTPS (connect, AUTH, send, QUIT) and smtplib + IMAP APPEND of the copy",
            "sends": len(tool_times),
            "p50_ms": ms(pct(tool_times, 0.5)), "p99_ms": ms(pct(tool_times, 0.99)),
            "smtplib_p50_ms": ms(pct(floors["smtplib"], 0.5)),
            "smtplib_and_append_p50_ms": ms(pct(floors["smtplib_and_append"], 0.5)),
            "p50/smtplib_p50": ratio(pct(tool_times, 0.5), pct(floors["smtplib"], 0.5)),
            "p50/floor_p50": ratio(pct(tool_times, 0.5), pct(floors["smtplib_and_append"], 0.5)),
        }

    async def cold(self) -> None:
        from tests.harness import free_port

        s = self.sizes
        out: dict[str, Any] = {}
        self.report["cold"] = out
        # The seed's design from a bare client, for reference.
        bare = [await _imap.connect_per_call("127.0.0.1", self.services.imaps_port, self.ctx, BENCH_USER,
                                             BENCH_PASSWORD, "INBOX") for _ in range(max(5, s.cold_iterations // 2))]
        out["bare_connect_per_call_p50_ms"] = ms(pct(bare, 0.5))
        args = cold_args()
        out["what"] = (f"{LIST_TOOL} with pooling disabled ({' '.join(args)}): connect, TLS, LOGIN, "
                       "EXAMINE, FETCH, LOGOUT per call")
        out["daemon_args"] = list(args)
        try:
            # Same state dir (key ring, grant store) and the same --base-url, so
            # the tokens minted by the warm daemon are valid here too.
            self.cold_daemon = Daemon(self.workdir, free_port(), self.state_dir, self.services.ca_file,
                                      extra=(*args, "--base-url", self.daemon.base_url),
                                      name="mailmcp-cold")
        except RuntimeError as e:
            out["error"] = f"cannot start mailmcp without pooling: {str(e)[-300:]}"
            return
        client = McpClient(self.cold_daemon.base_url, self.tokens[BENCH_USER])
        try:
            for _ in range(3):
                await listing(client, "INBOX")
            lat = [await timed(lambda: listing(client, "INBOX")) for _ in range(s.cold_iterations)]
        finally:
            client.close()
            self.cold_daemon.stop()
            self.cold_daemon = None
        warm_p50 = self.report.get("warm", {}).get("p50_ms")
        out.update(latency_summary(lat))
        out["cold_p50/warm_p50"] = ratio(out["p50_ms"], warm_p50)

    async def concurrency(self) -> None:
        assert self.daemon is not None
        items = {}
        self.report["concurrency"] = items
        for n in self.sizes.concurrency:
            log(f"concurrency N={n}")
            items[f"n_{n}"] = await self.concurrency_one(n)

    async def concurrency_one(self, n: int) -> dict[str, Any]:
        assert self.daemon is not None
        daemon = self.daemon
        users = [self.c_user(i) for i in range(n)]
        missing = [u for u in users if u not in self.tokens]
        clients = [McpClient(daemon.base_url, self.tokens[u], timeout=120) for u in users if u in self.tokens]
        sem = asyncio.Semaphore(64)

        async def connect(c: McpClient) -> None:
            async with sem:
                await c.conn.connect()

        await asyncio.gather(*(connect(c) for c in clients))
        # Never profiled while measured: py-spy stops the daemon ~250 times a
        # second to sample it, which shows up as reactor lag (--profile has
        # its own phase, after the measured ones).
        since = time.monotonic()
        cpu0, pcpu0 = cpu_seconds(daemon.pid), time.process_time()
        first: list[float] = []
        later: list[float] = []
        failures: list[str] = []
        t0 = time.perf_counter()
        deadline = t0 + self.sizes.concurrency_seconds
        first_done: list[float] = []

        async def user(c: McpClient) -> None:
            is_first = True
            while is_first or time.perf_counter() < deadline:
                s = time.perf_counter()
                try:
                    await listing(c, "INBOX", expect=None)
                    (first if is_first else later).append(time.perf_counter() - s)
                except (TimeoutError, ToolCallFailed, HTTPError, OSError) as e:
                    failures.append(f"{type(e).__name__}: {str(e)[:160]}")
                if is_first:
                    first_done.append(time.perf_counter() - t0)
                is_first = False

        await asyncio.gather(*(user(c) for c in clients))
        elapsed = time.perf_counter() - t0
        cpu1, pcpu1 = cpu_seconds(daemon.pid), time.process_time()
        for c in clients:
            c.close()
        metrics = daemon.metrics(since=since, samples=True)
        lag = metrics["reactor_lag"]
        lag_samples = [x[1] for x in lag.get("samples", [])]
        # Split the window where the last account's first call (its IMAP login) finished.
        split = since + (max(first_done) if first_done else 0.0)
        lag_first = [x[1] for x in lag.get("samples", []) if x[0] <= split]
        lag_steady = [x[1] for x in lag.get("samples", []) if x[0] > split]
        status = proc_status(daemon.pid)
        calls = len(first) + len(later) + len(failures)
        all_lat = first + later
        return {
            "accounts": n,
            "accounts_without_token": len(missing),
            "calls": calls,
            "succeeded": len(all_lat),
            "success_rate": round(len(all_lat) / (calls + len(missing)), 4) if calls else 0.0,
            "seconds": round(elapsed, 2),
            "throughput_per_s": round(len(all_lat) / elapsed, 1),
            "p50_ms": ms(pct(all_lat, 0.5)),
            "p99_ms": ms(pct(all_lat, 0.99)),
            "first_call_p50_ms": ms(pct(first, 0.5)),
            "first_call_p99_ms": ms(pct(first, 0.99)),
            "all_first_calls_done_s": round(max(first_done), 2) if first_done else None,
            "steady_p50_ms": ms(pct(later, 0.5)),
            "steady_p99_ms": ms(pct(later, 0.99)),
            "reactor_lag_p99_ms": ms(lag.get("p99_seconds")),
            "reactor_lag_samples": len(lag_samples),
            "reactor_lag_p99_first_round_ms": ms(pct(lag_first, 0.99)),
            "reactor_lag_p99_steady_ms": ms(pct(lag_steady, 0.99)),
            "reactor_lag_max_ms": ms(max(lag_samples, default=None)),
            "reactor_lag_max_since_start_ms": ms(lag.get("max_seconds")),
            "peak_rss_mib": round(status.get("VmHWM", 0) / 2**20, 1),
            "rss_after_mib": round(status.get("VmRSS", 0) / 2**20, 1),
            "daemon_cpu_share": round((cpu1 - cpu0) / elapsed, 2) if cpu0 is not None and cpu1 is not None else None,
            "bench_client_cpu_share": round((pcpu1 - pcpu0) / elapsed, 2),
            "failures_sample": failures[:5],
            "gc": metrics.get("gc"),
            "admission": metrics.get("admission"),
        }

    async def throughput(self) -> None:
        assert self.daemon is not None
        daemon = self.daemon
        ceiling = await _imap.ceiling(
            "127.0.0.1", self.services.imaps_port, self.ctx,
            [(self.tp_user(i), BENCH_PASSWORD if i == 0 else f"tp{i}-pw") for i in range(THROUGHPUT_ACCOUNTS)],
            "INBOX", self.sizes.ceiling_seconds,
        )
        out: dict[str, Any] = {
            "what": f"warm {LIST_TOOL} calls/s on one process, closed loop, {THROUGHPUT_ACCOUNTS} accounts "
                    f"on {self.sizes.small}-message folders; ceiling: bare clients on 8 logged-in connections",
            "ceiling_calls_per_s": round(ceiling["calls_per_s"], 1),
            "ceiling_p50_ms": ceiling["p50_ms"],
            "ceiling_client_cpu_share": round(ceiling["client_cpu_share"], 2),
        }
        self.report["throughput"] = out
        tokens = [self.tokens[self.tp_user(i)] for i in range(THROUGHPUT_ACCOUNTS) if self.tp_user(i) in self.tokens]
        if not tokens:
            raise RuntimeError("no OAuth token for the throughput accounts")
        levels = []
        out["levels"] = levels
        for c in self.sizes.throughput_levels:
            clients = [McpClient(daemon.base_url, tokens[i % len(tokens)]) for i in range(c)]
            cpu0, pcpu0 = cpu_seconds(daemon.pid), time.process_time()
            r = await closed_loop(clients, lambda cl: listing(cl, "INBOX"), self.sizes.throughput_seconds)
            cpu1, pcpu1 = cpu_seconds(daemon.pid), time.process_time()
            for cl in clients:
                cl.close()
            lat = r["latencies"]
            levels.append({
                "concurrency": c,
                "calls_per_s": round(len(lat) / r["seconds"], 1),
                "p50_ms": ms(pct(lat, 0.5)),
                "p99_ms": ms(pct(lat, 0.99)),
                "failures": len(r["failures"]),
                "daemon_cpu_share": round((cpu1 - cpu0) / r["seconds"], 2)
                if cpu0 is not None and cpu1 is not None else None,
                "daemon_cpu_ms_per_call": round((cpu1 - cpu0) / len(lat) * 1000, 3)
                if lat and cpu0 is not None and cpu1 is not None else None,
                "bench_client_cpu_share": round((pcpu1 - pcpu0) / r["seconds"], 2),
            })
            log(f"throughput c={c}: {levels[-1]['calls_per_s']} calls/s")
            if r["failures"] and not lat:
                raise ToolCallFailed(r["failures"][0])
        best = max(levels, key=lambda x: x["calls_per_s"])
        out["best_concurrency"] = best["concurrency"]
        out["calls_per_s"] = best["calls_per_s"]
        out["ceiling_ratio"] = ratio(best["calls_per_s"], ceiling["calls_per_s"])

    async def scale_out(self) -> None:
        """
        1 and 2 processes behind HAProxy (contrib/haproxy: the Authorization
        header hashed, consistent), all on the run's Redis store, each group
        with its own key ring and base URL.  Warm listings of `SCALE_ACCOUNTS`
        accounts, one client each, closed loop, the two groups measured in
        alternating blocks (so the machine's drift hits both alike), against
        the raw IMAP ceiling on the same accounts measured in the same item
        (README.rst, "Scaling out").  With 8 accounts the header hash put
        all of them on one process in a run: the item then measured the
        hash, not the processes.
        """
        services = self.services
        accounts = [(self.c_user(i), f"c{i}-pw") for i in range(SCALE_ACCOUNTS)]
        ceiling = await _imap.ceiling("127.0.0.1", services.imaps_port, self.ctx, accounts, "INBOX",
                                      self.sizes.ceiling_seconds)
        concurrency = SCALE_ACCOUNTS
        blocks = 4
        block_seconds = self.sizes.throughput_seconds / 2
        out: dict[str, Any] = {
            "what": f"warm {LIST_TOOL} calls/s through HAProxy to N processes (Redis store, shared key "
                    f"ring), closed loop, one client on each of {SCALE_ACCOUNTS} accounts "
                    f"({self.sizes.per_account_messages}-message folders), 1 and 2 processes in {blocks} "
                    f"alternating blocks of {block_seconds:g} s; ceiling: bare clients on the same "
                    f"{SCALE_ACCOUNTS} accounts' logged-in connections, same item",
            "cores": os.cpu_count(),
            "ceiling_calls_per_s": round(ceiling["calls_per_s"], 1),
            "processes": {},
        }
        self.report["scale_out"] = out
        groups: dict[int, dict[str, Any]] = {}
        try:
            for n in (1, 2):
                groups[n] = await self._scale_group(n, accounts, concurrency)
            for _ in range(blocks):
                for n in (1, 2):
                    g = groups[n]
                    pids = [d.pid for d in g["daemons"]] + [g["proxy"].process.pid]
                    cpu0 = [cpu_seconds(pid) for pid in pids]
                    own0 = time.process_time()
                    r = await closed_loop(g["clients"], lambda cl: listing(cl, "INBOX"), block_seconds,
                                          warmup=False)
                    cpu1 = [cpu_seconds(pid) for pid in pids]
                    g["client_cpu"] += time.process_time() - own0
                    g["latencies"] += r["latencies"]
                    g["failures"] += r["failures"]
                    g["seconds"] += r["seconds"]
                    g["cpu"] = [c + (b - a if a is not None and b is not None else 0.0)
                                for c, a, b in zip(g["cpu"], cpu0, cpu1, strict=True)]
            for n, g in groups.items():
                lat = g["latencies"]
                calls_per_s = round(len(lat) / g["seconds"], 1)
                out["processes"][str(n)] = {
                    "calls_per_s": calls_per_s,
                    "ceiling_ratio": ratio(calls_per_s, ceiling["calls_per_s"]),
                    "p50_ms": ms(pct(lat, 0.5)),
                    "p99_ms": ms(pct(lat, 0.99)),
                    "failures": len(g["failures"]),
                    "first_failure": g["failures"][0] if g["failures"] else None,
                    "daemon_cpu_shares": [round(c / g["seconds"], 2) for c in g["cpu"][:-1]],
                    "haproxy_cpu_share": round(g["cpu"][-1] / g["seconds"], 2),
                    "bench_client_cpu_share": round(g["client_cpu"] / g["seconds"], 2),
                }
                log(f"scale_out n={n}: {calls_per_s} calls/s")
        finally:
            for g in groups.values():
                for cl in g["clients"]:
                    cl.close()
                g["proxy"].stop()
                for d in g["daemons"]:
                    d.stop()
        one, two = (out["processes"].get(k, {}).get("calls_per_s") for k in ("1", "2"))
        out["ceiling_ratio"] = out["processes"].get("2", {}).get("ceiling_ratio")
        out["2_processes/1_process"] = ratio(two, one)

    async def _scale_group(self, n: int, accounts: Sequence[tuple[str, str]], concurrency: int) -> dict[str, Any]:
        """N daemons behind one HAProxy, every account logged in through it, pools warm."""
        from tests.harness import HAProxy, free_port

        services = self.services
        workdir = self.workdir / f"scale-{n}"
        workdir.mkdir()
        proxy_port = free_port()
        extra = ("--store", services.redis_url, "--base-url", f"http://127.0.0.1:{proxy_port}",
                 "--trusted-proxies", "127.0.0.1")
        daemons: list[Daemon] = []
        try:
            for i in range(n):
                keys = ("--key-file", str(workdir / "state-0" / "keys.json")) if i else ()
                daemons.append(Daemon(workdir, free_port(), workdir / f"state-{i}", services.ca_file,
                                      (*extra, *keys), name=f"mailmcp-{i}"))
            # The shipped 2 s health checks: a loaded machine's slow /health must not trip them.
            proxy = await asyncio.to_thread(HAProxy.start, workdir, [d.port for d in daemons], proxy_port, None)
        except BaseException:
            for d in daemons:
                d.stop()
            raise
        group: dict[str, Any] = {"daemons": daemons, "proxy": proxy, "clients": [], "latencies": [],
                                 "failures": [], "seconds": 0.0, "cpu": [0.0] * (n + 1), "client_cpu": 0.0}
        try:
            client = generate_client(workdir, workdir / "state-0", services.imaps_port, services.smtps_port)
            tokens, stats = await login_many(proxy.base_url, client, accounts, concurrency=8)
            if len(tokens) != len(accounts):
                raise RuntimeError(f"logins through HAProxy failed: {stats['errors'][:2]}")
            token_list = [tokens[u] for u, _ in accounts]
            group["clients"] = [McpClient(proxy.base_url, token_list[i % len(token_list)])
                                for i in range(concurrency)]
            # Untimed: every account's pool connection is made and its folder open.
            await closed_loop(group["clients"], lambda cl: listing(cl, "INBOX"), 0.5)
        except BaseException:
            for cl in group["clients"]:
                cl.close()
            proxy.stop()
            for d in daemons:
                d.stop()
            raise
        return group

    async def start_profiler(self, name: str) -> tuple[Any, Path] | None:
        """Start py-spy on the daemon (until `finish_profiler`); None when py-spy is missing."""
        assert self.daemon is not None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            self.report.setdefault("profile", {})["error"] = "py-spy is not installed (pip install py-spy)"
            return None
        raw = self.workdir / f"profile-{name}.txt"
        proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(self.daemon.pid), "--rate", "250", "--format", "raw", "--full-filenames",
            "-o", str(raw), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # let it attach
        return proc, raw

    async def finish_profiler(self, started: tuple[Any, Path] | None, name: str, what: str) -> None:
        if started is None:
            return
        proc, raw = started
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            err = b"py-spy did not stop"
        out: dict[str, Any] = {"what": what}
        self.report.setdefault("profile", {})[name] = out
        if not raw.exists():
            out["error"] = f"py-spy failed: {err.decode(errors='replace')[-300:]}"
            return
        out.update(summarise_profile(raw.read_text(errors="replace")))
        if self.profile_copy is not None:
            target = self.profile_copy.with_name(f"{self.profile_copy.stem}-{name}{self.profile_copy.suffix}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(raw, target)
                out["raw_stacks"] = str(target)
            except OSError as e:
                out["raw_stacks_error"] = str(e)

    async def profile(self, seconds: float, concurrency: int = 4) -> None:
        """
        Sample the daemon with py-spy while C{concurrency} clients keep warm
        listings in flight; report where its time goes (self and inclusive
        time per function, as a share of the reactor thread's busy samples).
        """
        assert self.daemon is not None
        tokens = [self.tokens[self.tp_user(i)] for i in range(THROUGHPUT_ACCOUNTS) if self.tp_user(i) in self.tokens]
        clients = [McpClient(self.daemon.base_url, tokens[i % len(tokens)]) for i in range(concurrency)]
        await asyncio.gather(*(listing(c, "INBOX") for c in clients))
        started = await self.start_profiler("warm")
        r = await closed_loop(clients, lambda c: listing(c, "INBOX"), seconds, warmup=False)
        for c in clients:
            c.close()
        await self.finish_profiler(
            started, "warm", f"{concurrency} clients, warm listings, "
                             f"{round(len(r['latencies']) / r['seconds'], 1)} calls/s while sampled")

    async def peer(self) -> None:
        from tests.harness import free_port

        s = self.sizes
        out: dict[str, Any] = {"what": "mcp-email-server 1.13.3 (own venv, streamable-http), "
                                       f"{PEER_TOOL}(page_size=20), same Dovecot, same folders"}
        self.report["peer"] = out
        try:
            exe = await asyncio.to_thread(ensure_peer)
        except Exception as e:
            out["error"] = f"could not install the peer: {str(e)[-400:]}"
            return
        try:
            peer = await asyncio.to_thread(Peer, exe, self.workdir, free_port(), BENCH_USER, BENCH_PASSWORD,
                                           self.services.imaps_port, self.services.smtps_port, self.services.ca_file)
        except Exception as e:
            out["error"] = f"the peer did not start: {str(e)[-600:]}"
            return
        args = {"account_name": "local", "page": 1, "page_size": 20, "mailbox": "INBOX"}
        try:
            client = McpClient(peer.base_url, timeout=300)
            await client.initialize()
            await client.call(PEER_TOOL, args)
            lat = [await timed(lambda: client.call(PEER_TOOL, args)) for _ in range(s.peer_calls)]
            out.update(latency_summary(lat))
            clients = [client]
            for _ in range(3):
                extra = McpClient(peer.base_url, timeout=300)
                await extra.initialize()
                clients.append(extra)
            r = await closed_loop(clients, lambda cl: cl.call(PEER_TOOL, args), s.peer_seconds, warmup=False)
            out["throughput_concurrency"] = len(clients)
            out["calls_per_s"] = round(len(r["latencies"]) / r["seconds"], 3)
            out["throughput_failures"] = len(r["failures"])
            mailmcp_p50 = self.report.get("warm", {}).get("p50_ms")
            mailmcp_tp = self.report.get("throughput", {}).get("calls_per_s")
            out["mailmcp_p50_ms"] = mailmcp_p50
            out["mailmcp_calls_per_s"] = mailmcp_tp
            out["peer_p50/mailmcp_p50"] = ratio(out["p50_ms"], mailmcp_p50)
            out["mailmcp_throughput/peer_throughput"] = ratio(mailmcp_tp, out["calls_per_s"])
            # The large folder (bounded: the peer may take minutes or never answer).
            big = {**args, "mailbox": LARGE_FOLDER}
            big_client = McpClient(peer.base_url, timeout=150)
            clients.append(big_client)
            t0 = time.perf_counter()
            try:
                await big_client.initialize()
                await big_client.call(PEER_TOOL, big)
                out["large_folder"] = {"served": True, "ms": ms(time.perf_counter() - t0)}
            except (TimeoutError, ToolCallFailed, HTTPError, OSError) as e:
                out["large_folder"] = {"served": False, "ms": ms(time.perf_counter() - t0), "error": str(e)[:300]}
            for cl in clients:
                cl.close()
        except (TimeoutError, ToolCallFailed, HTTPError, OSError) as e:
            out["error"] = f"the peer failed: {str(e)[:300]}; log: {peer.tail(600)}"
        finally:
            peer.stop()

    async def overhead(self) -> None:
        assert self.daemon is not None
        self.report["setup"]["http_client_overhead"] = await client_overhead(self.daemon.base_url)

    def stop(self) -> None:
        if self.web_floor_server is not None:
            self.web_floor_server.stop()
        for d in (self.cold_daemon, self.daemon):
            if d is not None:
                if d is self.daemon:
                    self.report.setdefault("setup", {})["daemon_log_tail"] = d.tail(1200) if self.report.get(
                        "errors") else None
                d.stop()
        if self.services is not None:
            self.services.stop()


def summarise_profile(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    import re

    frame_re = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0

    def name(frame: str) -> str:
        m = frame_re.match(frame.strip())
        if not m:
            return frame.strip()
        func, path = m.group(1), m.group(2)
        for marker in ("site-packages/", "/lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        path = path.replace(str(ROOT) + "/", "")
        return f"{func} ({path})"

    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "mainLoop (" not in stack:
            continue  # only the reactor thread (idle pool threads would dilute everything)
        n = int(count)
        total += n
        frames = [name(f) for f in stack.split(";") if f]
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n

    def share(d: dict[str, int], filt: Callable[[str], bool] = lambda _: True) -> list[list[Any]]:
        items = sorted(((v, k) for k, v in d.items() if filt(k)), reverse=True)[:top]
        return [[k, round(100 * v / total, 1)] for v, k in items]

    return {
        "samples": total,
        "note": "reactor thread only; py-spy drops idle (epoll_wait) samples, so shares are of busy time",
        "self_percent": share(self_time),
        "inclusive_percent_mailmcp": share(inclusive, lambda k: "mailmcp/" in k),
        "inclusive_percent": share(inclusive),
    }


ITEMS = ("floor", "warm", "cold", "large_folder", "conversations", "get_message", "search", "send",
         "concurrency", "throughput", "scale_out", "peer")


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """docs/architecture.rst (Targets), checked against this run's numbers (None where not measured)."""

    def get(*path: str) -> Any:
        node: Any = report
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    def check(value: Any, ok: Callable[[Any], bool]) -> dict[str, Any]:
        return {"value": value, "met": None if value is None else bool(ok(value))}

    # Only the n_<count> entries: an item left out (MAILMCP_BENCH_ONLY) holds {"error": ...}.
    conc = {k: v for k, v in (get("concurrency") or {}).items() if k.startswith("n_")}
    top = conc[max(conc, key=lambda k: int(k.split("_")[1]))] if conc else {}
    inv_cold = get("cold", "cold_p50/warm_p50")
    return {
        "warm_p50/floor_p50 <= 1.5": check(get("warm", "warm_p50/floor_p50"), lambda v: v <= 1.5),
        "cold_p50/warm_p50 >= 5": check(inv_cold, lambda v: v >= 5),
        "large_p50/small_p50 <= 1.3": check(get("large_folder", "large_p50/small_p50"), lambda v: v <= 1.3),
        f"concurrency n={top.get('accounts')}: success_rate == 1": check(top.get("success_rate"), lambda v: v == 1),
        f"concurrency n={top.get('accounts')}: reactor_lag_p99 < 100 ms": check(top.get("reactor_lag_p99_ms"),
                                                                                 lambda v: v < 100),
        f"concurrency n={top.get('accounts')}: peak RSS < 1 GiB": check(top.get("peak_rss_mib"), lambda v: v < 1024),
        "throughput.ceiling_ratio >= 0.5": check(get("throughput", "ceiling_ratio"), lambda v: v >= 0.5),
        "scale_out (2 processes).ceiling_ratio >= 0.5": check(get("scale_out", "ceiling_ratio"),
                                                              lambda v: v >= 0.5),
        "get_message newsletter_html p50/floor_p50 <= 10": check(
            get("get_message", "newsletter_html", "p50/floor_p50"), lambda v: v <= 10),
        "get_message attachment_2mb_linked p50/floor_p50 <= 2": check(
            get("get_message", "attachment_2mb_linked", "p50/floor_p50"), lambda v: v <= 2),
        "get_message attachment_2mb_first_read p50/floor_p50 <= 3": check(
            get("get_message", "attachment_2mb_first_read", "p50/floor_p50"), lambda v: v <= 3),
        "search large_folder p50/floor_p50 <= 1.5": check(
            get("search", "large_folder", "p50/floor_p50"), lambda v: v <= 1.5),
        "send p50/floor_p50 <= 1.5": check(get("send", "p50/floor_p50"), lambda v: v <= 1.5),
        "mailmcp_throughput/peer_throughput >= 100": check(get("peer", "mailmcp_throughput/peer_throughput"),
                                                           lambda v: v >= 100),
    }


async def run(quick: bool, keep: bool = False, profile: Path | None = None) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    if os.environ.get("MAILMCP_BENCH_SIZES"):
        # e.g. '{"concurrency": [1000], "throughput_levels": [8]}' to try one item at full size
        import json

        overrides = json.loads(os.environ["MAILMCP_BENCH_SIZES"])
        sizes = attrs.evolve(sizes, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    # e.g. MAILMCP_BENCH_ONLY=warm,concurrency while working on one item
    only = set(filter(None, os.environ.get("MAILMCP_BENCH_ONLY", "").split(",")))
    workdir = Path(tempfile.mkdtemp(prefix="mailmcp-bench-"))
    workdir.chmod(0o755)
    bench = Bench(sizes, quick, workdir)
    bench.profile_copy = profile
    errors: dict[str, str] = {}
    bench.report["errors"] = errors
    t_start = time.perf_counter()
    try:
        log(f"starting services ({bench.report['mode']})")
        bench.start_services()
        log("seeding")
        await asyncio.to_thread(bench.seed)
        await bench.first_access()
        log(f"seeded: {bench.report['setup']}")
        bench.start_daemon()
        await bench.overhead()
        log("OAuth logins")
        await bench.login_all()
        log(f"logins: {bench.report['setup']['oauth_logins']}")
        for name, phase in (
            ("warm", bench.floor_and_warm),
            ("large_folder", bench.large_folder),
            ("conversations", bench.conversations),
            ("get_message", bench.get_message),
            ("search", bench.search),
            ("send", bench.send),
            ("cold", bench.cold),
            ("throughput", bench.throughput),
            ("concurrency", bench.concurrency),
            ("scale_out", bench.scale_out),
            *((("profile", lambda: bench.profile(sizes.throughput_seconds * 2)),) if profile else ()),
            ("peer", bench.peer),
        ):
            if only and name not in only:
                continue
            log(f"measuring {name}")
            try:
                await phase()
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {str(e)[:500]}"
                log(f"{name} failed: {errors[name]}")
    except Exception as e:
        errors["setup"] = f"{type(e).__name__}: {str(e)[:800]}"
        log(f"setup failed: {errors['setup']}")
    finally:
        if errors and bench.daemon is not None:
            bench.report["daemon_log_tail"] = bench.daemon.tail(2000)
        bench.stop()
        if keep:
            bench.report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for item in ITEMS:
        bench.report.setdefault(item, {"error": errors.get(item) or errors.get("setup") or "not measured"})
    bench.report["targets"] = evaluate_targets(bench.report)
    bench.report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return bench.report
