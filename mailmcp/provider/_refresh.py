"""
Keeping a grant's provider access token fresh (provider sign-in).

A grant made with "Continue with Microsoft/Google" holds the provider's
tokens inside its sealed credentials, under the per-grant key that only our
own tokens carry.  `ProviderTokenKeeper` refreshes the access token when it
expires within `REFRESH_MARGIN` seconds (or when a mail server refused it),
and stores the rotated refresh token back, sealed again, with the store's
compare-and-swap:

- one refresh per grant at a time in this process: concurrent callers wait
  for the one in flight and share its outcome;
- across processes the CAS decides: the loser re-reads the grant and uses
  the winner's tokens.  With a provider that rotates refresh tokens the
  loser's own call may even be refused (the token it sent was just used);
  a refusal therefore ends the grant only when the stored tokens are still
  the ones that were refused;
- `ProviderRefused` (consent revoked, refresh token expired) ends the
  grant: it is revoked in the store, and `GrantEnded` tells the caller to
  have the user sign in again.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..interfaces import IGrantStore
from ..oauth._tokens import InvalidToken
from ._client import ProviderClient, ProviderRefused, ProviderTokens, ProviderUnavailable

log = Logger()

#: Seconds before expiry at which an access token is refreshed.
REFRESH_MARGIN = 300

#: Seconds a refused refresh waits before re-reading the grant once more: a
#: process that won the refresh may not have stored its tokens yet.
REFUSAL_RECHECK = 0.5

#: What a tool answers when the provider ended mailmcp's access.
RECONNECT_MESSAGE = (
    "{label} no longer allows mailmcp to use this mailbox (access was revoked or has "
    "expired). Reconnect mailmcp in your AI assistant and sign in again with {label}."
)


class GrantEnded(Exception):
    """
    The provider refused the grant's refresh token; the grant has been
    revoked.  C{message} is safe to show: it asks the user to sign in again.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class _Read:
    sealed: bytes
    credentials: Any  # mailmcp.oauth._grants.Credentials


class ProviderTokenKeeper:
    """
    Refreshes provider access tokens of grants.

    :param store: the `IGrantStore` holding the grants.
    :param provider_for: the `ProviderClient` for a credentials' C{provider}
        key ("" the daemon's default profile, else a provisioned client's
        id), or None when it is no longer configured; may answer with an
        awaitable (a client looked up in the client store).
    :param clock: for "expires within the margin" and the refusal re-check.
    """

    def __init__(
        self,
        store: IGrantStore,
        provider_for: Callable[[str], ProviderClient | None | Awaitable[ProviderClient | None]],
        clock: IReactorTime,
        margin: int = REFRESH_MARGIN,
    ) -> None:
        self._store = store
        self._provider_for = provider_for
        self._clock = clock
        self._margin = margin
        self._flights: dict[str, list[Deferred[Any]]] = {}
        #: Refresh calls made to providers (all grants), for tests and metrics.
        self.refreshes = 0

    def needs_refresh(self, tokens: ProviderTokens) -> bool:
        return tokens.expires_at - self._clock.seconds() <= self._margin

    async def current(
        self, grant_id: str, key: bytes, seen: ProviderTokens | None, *, force: bool
    ) -> Any:
        """
        The grant's credentials with a usable access token: the stored ones
        when they are fresh (or, with C{force}, already newer than C{seen},
        the token a mail server just refused), else refreshed.

        :raises GrantEnded: the provider refused; the grant is revoked.
        :raises ProviderUnavailable: the provider could not be asked.
        :raises InvalidToken: the grant is gone (revoked, expired) or does
            not open with C{key}.
        """
        while True:
            flight = self._flights.get(grant_id)
            if flight is None:
                return await self._fly(grant_id, key, seen, force)
            waiter: Deferred[Any] = Deferred()
            flight.append(waiter)
            result = await waiter
            if not force or result.oauth is None or result.oauth != seen:
                return result
            # The flight we joined ended with the very token that was
            # refused (it found it fresh): refresh it after all.

    async def _fly(
        self, grant_id: str, key: bytes, seen: ProviderTokens | None, force: bool
    ) -> Any:
        waiters: list[Deferred[Any]] = []
        self._flights[grant_id] = waiters
        try:
            result = await self._refresh(grant_id, key, seen, force)
        except BaseException as e:
            self._flights.pop(grant_id, None)
            failure = Failure(e)
            for w in waiters:
                w.errback(failure)
            raise
        self._flights.pop(grant_id, None)
        for w in waiters:
            w.callback(result)
        return result

    async def _read(self, grant_id: str, key: bytes) -> _Read:
        from ..oauth._grants import open_credentials

        record = await self._store.get_grant(grant_id)
        if record is None:
            raise InvalidToken()
        return _Read(record.sealed, open_credentials(key, grant_id, record.sealed))

    async def _refresh(
        self, grant_id: str, key: bytes, seen: ProviderTokens | None, force: bool
    ) -> Any:
        from ..oauth._grants import seal_credentials

        read = await self._read(grant_id, key)
        creds = read.credentials
        tokens: ProviderTokens | None = creds.oauth
        if tokens is None:
            return creds
        if not self.needs_refresh(tokens) and (not force or tokens != seen):
            return creds
        found = self._provider_for(creds.provider)
        client = await found if inspect.isawaitable(found) else found
        if client is None:
            log.warn("grant {grant}: its sign-in provider is no longer configured", grant=grant_id)
            raise ProviderUnavailable(
                "the sign-in provider of this mailbox is no longer configured on this server"
            )
        label = client.profile.label
        self.refreshes += 1
        try:
            fresh = await client.refresh(tokens.refresh_token)
        except ProviderRefused:
            return await self._refused(grant_id, key, read, label)
        updated = attrs.evolve(creds, oauth=fresh)
        if await self._store.replace_sealed(
            grant_id, read.sealed, seal_credentials(key, grant_id, updated)
        ):
            log.info(
                "grant {grant}: {provider} access token refreshed",
                grant=grant_id,
                provider=client.profile.name,
            )
            return updated
        # Another process stored its refresh first: use its tokens.
        log.info("grant {grant}: another process refreshed first", grant=grant_id)
        return (await self._read(grant_id, key)).credentials

    async def _refused(self, grant_id: str, key: bytes, read: _Read, label: str) -> Any:
        """
        The provider refused our refresh token.  Unless another process
        rotated it meanwhile (then its tokens are used), the grant ends.
        """
        for delay in (0.0, REFUSAL_RECHECK):
            if delay:
                await deferLater(self._clock, delay, lambda: None)
            try:
                again = await self._read(grant_id, key)
            except InvalidToken:
                break
            if again.sealed != read.sealed:
                log.info("grant {grant}: another process refreshed first", grant=grant_id)
                return again.credentials
        await self._store.revoke_grant(grant_id)
        log.info("grant {grant} ended: the provider refused its refresh token", grant=grant_id)
        raise GrantEnded(RECONNECT_MESSAGE.format(label=label))
