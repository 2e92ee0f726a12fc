"""
Grants and split-knowledge credentials.

A grant is one successful login.  Its row in the `IGrantStore` holds the
user's IMAP/SMTP credentials (and the mail servers they belong to) encrypted
with AES-256-GCM under a random per-grant key.  That key is never stored: it
travels only inside the sealed authorization code, access and refresh
tokens.  So a leaked store alone reveals no password, a leaked server key
alone reveals no password either (the tokens it opens point at rows), and
deleting the row revokes every token of the grant at once.

`GrantService` implements the token-endpoint semantics on top of that:
single-use codes whose replay revokes the grant, rotating refresh tokens with
reuse detection over the grant's family, an absolute lifetime cap from the
login, and client binding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.logger import Logger

from .._account import MailAccount
from .._scopes import FULL, LEGACY_SCOPE, format_scope, scopes_of_claim
from ..interfaces import IGrantStore
from ..provider._client import ProviderClient, ProviderTokens, ProviderUnavailable
from ..provider._refresh import GrantEnded, ProviderTokenKeeper
from ._clients import Client, MailServer
from ._keyring import KeyRing
from ._throttle import normalise_username
from ._tokens import InvalidToken, TokenCodec

log = Logger()

#: The legacy single scope: tokens carrying it (or none) allow all five.
SCOPE = LEGACY_SCOPE

#: Seconds the immediately previous refresh token stays usable after a
#: rotation, answering with the same successor: a client whose token
#: response was lost, or that refreshes twice at once, is not logged out.
REFRESH_GRACE = 60

#: Seconds a used-code marker outlives the code itself, so that a replica
#: whose clock runs behind (and so still finds the code unexpired) cannot
#: redeem it a second time after the marker is gone.
USED_CODE_MARGIN = 600
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


class OAuthError(Exception):
    """
    An RFC 6749 error: C{error} code, a short safe C{description}, HTTP
    C{status}.  The description never contains a secret.
    """

    def __init__(self, error: str, description: str = "", status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status


@attrs.frozen(repr=False)
class Credentials:
    """What the user typed on the login page, plus the client's servers."""

    email: str
    full_name: str
    imap: MailServer
    imap_username: str
    imap_password: str
    smtp: MailServer
    smtp_username: str
    smtp_password: str
    #: How the mail servers are logged in to: ``password`` (the two
    #: passwords above), or ``xoauth2``/``oauthbearer`` with C{oauth}'s
    #: access token (provider sign-in; the passwords are then empty).
    imap_auth: str = "password"
    #: Which provider profile issued C{oauth}: "" the daemon's default
    #: profile, else the provisioned client's id (a refresh finds its
    #: `ProviderClient` by it).
    provider: str = ""
    oauth: ProviderTokens | None = None

    def __repr__(self) -> str:
        return f"<Credentials {self.imap_username!r} auth={self.imap_auth} password=***>"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "email": self.email,
                "full_name": self.full_name,
                "imap": self.imap.to_claims(),
                "imap_username": self.imap_username,
                "imap_password": self.imap_password,
                "smtp": self.smtp.to_claims(),
                "smtp_username": self.smtp_username,
                "smtp_password": self.smtp_password,
                **(
                    {}
                    if self.oauth is None and self.imap_auth == "password"
                    else {
                        "auth": self.imap_auth,
                        "provider": self.provider,
                        "oauth": None if self.oauth is None else self.oauth.to_claims(),
                    }
                ),
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Credentials:
        d = json.loads(data)
        return cls(
            email=d["email"],
            full_name=d["full_name"],
            imap=MailServer.from_claims(d["imap"]),
            imap_username=d["imap_username"],
            imap_password=d["imap_password"],
            smtp=MailServer.from_claims(d["smtp"]),
            smtp_username=d["smtp_username"],
            smtp_password=d["smtp_password"],
            # Rows sealed before provider sign-in have none of these.
            imap_auth=d.get("auth", "password"),
            provider=d.get("provider", ""),
            oauth=None if d.get("oauth") is None else ProviderTokens.from_claims(d["oauth"]),
        )


@attrs.frozen
class GrantRecord:
    """
    One grant as stored: no secret in clear.  C{sealed} is
    ``nonce || AES-GCM(key, credentials, aad=grant_id)``.
    """

    grant_id: str
    client_ref: str
    sealed: bytes = attrs.field(repr=False)
    created: int
    expires: int
    generation: int = 0
    # -- the account page (issue 15): who may list and revoke this grant --
    #: `account_index` of the login's mailbox ("" for grants made before it).
    account: str = ""
    #: The client's label when the grant was made (not a secret).
    client_name: str = ""
    #: When a request last used the grant (0: never), kept to the minute.
    last_used: int = 0
    #: The granted scopes as a ``scope`` string (after the login page's
    #: choice and the caps); "" for grants made before scopes: all five.
    scope: str = ""

    @property
    def scopes(self) -> frozenset[str]:
        """What the grant allows; a damaged value allows nothing."""
        return scopes_of_claim(self.scope or None)


def new_grant_key() -> bytes:
    return secrets.token_bytes(32)


def seal_credentials(key: bytes, grant_id: str, credentials: Credentials) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, credentials.to_json(), grant_id.encode("ascii"))


def open_credentials(key: bytes, grant_id: str, sealed: bytes) -> Credentials:
    """
    :raises InvalidToken: when the key does not open the row (a forged or
        foreign token) or the row is damaged.
    """
    try:
        plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], grant_id.encode("ascii"))
        return Credentials.from_json(plain)
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise InvalidToken() from None


def _successor_aad(grant_id: str, generation: int) -> bytes:
    return f"{grant_id}/successor/{generation}".encode("ascii")


def seal_successor(key: bytes, grant_id: str, generation: int, refresh_token: str) -> bytes:
    """
    The refresh token of C{generation}, sealed under the grant key for the
    store: the grace window can hand it out again, while the store alone
    (which never sees the grant key) cannot.
    """
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(
        nonce, refresh_token.encode("ascii"), _successor_aad(grant_id, generation)
    )


def open_successor(key: bytes, grant_id: str, generation: int, sealed: bytes) -> str:
    """:raises InvalidToken: when C{sealed} is not that successor."""
    try:
        plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], _successor_aad(grant_id, generation))
        return plain.decode("ascii")
    except (InvalidTag, ValueError):
        raise InvalidToken() from None


def client_ref(client_id: str) -> str:
    """A short stable reference to a client id (the id itself is long)."""
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:32]


# -- account index and revocation (issue 15) ---------------------------------

#: Key ring purpose of the account index's HMAC key.
ACCOUNT_INDEX_PURPOSE = "account-index"

#: Seconds between two writes of a grant's last-used time.
TOUCH_INTERVAL = 60


def account_index(ring: KeyRing, kid: str, server: MailServer, username: str) -> str:
    """
    The keyed hash naming one mailbox (IMAP host, port and normalised
    username) in the store: grants of the same mailbox share it, and the
    store alone cannot tell whose mailbox it is nor guess it offline.
    """
    key = ring.subkey(kid, ACCOUNT_INDEX_PURPOSE)
    host = unicodedata.normalize("NFKC", server.host).strip().casefold()
    text = f"{host}\x00{int(server.port)}\x00{normalise_username(username)}"
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def account_indexes(ring: KeyRing, server: MailServer, username: str) -> list[str]:
    """
    The account index under every key of the ring, current first: a grant
    made before a rotation carries the index of the key current then.
    """
    kids = [ring.current_kid] + [k for k in ring.kids if k != ring.current_kid]
    return [account_index(ring, kid, server, username) for kid in kids]


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidToken()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken() from None


def pkce_s256(verifier: str) -> str:
    return _b64e(hashlib.sha256(verifier.encode("ascii")).digest())


@attrs.frozen
class TokenSet:
    access_token: str
    refresh_token: str
    expires_in: int
    #: The granted scopes, always returned (RFC 6749 §5.1).
    scope: str = format_scope(FULL)
    #: The grant's mailbox (its email, as the login and tool audit lines
    #: show it), for the token's audit line; never sent to the client.
    account: str | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }


@attrs.frozen
class CodeRequest:
    """What /oauth/authorize validated, bound into the code."""

    client: Client
    redirect_uri: str
    code_challenge: str
    resource: str
    #: The granted scopes (after the login page and the caps).
    scopes: frozenset[str] = FULL


class GrantService:
    """
    Creates grants at login and turns codes and refresh tokens into token
    sets, enforcing single use, rotation, reuse detection, client binding and
    the absolute lifetime.

    :param store: the `IGrantStore`.
    :param codec: seals and opens tokens.
    :param resource: the canonical MCP URL, the audience of every access token.
    :param max_scope: the daemon's ``--max-scope``: also narrows tokens issued
        before it was set (at use and at refresh), so lowering it takes
        effect at once.
    :param provider_for: the `ProviderClient` of a provider sign-in grant's
        profile key ("" the default profile, else a provisioned client's id);
        without it such grants cannot refresh their provider token.
    """

    def __init__(
        self,
        store: IGrantStore,
        codec: TokenCodec,
        resource: str,
        code_lifetime: int,
        access_lifetime: int,
        refresh_lifetime: int,
        cache_size: int = 4096,
        max_scope: frozenset[str] = FULL,
        provider_for: Callable[[str], ProviderClient | None | Awaitable[ProviderClient | None]]
        | None = None,
    ) -> None:
        self._max_scope = max_scope
        self.store = store
        self._accounts: OrderedDict[bytes, tuple[float, str, str, bytes, MailAccount, bytes]] = (
            OrderedDict()
        )
        #: Refreshes provider access tokens of provider sign-in grants.
        self.tokens = ProviderTokenKeeper(store, provider_for or (lambda _key: None), codec.clock)
        self._cache_size = cache_size
        self._touched: OrderedDict[str, int] = OrderedDict()
        self._codec = codec
        self._resource = resource
        self._code_lifetime = code_lifetime
        self._access_lifetime = access_lifetime
        self._refresh_lifetime = refresh_lifetime

    def _now(self) -> int:
        return int(self._codec.now())

    async def login(self, request: CodeRequest, credentials: Credentials) -> str:
        """
        Store a new grant for C{credentials} and return the authorization
        code (carrying the grant key) for C{request}.

        :raises ValueError: when C{request} grants no scope (the stored ""
            would read back as a grant from before scopes: all five).
        """
        if not request.scopes:
            raise ValueError("a grant needs at least one scope")
        now = self._now()
        grant_id = secrets.token_hex(16)
        key = new_grant_key()
        ring = self._codec.keyring
        record = GrantRecord(
            grant_id=grant_id,
            client_ref=client_ref(request.client.client_id),
            sealed=seal_credentials(key, grant_id, credentials),
            created=now,
            # Until the code is redeemed the row only lives as long as the code.
            expires=now + self._code_lifetime + 5,
            account=account_index(
                ring, ring.current_kid, credentials.imap, credentials.imap_username
            ),
            client_name=request.client.name or "",
            scope=format_scope(request.scopes),
        )
        await self.store.create_grant(record)
        log.info(
            "grant {grant} created for client {client}", grant=grant_id, client=record.client_ref
        )
        claims = {
            "gid": grant_id,
            "k": _b64e(key),
            "cl": record.client_ref,
            "ru": request.redirect_uri,
            "cc": request.code_challenge,
            "aud": request.resource,
            "sc": record.scope,
            "at": now,
            "jti": secrets.token_hex(12),
        }
        code: str = self._codec.seal("code", claims, self._code_lifetime)
        return code

    def _issue(
        self,
        gid: str,
        key: str,
        cref: str,
        auth_time: int,
        generation: int,
        scopes: frozenset[str],
    ) -> TokenSet:
        """
        An access and a refresh token for the grant, both carrying C{scopes}
        (so the whole refresh family keeps what the login granted).
        """
        now = self._now()
        scope = format_scope(scopes)
        hard_stop = auth_time + self._refresh_lifetime
        access_life = max(1, min(self._access_lifetime, hard_stop - now))
        access = self._codec.seal(
            "access",
            {
                "gid": gid,
                "k": key,
                "cl": cref,
                "aud": self._resource,
                "sc": scope,
                "jti": secrets.token_hex(8),
            },
            access_life,
        )
        refresh = self._codec.seal(
            "refresh",
            {
                "gid": gid,
                "k": key,
                "cl": cref,
                "aud": self._resource,
                "sc": scope,
                "gen": generation,
                "at": auth_time,
            },
            max(1, hard_stop - now),
        )
        return TokenSet(
            access_token=access, refresh_token=refresh, expires_in=access_life, scope=scope
        )

    def _open_for(
        self, client: Client, kind: str, token: str, name: str, short: str
    ) -> tuple[dict[str, Any], str]:
        """
        The claims of C{token} (a ``code`` or ``refresh`` token) and the
        client reference it must carry, which must be C{client}'s.

        :raises OAuthError: ``invalid_grant`` when the token does not open
            (C{name} ... is invalid or expired) or was issued to another
            client (C{short} was issued to another client).
        """
        try:
            claims = self._codec.open(kind, token)
        except InvalidToken:
            raise OAuthError("invalid_grant", f"{name} is invalid or expired") from None
        cref = client_ref(client.client_id)
        if not hmac.compare_digest(str(claims.get("cl", "")), cref):
            raise OAuthError("invalid_grant", f"{short} was issued to another client")
        return claims, cref

    async def redeem_code(
        self,
        client: Client,
        code: str | None,
        redirect_uri: str | None,
        code_verifier: str | None,
        resource: str | None,
    ) -> TokenSet:
        """
        The ``authorization_code`` grant.

        :raises OAuthError: ``invalid_grant`` for a bad, expired, foreign or
            replayed code; ``invalid_request`` for a malformed verifier.
        """
        if not code:
            raise OAuthError("invalid_request", "code is required")
        if not code_verifier:
            raise OAuthError("invalid_request", "code_verifier is required")
        if not _VERIFIER.fullmatch(code_verifier):
            raise OAuthError("invalid_request", "code_verifier is malformed")
        claims, cref = self._open_for(client, "code", code, "the authorization code", "the code")
        if redirect_uri is None or not hmac.compare_digest(
            str(claims.get("ru", "")).encode("utf-8"), redirect_uri.encode("utf-8")
        ):
            raise OAuthError(
                "invalid_grant", "redirect_uri does not match the authorization request"
            )
        challenge = claims.get("cc")
        if not isinstance(challenge, str) or not challenge:
            # OT-07 (RFC 9700 §4.8.2): a verifier for a code issued without a
            # challenge is a downgrade attempt, not a mismatch.
            raise OAuthError(
                "invalid_request",
                "code_verifier given, but the code was issued without a challenge",
            )
        if not hmac.compare_digest(challenge, pkce_s256(code_verifier)):
            raise OAuthError("invalid_grant", "code_verifier does not match the code challenge")
        if resource is not None and canonical_resource(resource, self._resource) is None:
            raise OAuthError("invalid_target", "unknown resource")
        gid, key, auth_time = claims.get("gid"), claims.get("k"), claims.get("at")
        if not isinstance(gid, str) or not isinstance(key, str) or not isinstance(auth_time, int):
            raise OAuthError("invalid_grant", "the authorization code is invalid")
        first = await self.store.activate_grant(
            gid,
            str(claims.get("jti")),
            int(claims.get("exp", 0)),
            auth_time + self._refresh_lifetime,
        )
        if not first:
            # A replayed code: whatever the first redemption produced dies.
            await self.store.revoke_grant(gid)
            log.warn("authorization code replayed: grant {grant} revoked", grant=gid)
            raise OAuthError("invalid_grant", "the authorization code was already used")
        scopes = scopes_of_claim(claims.get("sc")) & self._max_scope
        if not scopes:
            raise OAuthError("invalid_grant", "the authorization code is invalid")
        tokens = self._issue(gid, key, cref, auth_time, 0, scopes)
        return await self._with_account(tokens, gid, key)

    async def refresh(
        self, client: Client, refresh_token: str | None, resource: str | None
    ) -> TokenSet:
        """
        The ``refresh_token`` grant, with rotation: the presented token dies,
        and presenting a dead one again revokes the whole family.  The one
        exception is the grace: for `REFRESH_GRACE` seconds after a rotation
        the token just rotated answers with the same successor refresh token
        (and a new access token for the grant).
        """
        if not refresh_token:
            raise OAuthError("invalid_request", "refresh_token is required")
        claims, cref = self._open_for(
            client, "refresh", refresh_token, "the refresh token", "the refresh token"
        )
        if resource is not None and canonical_resource(resource, self._resource) is None:
            raise OAuthError("invalid_target", "unknown resource")
        gid, key, gen, auth_time = (
            claims.get("gid"),
            claims.get("k"),
            claims.get("gen"),
            claims.get("at"),
        )
        if (
            not isinstance(gid, str)
            or not isinstance(key, str)
            or type(gen) is not int
            or type(auth_time) is not int
        ):
            raise OAuthError("invalid_grant", "the refresh token is invalid")
        if auth_time + self._refresh_lifetime <= self._now():
            raise OAuthError("invalid_grant", "the login has expired; sign in again")
        try:
            raw_key = _b64d(key)
        except InvalidToken:
            raw_key = b""
        if len(raw_key) != 32:
            raise OAuthError("invalid_grant", "the refresh token is invalid")
        # A refresh keeps what the login granted; tokens from before scopes
        # (no claim, or "mail") keep all five.
        scopes = scopes_of_claim(claims.get("sc")) & self._max_scope
        if not scopes:
            raise OAuthError(
                "invalid_grant", "the refresh token allows nothing here; sign in again"
            )
        successor = self._issue(gid, key, cref, auth_time, gen + 1, scopes)
        current = await self.store.rotate_refresh(
            gid,
            gen,
            seal_successor(raw_key, gid, gen + 1, successor.refresh_token),
            REFRESH_GRACE,
        )
        if current is None:
            await self.store.revoke_grant(gid)
            log.warn("refresh token reused or grant gone: grant {grant} revoked", grant=gid)
            raise OAuthError("invalid_grant", "the refresh token is no longer valid")
        try:
            refresh_token = open_successor(raw_key, gid, gen + 1, current)
        except InvalidToken:
            raise OAuthError("invalid_grant", "the refresh token is no longer valid") from None
        if refresh_token != successor.refresh_token:
            # Within the grace: the successor another request already got,
            # and a fresh access token for the same grant.
            log.info("refresh token of grant {grant} reused within the grace period", grant=gid)
            successor = attrs.evolve(successor, refresh_token=refresh_token)
        return await self._with_account(successor, gid, raw_key)

    async def _with_account(self, tokens: TokenSet, gid: str, key: bytes | str) -> TokenSet:
        """C{tokens} with the grant's mailbox, for the audit line; issued either way."""
        email = await self._account_of(gid, key)
        return tokens if email is None else attrs.evolve(tokens, account=email)

    async def _account_of(self, gid: str, key: Any) -> str | None:
        """
        The grant's mailbox, for an audit line (one read of the grant row);
        None when the row cannot be read or opened.
        """
        try:
            record = await self.store.get_grant(gid)
            if record is None:
                return None
            raw_key = _b64d(key) if isinstance(key, str) else key
            return open_credentials(raw_key, gid, record.sealed).email
        except Exception as e:
            log.warn(
                "grant {grant}: account not known for the audit: {kind}",
                grant=gid,
                kind=type(e).__name__,
            )
            return None

    async def revoke(self, client: Client, token: str | None) -> str | None:
        """
        RFC 7009: revoke the grant behind a refresh or access token of
        C{client}.  Unknown tokens and other clients' tokens are ignored.

        :return: the revoked grant's mailbox, for the audit line (None when
            nothing was revoked or the row could not be opened).
        """
        if not token:
            return None
        cref = client_ref(client.client_id)
        for kind in ("refresh", "access"):
            try:
                claims = self._codec.open(kind, token)
            except InvalidToken:
                continue
            gid = claims.get("gid")
            if hmac.compare_digest(str(claims.get("cl", "")), cref) and isinstance(gid, str):
                account = await self._account_of(gid, claims.get("k"))
                await self.store.revoke_grant(gid)
                log.info("grant {grant} revoked by its client", grant=gid)
                return account
            return None
        return None

    async def account_for(self, access_token: str) -> MailAccount:
        """
        The mail account behind a live access token.

        Opening the JWE and the sealed row costs ~0.2 ms, paid on every
        ``/mcp`` call; so a bounded cache remembers what a token opened to.
        The grant row is still read every time, together with the client's
        deny-list entry (`IGrantStore.get_allowed_grant`: one round trip),
        so revocation and a deny-listed client reach every process at its
        next request (and a changed row is never served from the cache).

        :raises InvalidToken: for anything else.
        """
        digest = hashlib.sha256(access_token.encode("utf-8", "replace")).digest()
        hit = self._accounts.get(digest)
        if hit is not None:
            exp, gid, cref, sealed, account, key = hit
            if exp > self._codec.now():
                record = await self.store.get_allowed_grant(gid, cref)
                if record is not None and record.sealed == sealed:
                    await self._note_use(record)
                    await self._fill_account(record, account.imap, account.imap_username)
                    self._accounts.move_to_end(digest)
                    return await self._with_fresh_token(account, key)
            self._accounts.pop(digest, None)
        account, entry = await self._open_account(access_token)
        self._accounts[digest] = entry
        if len(self._accounts) > self._cache_size:
            self._accounts.popitem(last=False)
        return await self._with_fresh_token(account, entry[5])

    async def _with_fresh_token(self, account: MailAccount, key: bytes) -> MailAccount:
        """
        A provider sign-in account with an access token good for a while
        (refreshed when it expires within the margin) and its C{renew}.  A
        provider that refuses ends the grant: the account comes back
        C{ended}, so this call's tool answers "sign in again" (the next
        request finds the grant gone: HTTP 401).
        """
        tokens = account.oauth
        if tokens is None:
            return account
        if self.tokens.needs_refresh(tokens):
            try:
                creds = await self.tokens.current(account.owner, key, tokens, force=False)
            except GrantEnded as e:
                return attrs.evolve(account, ended=e.message)
            except ProviderUnavailable as e:
                # The token we have may still work; a refusal tries again.
                log.info(
                    "grant {grant}: provider token not refreshed: {why}",
                    grant=account.owner,
                    why=e.message,
                )
            else:
                account = attrs.evolve(account, oauth=creds.oauth)
        return attrs.evolve(account, renew=self._renewer(account, key))

    def _renewer(self, account: MailAccount, key: bytes) -> Callable[[], Awaitable[MailAccount]]:
        async def renew() -> MailAccount:
            """:raises GrantEnded, ProviderUnavailable, InvalidToken: see `ProviderTokenKeeper`."""
            creds = await self.tokens.current(account.owner, key, account.oauth, force=True)
            fresh = attrs.evolve(account, oauth=creds.oauth)
            return attrs.evolve(fresh, renew=self._renewer(fresh, key))

        return renew

    async def _note_use(self, record: GrantRecord) -> None:
        """Write the grant's last-used time, at most once a `TOUCH_INTERVAL`."""
        now = self._now()
        if now - max(record.last_used, self._touched.get(record.grant_id, 0)) < TOUCH_INTERVAL:
            return
        self._touched[record.grant_id] = now
        self._touched.move_to_end(record.grant_id)
        if len(self._touched) > self._cache_size:
            self._touched.popitem(last=False)
        try:
            await self.store.touch_grant(record.grant_id, now)
        except Exception as e:
            # The call goes on: the time shown on the account page is a hint.
            log.warn(
                "last-used time of grant {grant} not saved: {kind}",
                grant=record.grant_id,
                kind=type(e).__name__,
            )

    async def _fill_account(self, record: GrantRecord, server: MailServer, username: str) -> None:
        """
        Give a grant made before account indexes its index, now that a
        request has opened its credentials (one store write, once), so the
        account page lists it from now on.
        """
        if record.account:
            return
        ring = self._codec.keyring
        index = account_index(ring, ring.current_kid, server, username)
        try:
            if await self.store.set_grant_account(record.grant_id, index):
                log.info("grant {grant}: account index added", grant=record.grant_id)
        except Exception as e:
            # The call goes on: the next request tries again.
            log.warn(
                "account index of grant {grant} not saved: {kind}",
                grant=record.grant_id,
                kind=type(e).__name__,
            )

    async def _open_account(
        self, access_token: str
    ) -> tuple[MailAccount, tuple[float, str, str, bytes, MailAccount, bytes]]:
        claims = self._codec.open("access", access_token)
        if claims.get("aud") != self._resource:
            raise InvalidToken()
        gid, key = claims.get("gid"), claims.get("k")
        if not isinstance(gid, str):
            raise InvalidToken()
        raw_key = _b64d(key)
        if len(raw_key) != 32:
            raise InvalidToken()
        record = await self.store.get_allowed_grant(gid, str(claims.get("cl", "")))
        if record is None:
            raise InvalidToken()
        creds = open_credentials(raw_key, gid, record.sealed)
        await self._note_use(record)
        await self._fill_account(record, creds.imap, creds.imap_username)
        account = MailAccount(
            owner=gid,
            email=creds.email,
            full_name=creds.full_name,
            imap=creds.imap,
            imap_username=creds.imap_username,
            imap_password=creds.imap_password,
            smtp=creds.smtp,
            smtp_username=creds.smtp_username,
            smtp_password=creds.smtp_password,
            client_ref=record.client_ref,
            scopes=scopes_of_claim(claims.get("sc")) & self._max_scope,
            imap_auth=creds.imap_auth,
            provider=creds.provider,
            oauth=creds.oauth,
        )
        return account, (
            float(claims.get("exp", 0)),
            gid,
            record.client_ref,
            record.sealed,
            account,
            raw_key,
        )


class AccountGrants:
    """
    What the account page and the operator do with grants (issue 15): list
    a mailbox's grants, revoke one or all of them, deny a client for good.
    A mailbox is named by its IMAP server and username, looked up under
    every key of the ring (`account_indexes`).
    """

    def __init__(self, store: IGrantStore, ring: KeyRing) -> None:
        self._store = store
        self._ring = ring

    async def grants(self, server: MailServer, username: str) -> list[GrantRecord]:
        found: list[GrantRecord] = []
        for index in account_indexes(self._ring, server, username):
            found += await self._store.list_account_grants(index)
        return sorted(found, key=lambda r: (r.created, r.grant_id))

    async def revoke_one(self, server: MailServer, username: str, grant_id: str) -> bool:
        """Revoke C{grant_id} if it is one of this mailbox's; say whether it was."""
        for record in await self.grants(server, username):
            if hmac.compare_digest(record.grant_id.encode(), grant_id.encode("utf-8", "replace")):
                await self._store.revoke_grant(record.grant_id)
                log.info("grant {grant} revoked on the account page", grant=record.grant_id)
                return True
        return False

    async def revoke_all(self, server: MailServer, username: str) -> int:
        ended = 0
        for index in account_indexes(self._ring, server, username):
            ended += await self._store.revoke_account(index)
        log.info("{count} grants of one mailbox revoked", count=ended)
        return ended

    async def deny_client(self, client_id: str) -> int:
        """Deny-list the client id and end its grants; fire with how many."""
        return int(await self._store.deny_client(client_ref(client_id)))

    async def client_denied(self, client_id: str) -> bool:
        return bool(await self._store.client_denied(client_ref(client_id)))


def canonical_resource(value: str | None, mcp_url: str) -> str | None:
    """
    The audience for a requested RFC 8707 C{resource}: absent, the MCP URL,
    with a trailing slash, or the bare origin all mean the MCP URL.  Anything
    else is L{None} (``invalid_target``).
    """
    if value is None or value == "":
        return mcp_url
    candidate = value.rstrip("/")
    base = mcp_url[: -len("/mcp")] if mcp_url.endswith("/mcp") else mcp_url
    if candidate in (mcp_url, base):
        return mcp_url
    if candidate.lower() in (mcp_url.lower(), base.lower()):
        return mcp_url
    return None
