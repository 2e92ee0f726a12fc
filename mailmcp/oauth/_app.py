"""
The composing app: builds the shared parts and the rooms, and mounts each
room's Klein resource at the paths (and methods) it serves; everything
else under ``/.well-known/`` and ``/oauth/`` is the discovery room's
(metadata at the path-inserted locations, else a JSON 404).

A new room is a class with its own ``Klein()`` whose routes name the full
path, built in `OAuthApp.__init__` over the same `OAuthParts`, and listed
in the mount with the methods it serves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from .._audit import Audit
from .._config import Config
from ..interfaces import ILoginChecker
from ..provider._login import ProviderDirectory, ProviderLogin, http_client
from ._cimd import PINNED_DIR, ClientMetadataResolver, MetadataFetcher, load_pinned
from ._discovery import Discovery
from ._grants import AccountGrants, GrantService
from ._login import LoginRoom
from ._parts import CSRF, OAuthParts
from ._registration import ClientDirectory, Registration, open_registration
from ._static import Static
from ._throttle import LoginThrottle, ThrottlePolicy
from ._token import TokenRoom
from ._tokens import TokenCodec

_ANY = frozenset({b"*"})


class _Mount(Resource):
    """
    Dispatch on the path Klein routes on (``request.postpath``, decoded)
    and the method: a room answers only the (path, method) pairs it
    declares, so a wrong method falls through to the fallback exactly as
    it would in one Klein app.
    """

    isLeaf = True

    def __init__(
        self,
        rooms: Sequence[tuple[str, Sequence[str], IResource]],
        fallback: IResource,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._rooms = {
            path: (frozenset(m.encode("ascii") for m in methods), room)
            for path, methods, room in rooms
        }
        self._fallback = fallback

    def render(self, request: IRequest) -> bytes | int:
        path = "/" + "/".join(
            segment.decode("utf-8", "replace") for segment in (request.postpath or [])
        )
        methods, room = self._rooms.get(path, (_ANY, self._fallback))
        if methods is not _ANY and request.method not in methods:
            room = self._fallback
        result: bytes | int = room.render(request)
        return result if result is not None else NOT_DONE_YET


class _Composed:
    """What `OAuthApp.app` is: like a Klein app, it makes the resource."""

    def __init__(self, mount: _Mount) -> None:
        self._mount = mount

    def resource(self) -> IResource:
        return self._mount


class OAuthApp:
    """
    The authorization server: discovery, login page, token and revocation,
    registration, and the stylesheet, each its own room over the same
    `OAuthParts`.

    :param config: issuer, lifetimes, proxy trust.
    :param codec: opens client ids.
    :param grants: creates grants and mints tokens.
    :param imap_checker, smtp_checker: live credential checks (`ILoginChecker`).
    :param throttle: login throttling.
    :param clients: finds clients by id (default: provisioned and stored ones).
    :param resolver: DNS for ``--allow-user-servers``.
    """

    def __init__(
        self,
        config: Config,
        codec: TokenCodec,
        grants: GrantService,
        imap_checker: ILoginChecker,
        smtp_checker: ILoginChecker,
        throttle: LoginThrottle,
        clients: ClientDirectory | None = None,
        resolver: Any = None,
    ) -> None:
        self.parts = OAuthParts(
            config=config,
            codec=codec,
            grants=grants,
            imap=imap_checker,
            smtp=smtp_checker,
            throttle=throttle,
            clients=clients or ClientDirectory(config, codec, grants.store, None),
            csrf=CSRF(config),
        )
        self.discovery = Discovery(self.parts)
        self.login = LoginRoom(self.parts, resolver)
        self.token = TokenRoom(self.parts)
        self._registration = Registration(config, codec, grants.store, self.parts.client_address)
        not_post = ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
        token = self.token.app.resource()
        self.app = _Composed(
            _Mount(
                [
                    ("/oauth/authorize", ["GET", "HEAD", "POST"], self.login.app.resource()),
                    # Provider sign-in's return (issue 18): GET only, a HEAD
                    # (prefetch) must not use the sign-in up.
                    ("/oauth/provider/callback", ["GET"], self.login.app.resource()),
                    ("/oauth/token", ["POST", *not_post], token),
                    ("/oauth/revoke", ["POST", *not_post], token),
                    ("/oauth/register", ["POST"], self._registration.app.resource()),
                    ("/oauth/static/login.css", ["GET", "HEAD"], Static().app.resource()),
                ],
                fallback=self.discovery.app.resource(),
            )
        )

    # What older callers and tests reach for; the parts are the real home.

    @property
    def audit(self) -> Audit | None:
        """The audit trail (LG-06); None: none."""
        return self.parts.audit

    @audit.setter
    def audit(self, audit: Audit | None) -> None:
        self.parts.audit = audit

    @property
    def provider_login(self) -> ProviderLogin | None:
        """Provider sign-in ("Continue with …"); None: passwords only."""
        return self.parts.provider_login

    @provider_login.setter
    def provider_login(self, provider_login: ProviderLogin | None) -> None:
        self.parts.provider_login = provider_login

    @property
    def _config(self) -> Config:
        return self.parts.config

    @_config.setter
    def _config(self, config: Config) -> None:
        self.parts.config = config

    @property
    def _clients(self) -> ClientDirectory:
        return self.parts.clients

    @_clients.setter
    def _clients(self, clients: ClientDirectory) -> None:
        self.parts.clients = clients

    def resource_metadata(self) -> dict[str, Any]:
        return self.discovery.resource_metadata()

    def server_metadata(self) -> dict[str, Any]:
        return self.discovery.server_metadata()


def open_store(config: Config, reactor: Any) -> Any:
    """The `IGrantStore` named by ``--store`` (a service to start and stop)."""
    from ..store._redis import RedisGrantStore
    from ..store._sqlite import SQLiteGrantStore

    if config.store.startswith("sqlite:"):
        path = config.store[len("sqlite:") :]
        try:
            return SQLiteGrantStore(path, reactor)
        except (sqlite3.Error, OSError) as e:
            # One line and exit status 1, not a traceback.
            raise SystemExit(f"mailmcp: cannot open the grant store {path}: {e}") from None
    return RedisGrantStore(config.store, reactor, ca_file=config.store_ca_file, reactor=reactor)


def user_server_resolver(
    config: Config,
    reactor: Any,
    resolv_conf: bytes = b"/etc/resolv.conf",
    hosts_file: bytes = b"/etc/hosts",
) -> Any:
    """
    The DNS resolver that looks up user-typed mail domains
    (``--allow-user-servers``), or None when users may not type a server.

    The chain Twisted's C{createResolver} builds (hosts file, cache, the
    servers of resolv.conf), but on the daemon's C{reactor}: C{createResolver}
    takes none and its parts would reach for the global one.
    """
    if not config.allow_user_servers:
        return None
    from twisted.names import cache, client, hosts, resolve

    return resolve.ResolverChain(
        [
            hosts.Resolver(hosts_file),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(resolv_conf, reactor=reactor),
        ]
    )


def build_authorization_server(
    config: Config,
    reactor: Any,
    parent: Any,
    extra: dict[str, Any] | None = None,
    audit: Audit | None = None,
) -> tuple[Any, Any]:
    """
    Build the grant store (added to C{parent} as a service), the OAuth app and
    the access-token verifier.  Returns ``(oauth_resource, verifier)``; with
    C{extra}, puts the ``/account`` resource there under ``"account"``.
    """
    from .._tls import MailTLS
    from ..mail._mailcheck import IMAPLoginChecker, SMTPLoginChecker
    from ._verifier import GrantTokenVerifier

    store = open_store(config, reactor)
    store.setName("grant-store")
    store.setServiceParent(parent)
    codec = TokenCodec(config.keyring, reactor)
    # Provider sign-in: the ProviderClient of a grant's profile, for refreshes.
    providers = ProviderDirectory(config.provider, http_client(reactor), reactor)
    grants = GrantService(
        store,
        codec,
        config.mcp_url,
        code_lifetime=config.code_lifetime,
        access_lifetime=config.access_token_lifetime,
        refresh_lifetime=config.refresh_token_lifetime,
        max_scope=config.max_scope,
        provider_for=providers.client_for,
    )
    tls = MailTLS(config.mail_ca_file)
    identity = urlsplit(config.base_url).hostname or "localhost"
    metadata = None
    if open_registration(config):
        pinned_dirs = [PINNED_DIR]
        if config.client_metadata_dir is not None:
            pinned_dirs.append(config.client_metadata_dir)
        try:
            pinned = load_pinned(pinned_dirs)
        except ValueError as e:
            raise SystemExit(f"mailmcp: {e}") from None
        metadata = ClientMetadataResolver(
            reactor, MetadataFetcher(reactor), pinned, config.client_metadata_allow
        )
    resolver = user_server_resolver(config, reactor)
    oauth = OAuthApp(
        config,
        codec,
        grants,
        IMAPLoginChecker(reactor, tls, timeout=min(config.imap_timeout, 20.0)),
        SMTPLoginChecker(reactor, tls, timeout=min(config.smtp_timeout, 20.0), identity=identity),
        LoginThrottle(
            store,
            config.login_concurrency,
            ThrottlePolicy(
                ip_attempts=config.login_attempts_per_address,
                user_failures=config.login_failures_per_user,
                ip_failures=config.login_failures_per_address,
                global_failures=config.login_failures_global,
            ),
            clock=reactor,
        ),
        clients=ClientDirectory(config, codec, store, metadata),
        resolver=resolver,
    )
    oauth.audit = audit
    providers.clients = oauth.parts.clients
    parts = oauth.parts
    oauth.provider_login = ProviderLogin(
        codec=codec,
        base_url=config.base_url,
        default_profile=config.provider,
        grants=grants,
        imap_checker=parts.imap,
        smtp_checker=parts.smtp,
        throttle=parts.throttle,
        http=providers.http,
        clock=reactor,
        record=parts.record,
        address_of=parts.client_address,
    )
    if extra is not None:
        from ._account_page import AccountApp

        extra["account"] = AccountApp(oauth, AccountGrants(store, config.keyring)).app.resource()
    return oauth.app.resource(), GrantTokenVerifier(grants)
