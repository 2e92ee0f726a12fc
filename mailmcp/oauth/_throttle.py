"""
Login throttling: the login form is a live credential oracle for the mail
servers behind it, so every attempt spends from budgets kept in the grant
store (shared by every process) before any mail server is contacted:

- per username tried (the IMAP username and, when different, the SMTP
  username), normalised so spellings of one name share a budget;
- attempts per client address (a short window);
- failures per client address (a long window);
- failures across the whole service (the backstop against guessing spread
  over many addresses).

The attempt is *reserved* in one atomic store operation (`IGrantStore.reserve`)
before the live check, so concurrent attempts cannot all pass a check that
only a later write would have failed.  Failure budgets are handed back when
the mail server accepted the login (or was never asked); only the per-address
attempt budget counts successes too.  Live checks in flight are also capped
per process.  A throttled attempt is answered from the store alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import unicodedata
from collections.abc import Iterable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..interfaces import IGrantStore

log = Logger()

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

GLOBAL_FAILURES_KEY = "global:failures"


@attrs.frozen
class ThrottlePolicy:
    """Budgets and their windows (seconds)."""

    ip_attempts: int = 20
    ip_window: int = 60
    user_failures: int = 5
    user_window: int = 300
    ip_failures: int = 30
    ip_failure_window: int = 3600
    global_failures: int = 300
    global_window: int = 300


def normalise_username(username: str) -> str:
    """
    One spelling per name: Unicode NFKC, case-folded, outer whitespace
    stripped, so ``Alice@Example.test `` and ``alice@example.test`` (or a
    full-width variant) share one budget.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())
    return folded.strip()


def username_key(username: str) -> str:
    """Usernames are stored hashed: the store needs no list of who tried."""
    norm = normalise_username(username).encode("utf-8")
    return "user:" + hashlib.sha256(norm).hexdigest()[:32]


def _address_id(address: str) -> str:
    """IPv4 addresses count alone; IPv6 addresses by their /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def address_key(address: str) -> str:
    """The counter of login attempts from C{address}."""
    return "ip:" + _address_id(address)


def address_failure_key(address: str) -> str:
    """The counter of failed logins from C{address}."""
    return "ipfail:" + _address_id(address)


# -- the client address -------------------------------------------------------


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """
    A comma- or space-separated list of addresses and CIDR networks.

    :raises ValueError: naming the first entry that is neither.
    """
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _parse_hop(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For hop as an address (ports and IPv6 brackets removed)."""
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        ip = ipaddress.ip_address(hop)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Sequence[IPNetwork]
) -> bool:
    return ip is not None and any(ip in net for net in proxies)


def client_address(
    peer: str,
    forwarded: Sequence[bytes],
    proxies: Sequence[IPNetwork],
    trust_peer: bool = False,
) -> str:
    """
    The address a login attempt is charged to.

    ``X-Forwarded-For`` (all its header lines, in order, as one list) only
    counts when the direct C{peer} is a trusted proxy (in C{proxies}, or any
    peer when C{trust_peer}, i.e. ``--trust-forwarded``).  Then the
    list is walked from the right, skipping hops that are trusted proxies:
    the first other hop is the client, as the nearest trusted proxy saw it.
    Hops further left were written by the client and are never believed.
    """
    if not forwarded or not (trust_peer or _trusted(_parse_hop(peer), proxies)):
        return peer
    hops = [
        hop.strip()
        for value in forwarded
        for hop in value.decode("latin-1").split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        ip = _parse_hop(hop)
        if not _trusted(ip, proxies):
            return str(ip) if ip is not None else hop[:64]
    # Every hop is a proxy of ours: the left-most is the furthest we know.
    return str(_parse_hop(hops[0])) if hops else peer


# -- the gate -----------------------------------------------------------------


class Throttled(Exception):
    """A budget is used up: try again after C{retry_after} seconds."""

    def __init__(self, retry_after: int, scope: str) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after
        self.scope = scope


class Busy(Exception):
    """Too many live validations in flight in this process."""


@attrs.frozen
class Reservation:
    """
    What one admitted attempt holds: its username counters (normalised
    username -> key) and the address/global failure counters.
    """

    usernames: dict[str, str]
    failure_keys: tuple[str, ...]


class LoginThrottle:
    """
    The gate in front of live login checks.

    Use: ``reservation = await throttle.admit(ip, [imap_user, smtp_user])``
    (raises `Throttled`), then ``with throttle.slot():`` around the live check
    (raises `Busy`), then ``await throttle.settle(reservation, failed_user)``
    with the username the mail server refused (or None when it accepted, or
    was never asked).
    """

    def __init__(
        self,
        store: IGrantStore,
        concurrency: int,
        policy: ThrottlePolicy | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._store = store
        self._limit = concurrency
        self.policy = policy or ThrottlePolicy()
        self.in_flight = 0
        #: One log line per address and budget per window, not one per refusal.
        self._refusals = RefusalLog(clock)

    async def admit(self, address: str, usernames: Iterable[str]) -> Reservation:
        """
        Reserve one attempt against every budget at once, before any mail
        server is asked.

        :raises Throttled: when one budget is used up (nothing is charged).
        """
        policy = self.policy
        names: dict[str, str] = {}
        for username in usernames:
            names.setdefault(normalise_username(username), username_key(username))
        failure_keys = (address_failure_key(address), GLOBAL_FAILURES_KEY)
        budgets = [(key, policy.user_failures, policy.user_window) for key in names.values()]
        budgets += [
            (address_key(address), policy.ip_attempts, policy.ip_window),
            (failure_keys[0], policy.ip_failures, policy.ip_failure_window),
            (failure_keys[1], policy.global_failures, policy.global_window),
        ]
        full = await self._store.reserve(budgets)
        if full is None:
            return Reservation(names, failure_keys)
        if full.startswith("user:"):
            scope, retry = "username", policy.user_window
        elif full.startswith("ip:"):
            scope, retry = "address", policy.ip_window
        elif full.startswith("ipfail:"):
            scope, retry = "address failures", policy.ip_failure_window
        else:
            scope, retry = "global failures", policy.global_window
        self._refusals.refused(address, scope)
        raise Throttled(retry, scope)

    async def settle(self, reservation: Reservation, failed_username: str | None) -> None:
        """
        Keep the charges of a failed attempt (the refused username's budget
        and the failure budgets), hand back everything else.
        """
        if failed_username is None:
            keep: set[str] = set()
        else:
            failed = reservation.usernames.get(normalise_username(failed_username))
            keep = {*reservation.failure_keys, *([failed] if failed else [])}
        back = [
            k for k in (*reservation.usernames.values(), *reservation.failure_keys) if k not in keep
        ]
        if back:
            try:
                await self._store.release(back)
            except Exception:
                # Over-charging is the safe side; the login itself goes on.
                log.failure("could not hand back login throttle budgets")

    def slot(self) -> _Slot:
        return _Slot(self)


#: Seconds during which further refusals of one address and budget are only counted.
REFUSAL_LOG_WINDOW = 60
#: Addresses tracked at once; beyond, refusals share one "many addresses" entry.
REFUSAL_LOG_KEYS = 1000
MANY_ADDRESSES = "many addresses"


class RefusalLog:
    """
    The log lines of throttled logins.  A guessing flood is refused from the
    store alone, thousands of times a minute; a line for each would flood the
    log it is meant to show up in.  So the first refusal of an address and
    budget is logged at once, the next ones in the same window are counted,
    and the count is logged as one summary line when the window ends.  Without
    a C{clock} (a bare throttle in a test), every refusal is logged.
    """

    def __init__(self, clock: IReactorTime | None, window: int = REFUSAL_LOG_WINDOW) -> None:
        self._clock = clock
        self._window = window
        #: (address, scope) -> refusals after the first in the current window.
        self._counts: dict[tuple[str, str], int] = {}

    def refused(self, address: str, scope: str) -> None:
        key = (address, scope)
        if key not in self._counts and len(self._counts) >= REFUSAL_LOG_KEYS:
            key = (MANY_ADDRESSES, scope)
        if key in self._counts:
            self._counts[key] += 1
            return
        log.info(
            "login throttled for {address}: {scope} budget used up", address=key[0], scope=scope
        )
        if self._clock is not None:
            self._counts[key] = 0
            self._clock.callLater(self._window, self._summarise, key)

    def _summarise(self, key: tuple[str, str]) -> None:
        more = self._counts.pop(key, 0)
        if more:
            log.info(
                "login throttled for {address}: {scope} budget, {count} more refusals "
                "in the last {window} seconds",
                address=key[0],
                scope=key[1],
                count=more,
                window=self._window,
            )


class _Slot:
    def __init__(self, throttle: LoginThrottle) -> None:
        self._throttle = throttle

    def __enter__(self) -> None:
        if self._throttle.in_flight >= self._throttle._limit:
            raise Busy()
        self._throttle.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self._throttle.in_flight -= 1
