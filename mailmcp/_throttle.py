"""
Login throttling: the login form is a live credential oracle for the mail
server behind it, so attempts are limited per client address and failures
per username (counters in the grant store, shared by every process), and
live validations in flight are capped per process.  A throttled attempt is
answered from these counters alone, without contacting any mail server.
"""

from __future__ import annotations

import hashlib
import ipaddress

import attrs
from twisted.logger import Logger

from .interfaces import IGrantStore

log = Logger()


@attrs.frozen
class ThrottlePolicy:
    """Limits: attempts per address, failures per username, each per window (seconds)."""

    ip_attempts: int = 20
    ip_window: int = 60
    user_failures: int = 5
    user_window: int = 300


def address_key(address: str) -> str:
    """IPv4 addresses count alone; IPv6 addresses by their /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "ip:" + address[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return "ip:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return f"ip:{ip}"


def username_key(username: str) -> str:
    """Usernames are stored hashed: the store needs no list of who tried."""
    norm = username.strip().lower().encode("utf-8")
    return "user:" + hashlib.sha256(norm).hexdigest()[:32]


class Throttled(Exception):
    """Too many attempts: try again after C{retry_after} seconds."""

    def __init__(self, retry_after: int, scope: str) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after
        self.scope = scope


class Busy(Exception):
    """Too many live validations in flight in this process."""


class LoginThrottle:
    """
    The gate in front of live login checks.

    Use: ``await throttle.admit(ip, username)`` (raises `Throttled`), then
    ``with throttle.slot():`` around the live check (raises `Busy`), then
    ``await throttle.failed(username)`` when the mail server said no.
    """

    def __init__(
        self, store: IGrantStore, concurrency: int, policy: ThrottlePolicy | None = None
    ) -> None:
        self._store = store
        self._limit = concurrency
        self.policy = policy or ThrottlePolicy()
        self.in_flight = 0

    async def admit(self, address: str, username: str) -> None:
        policy = self.policy
        failures = await self._store.count(username_key(username))
        if failures >= policy.user_failures:
            log.info("login throttled for a username ({failures} failures)", failures=failures)
            raise Throttled(policy.user_window, "username")
        attempts = await self._store.hit(address_key(address), policy.ip_window)
        if attempts > policy.ip_attempts:
            log.info(
                "login throttled for {address} ({attempts} attempts)",
                address=address,
                attempts=attempts,
            )
            raise Throttled(policy.ip_window, "address")

    async def failed(self, username: str) -> None:
        await self._store.hit(username_key(username), self.policy.user_window)

    def slot(self) -> _Slot:
        return _Slot(self)


class _Slot:
    def __init__(self, throttle: LoginThrottle) -> None:
        self._throttle = throttle

    def __enter__(self) -> None:
        if self._throttle.in_flight >= self._throttle._limit:
            raise Busy()
        self._throttle.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self._throttle.in_flight -= 1
