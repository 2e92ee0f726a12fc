"""
``twistd mailmcp-generate``: provision an OAuth client for one mail server
configuration (or rotate the key ring), print the result and exit.

The work is done in `makeService`, before twistd would daemonize and send
standard output to /dev/null; it then exits with `SystemExit`, so no reactor,
pid file or log file is ever started for a one-shot command.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.python import usage

from ._config import check_store, prepare_state_dir
from ._options import GENERATE, TableOptions
from ._scopes import FULL, format_scope, parse_scope_list
from .oauth._clients import (
    DEFAULT_PORTS,
    DEFAULT_REDIRECT_URIS,
    MailServer,
    new_client_id,
    parse_mail_server,
    provision_short_client,
    validate_redirect_uri,
)
from .oauth._keyring import KeyRing, KeyRingError, activate_key, add_key, load_or_create_keyring
from .oauth._tokens import TokenCodec
from .provider._options import parse_provider, profile_claims

_DEFAULT_PORTS = DEFAULT_PORTS


class _WallClock(Clock):
    """A clock reading real time, so no reactor is needed to seal a client id."""

    def seconds(self) -> float:
        import time

        return time.time()


class Options(TableOptions):
    """Options of ``twistd mailmcp-generate`` (declared in L{mailmcp._options})."""

    synopsis = "--imap-host HOST --smtp-host HOST [options]"
    longdesc = (
        "Print a client_id and client_secret to paste into Claude's custom "
        "connector (Advanced settings), for one IMAP/SMTP server pair. "
        "With --add-key (optionally --inactive) or --activate-key KID, rotate the "
        "key ring instead."
    )
    command = GENERATE

    def _server(self, kind: str) -> MailServer:
        try:
            return parse_mail_server(
                kind, self[f"{kind}-host"], self[f"{kind}-port"], self[f"{kind}-security"]
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _revocation(self) -> None:
        """--revoke-account EMAIL (with the IMAP server) or --revoke-client CLIENT_ID."""
        if self["revoke-account"] is not None and self["revoke-client"] is not None:
            raise usage.UsageError("--revoke-account and --revoke-client are separate steps")
        if self["revoke-account"] is not None:
            if not self["revoke-account"].strip():
                raise usage.UsageError("--revoke-account needs the mailbox's IMAP username")
            self["imap"] = self._server("imap")
        elif not self["revoke-client"].strip():
            raise usage.UsageError("--revoke-client needs a client id")

    def postOptions(self) -> None:
        self.update(self.resolved())
        self["state-dir"] = prepare_state_dir(Path(self["state-dir"]))
        self["key-file"] = Path(self["key-file"]) if self["key-file"] else None
        self["store"] = self["store"] or f"sqlite:{self['state-dir'] / 'mailmcp.sqlite3'}"
        check_store(self["store"])
        ca = self["store-ca-file"]
        self["store-ca-file"] = Path(ca) if ca else None
        if self["inactive"] and not self["add-key"]:
            raise usage.UsageError("--inactive only goes with --add-key")
        if self["add-key"] and self["activate-key"]:
            raise usage.UsageError("--add-key and --activate-key are separate steps")
        if self["add-key"] or self["activate-key"]:
            return
        if self["revoke-account"] is not None or self["revoke-client"] is not None:
            self._revocation()
            return
        self["imap"] = self._server("imap")
        self["smtp"] = attrs.evolve(self._server("smtp"), files_sent=bool(self["smtp-files-sent"]))
        try:
            self["scopes"] = FULL if self["scope"] is None else parse_scope_list(self["scope"])
        except ValueError as e:
            raise usage.UsageError(f"--scope: {e}") from None
        self["provider"] = parse_provider(self, _warn)
        uris = self["redirect-uri"] or list(DEFAULT_REDIRECT_URIS)
        try:
            self["redirect-uri"] = [validate_redirect_uri(u) for u in uris]
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _warn(message: str) -> None:
    sys.stderr.write(f"mailmcp-generate: warning: {message}\n")
    sys.stderr.flush()


def generate(options: Options, out: TextIO, environ: Mapping[str, str] | None = None) -> None:
    """Do what the options ask and write the result to C{out}."""
    state_dir: Path = options["state-dir"]
    key_file: Path | None = options["key-file"]
    if options["add-key"] or options["activate-key"]:
        _rotate(options, state_dir, key_file, out)
        return
    ring: KeyRing = load_or_create_keyring(state_dir, key_file, environ)
    codec = TokenCodec(ring, _WallClock())
    compact, sealed, secret = provision_short_client(
        codec,
        options["imap"],
        options["smtp"],
        options["redirect-uri"],
        public=bool(options["public"]),
        name=options["name"],
        scopes=options["scopes"],
        provider=profile_claims(options["provider"]) if options.get("provider") else None,
    )
    client_id = compact
    if client_id is None:
        # Too much to fit in a compact id: file it where the daemon reads.
        client_id = new_client_id()
        _file_client(options["store"], options["store-ca-file"], client_id, sealed)
    imap, smtp = options["imap"], options["smtp"]
    provider = options.get("provider")
    if options["json"]:
        document: dict[str, Any] = {
            "client_id": client_id,
            "client_secret": secret,
            "token_endpoint_auth_method": "none" if secret is None else "client_secret_post",
            "imap": imap.to_claims(),
            "smtp": smtp.to_claims(),
            "redirect_uris": options["redirect-uri"],
            "scope": format_scope(options["scopes"]),
        }
        if provider is not None:
            document["imap_auth"] = provider.imap_auth
            document["oauth_provider"] = provider.name
        out.write(json.dumps(document, indent=2) + "\n")
        return
    out.write("mailmcp client provisioned\n\n")
    out.write(f"  IMAP:   {imap.host}:{imap.port} ({imap.security})\n")
    out.write(f"  SMTP:   {smtp.host}:{smtp.port} ({smtp.security})\n")
    if smtp.files_sent:
        out.write("          files sent mail itself: no copy is added to Sent\n")
    if provider is not None:
        out.write(f"  Sign-in: Continue with {provider.label} ({provider.imap_auth})\n")
    out.write(f"  Scopes: {format_scope(options['scopes'])}\n")
    out.write("  Redirect URIs:\n")
    for uri in options["redirect-uri"]:
        out.write(f"    {uri}\n")
    out.write("\nIn Claude: Settings > Connectors > Add custom connector, enter the\n")
    out.write("server URL <base-url>/mcp, open Advanced settings and paste:\n\n")
    out.write(f"  OAuth Client ID:     {client_id}\n")
    if secret is None:
        out.write("  OAuth Client Secret: (none: public client, PKCE only)\n")
    else:
        out.write(f"  OAuth Client Secret: {secret}\n")
        out.write("\nThe secret is shown once and stored nowhere; keep it safe.\n")


def _file_client(store: str, ca_file: Path | None, client_id: str, sealed: str) -> None:
    """
    Write the short id's record where the daemon reads it: SQLite directly
    (the daemon may have the file open: WAL and a busy timeout make that
    safe), Redis through the daemon's own store on a briefly run reactor.
    """
    if store.startswith("sqlite:"):
        import sqlite3
        import time

        from .store._sqlite import _create_private, write_client

        path = store[len("sqlite:") :]
        try:
            _create_private(path)
            db = sqlite3.connect(path, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=5000")
                write_client(db, client_id, sealed, int(time.time()))
            finally:
                db.close()
        except (sqlite3.Error, OSError) as e:
            raise KeyRingError(f"cannot write the client to the store {path}: {e}") from None
        return
    _file_client_redis(store, ca_file, client_id, sealed)


def _file_client_redis(store: str, ca_file: Path | None, client_id: str, sealed: str) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred

    from .store._redis import RedisGrantStore

    reactor: Any = _reactor
    redis = RedisGrantStore(store, reactor, ca_file=ca_file)
    failures: list[str] = []

    async def write() -> None:
        redis.startService()
        try:
            await redis.put_client(client_id, sealed)
        except Exception as e:
            failures.append(str(e) or type(e).__name__)
        finally:
            stopped = redis.stopService()
            if stopped is not None:
                await stopped

    done = Deferred.fromCoroutine(write())
    done.addBoth(lambda _: reactor.stop())
    reactor.run(installSignalHandlers=False)
    if failures or not done.called:
        raise KeyRingError(f"cannot write the client to the store {store}: {failures[:1]}")


def _rotate(options: Options, state_dir: Path, key_file: Path | None, out: TextIO) -> None:
    """--add-key [--inactive] or --activate-key KID: change the key ring file, say what next."""
    if options["activate-key"]:
        ring = activate_key(state_dir, options["activate-key"], key_file)
        message = (
            f"Key {ring.current_kid} is now the encrypting key.\n"
            "Restart every mailmcp process sharing this key ring (each one can\n"
            "already open what the others seal with it).\n"
        )
    elif options["inactive"]:
        ring = add_key(state_dir, key_file, active=False)
        added = ring.kids[-1]
        message = (
            f"Added key {added} (inactive: it decrypts, {ring.current_kid} still encrypts).\n"
            "Copy this key ring to every mailmcp process and restart each one; then run\n"
            f"  twistd mailmcp-generate --activate-key {added}\n"
            "and again copy and restart each one.\n"
        )
    else:
        ring = add_key(state_dir, key_file)
        message = (
            f"Added key {ring.current_kid}; the key ring now holds {len(ring.kids)} keys.\n"
            "Restart (or reload) every mailmcp process sharing this key ring.\n"
        )
    if options["json"]:
        document = {
            "current_kid": ring.current_kid,
            "kids": ring.kids,
            "inactive_kids": ring.inactive_kids,
        }
        out.write(json.dumps(document) + "\n")
    else:
        out.write(message)


def _open_store(options: Options, reactor: Any) -> Any:
    from .store._redis import RedisGrantStore
    from .store._sqlite import SQLiteGrantStore

    store: str = options["store"]
    if store.startswith("sqlite:"):
        path = Path(store[len("sqlite:") :])
        if not path.exists():
            raise RevocationError(f"no grant store at {path} (is --store or --state-dir right?)")
        return SQLiteGrantStore(path, reactor)
    # One connection: a pool's spare connections, still selecting their
    # database when the command is done, would die noisily at disconnect.
    redis = RedisGrantStore(
        store, reactor, poolsize=1, ca_file=options["store-ca-file"], reactor=reactor
    )
    redis.connect()
    return redis


class RevocationError(Exception):
    """A --revoke-* step could not run; the message is one line for the operator."""


async def revoke(
    options: Options, out: TextIO, reactor: Any, environ: Mapping[str, str] | None = None
) -> None:
    """
    --revoke-account or --revoke-client against the daemon's store: every
    process using the store refuses the ended grants at their next request.
    """
    from .oauth._grants import AccountGrants, client_ref
    from .oauth._keyring import KEYRING_FILENAME

    environ = os.environ if environ is None else environ
    state_dir: Path = options["state-dir"]
    key_file: Path | None = options["key-file"]
    if (
        "MAILMCP_KEYS" not in environ
        and key_file is None
        and not (state_dir / KEYRING_FILENAME).exists()
    ):
        raise RevocationError(f"no key ring in {state_dir} (is --state-dir the daemon's?)")
    ring = load_or_create_keyring(state_dir, key_file, environ)
    store = _open_store(options, reactor)
    accounts = AccountGrants(store, ring)
    try:
        if options["revoke-account"] is not None:
            imap: MailServer = options["imap"]
            username = options["revoke-account"]
            ended = await accounts.revoke_all(imap, username)
            document: dict[str, Any] = {
                "revoked_account": username,
                "imap": f"{imap.host}:{imap.port}",
                "grants_ended": ended,
            }
            text = f"Ended {ended} grant(s) of {username} on {imap.host}:{imap.port}.\n"
        else:
            client_id = options["revoke-client"].strip()
            ended = await accounts.deny_client(client_id)
            document = {"revoked_client": client_ref(client_id), "grants_ended": ended}
            text = f"Client {client_ref(client_id)} is revoked for good; ended {ended} grant(s).\n"
    except Exception as e:
        raise RevocationError(f"the grant store failed: {type(e).__name__}") from None
    finally:
        closing = getattr(store, "disconnect", None) or store.close
        done = closing()
        if done is not None:
            await done
    out.write(json.dumps(document) + "\n" if options["json"] else text)


def _run_revocation(options: Options) -> None:
    """Run `revoke` on the reactor (Redis needs one), then exit."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    async def main(reactor: Any) -> None:
        try:
            await revoke(options, sys.stdout, reactor)
        except (RevocationError, KeyRingError) as e:
            print(f"mailmcp-generate: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        sys.stdout.flush()

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def makeService(options: Options) -> IService:
    if options["revoke-account"] is not None or options["revoke-client"] is not None:
        _run_revocation(options)
    try:
        generate(options, sys.stdout)
    except KeyRingError as e:
        print(f"mailmcp-generate: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    sys.stdout.flush()
    raise SystemExit(0)
