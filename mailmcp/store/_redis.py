"""
The shared grant store: Redis, for several processes or hosts
(``--store redis://host:port/db``).

Every check-and-set runs as one Lua script, so two processes racing on the
same code or refresh token cannot both win.  Expiry is enforced against the
daemon's clock (the ``expires`` field) and Redis TTLs only collect garbage.

``rediss://`` verifies the server: its certificate chain against the system
trust store (or only the CAs of ``--store-ca-file``) and its name against the
URL's host.  txredisapi's own ``ssl_context_factory=True`` verifies neither,
so it is never used.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import txredisapi
from service_identity import VerificationError
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as TCPTimedOutError
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._tls import load_pem_certificates
from ..interfaces import IClientStore, IGrantStore, ISendIntentStore, ISendTokenStore
from ..oauth._grants import USED_CODE_MARGIN, GrantRecord

log = Logger()

_ACTIVATE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local expires = redis.call('HGET', KEYS[2], 'expires')
if not expires or tonumber(expires) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], 'expires', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# A grant's fields as one JSON string: txredisapi reads each string of a
# multi-string reply in its own reactor turn (pausing and resuming the
# connection in between), ~20 turns for a grant's HGETALL; one string is
# read at once (~0.1 ms of CPU instead of ~0.4 ms).  Values stay strings
# (no number conversion).
_GRANT = """
return cjson.encode(redis.call('HGETALL', KEYS[1]))
"""

# The read of every /mcp request, in one round trip: nothing when the
# client is deny-listed (KEYS[2]), else the grant's fields as `_GRANT`.
_ALLOWED_GRANT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
return cjson.encode(redis.call('HGETALL', KEYS[1]))
"""

_ROTATE = """
local f = redis.call('HMGET', KEYS[1], 'gen', 'expires', 'rotated', 'succ')
if not f[1] or not f[2] then return false end
local now = tonumber(ARGV[2])
if tonumber(f[2]) <= now then return false end
local gen = tonumber(f[1])
local asked = tonumber(ARGV[1])
if gen == asked then
  redis.call('HSET', KEYS[1], 'gen', gen + 1, 'rotated', ARGV[2], 'succ', ARGV[3])
  return ARGV[3]
end
if gen == asked + 1 and f[3] and f[4] and now < tonumber(f[3]) + tonumber(ARGV[4]) then
  return f[4]
end
return false
"""

#: Compare-and-swap of a grant's sealed credentials: KEYS[1] the grant;
#: ARGV the old and new sealed value (base64) and now.
_REPLACE_SEALED = """
local f = redis.call('HMGET', KEYS[1], 'sealed', 'expires')
if not f[1] or not f[2] or tonumber(f[2]) <= tonumber(ARGV[3]) then return 0 end
if f[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sealed', ARGV[2])
return 1
"""

_HIT = """
local now = tonumber(ARGV[1])
local untl = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if untl <= now then
  redis.call('HSET', KEYS[1], 'count', 1, 'until', tostring(now + tonumber(ARGV[2])))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return redis.call('HINCRBY', KEYS[1], 'count', 1)
"""


# KEYS: the counters; ARGV: now, then limit and window for each key.  All or
# nothing: one script is atomic, so racing processes cannot overshoot.
_RESERVE = """
local now = tonumber(ARGV[1])
local fresh = {}
for i, key in ipairs(KEYS) do
  local count = 0
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl > now then count = tonumber(redis.call('HGET', key, 'count') or '0') end
  if count >= tonumber(ARGV[2 * i]) then return i end
  fresh[i] = untl <= now
end
for i, key in ipairs(KEYS) do
  if fresh[i] then
    local window = tonumber(ARGV[2 * i + 1])
    redis.call('HSET', key, 'count', 1, 'until', tostring(now + window))
    redis.call('EXPIRE', key, window)
  else
    redis.call('HINCRBY', key, 'count', 1)
  end
end
return 0
"""

_RELEASE = """
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl > now and tonumber(redis.call('HGET', key, 'count') or '0') > 0 then
    redis.call('HINCRBY', key, 'count', -1)
  end
end
return 0
"""

#: Token bucket (send limit): KEYS[1] the bucket; ARGV burst, refill rate per
#: second, now, tokens wanted, TTL.  Returns "0" when taken, else the seconds
#: to wait (as a string: Lua numbers would be truncated to integers).
_TAKE_SEND_TOKENS = """
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, stamp = burst, now
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
if saved[1] and saved[2] then
  stamp = math.max(now, tonumber(saved[2]))
  tokens = math.min(burst, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) * rate)
end
if tokens < want then return tostring((want - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - want), 'stamp', tostring(stamp))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return '0'
"""

#: Send intent (SM-13): KEYS[1] the intent; ARGV account, owner, now, lease
#: until, keep seconds, kept until (the daemon's clock decides; the TTL only
#: collects garbage).  Claims it (like SET NX EX, but also over a
#: ``failed`` record) or says who holds it; one script, so racing daemons
#: see one winner.
_BEGIN_SEND = """
local f = redis.call('HMGET', KEYS[1], 'state', 'lease', 'expires')
local now = tonumber(ARGV[3])
if f[1] and f[1] ~= 'failed' and tonumber(f[3]) > now then
  if f[1] == 'sending' and tonumber(f[2]) <= now then return 'unknown' end
  return f[1]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'sending', 'account', ARGV[1], 'owner', ARGV[2],
           'lease', ARGV[4], 'expires', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 'claimed'
"""

#: KEYS[1] the intent; ARGV owner, state, keep seconds, expires.  Only the
#: owner ends it.
_END_SEND = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'expires', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


# -- account page and operator revocation (issue 15) --------------------------

#: Delete every grant listed in the set KEYS[1] (members are grant ids;
#: ARGV[1] the grant key prefix, ARGV[2] now), then the set; with KEYS[2],
#: first mark that key (the deny-list entry).  Returns the count of grants
#: that were live.  One script, so a grant added meanwhile is either deleted
#: or added after (and then found by the deny-list or the next revocation).
_REVOKE_SET = """
if KEYS[2] then redis.call('SET', KEYS[2], '1') end
local live = 0
for _, gid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. gid
  local expires = redis.call('HGET', key, 'expires')
  if expires and tonumber(expires) > tonumber(ARGV[2]) then live = live + 1 end
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return live
"""

#: Let the index sets KEYS live at least ARGV[1] seconds (never shorter).
_EXTEND = """
for _, key in ipairs(KEYS) do
  local ttl = redis.call('TTL', key)
  if ttl ~= -2 and ttl < tonumber(ARGV[1]) then redis.call('EXPIRE', key, ARGV[1]) end
end
return 0
"""


_TOUCH = """
local last = redis.call('HGET', KEYS[1], 'last_used')
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(last or '0') < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'last_used', ARGV[1])
end
return 0
"""


#: Set a grant's empty account index and list it under that index, whose set
#: lives at least as long as the grant (ARGV[3]); an existing index is kept.
_SET_ACCOUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], 'account')
if current and current ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'account', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
local ttl = redis.call('TTL', KEYS[2])
if ttl ~= -1 and ttl < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 1
"""


class RedisUnavailable(Exception):
    """The store is not connected (not started, or stopped)."""


def parse_redis_url(url: str) -> dict[str, Any]:
    """``redis://[:password@]host[:port][/db]`` or ``unix:///path?db=N``."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return {"path": parts.path, "dbid": int(db), "password": password}
    db_text = parts.path.lstrip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "dbid": int(db_text) if db_text else 0,
        "password": password,
        "tls": parts.scheme == "rediss",
    }


def redis_tls_options(host: str, ca_file: Path | None = None) -> Any:
    """
    Client TLS options for a Redis server at C{host} that verify its
    certificate: against the system trust store, or only against the CAs in
    C{ca_file}; and its name (or IP address) against C{host}.
    """
    trust = (
        ssl.trustRootFromCertificates(load_pem_certificates(ca_file))
        if ca_file is not None
        else ssl.platformTrust()
    )
    return ssl.optionsForClientTLS(host, trustRoot=trust)


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Completes a TLS handshake, reports it to C{done}, and hangs up."""

    def __init__(self, done: Deferred[bool]) -> None:
        self._done = done

    def handshakeCompleted(self) -> None:
        if not self._done.called:
            self._done.callback(True)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.errback(reason)


def _tls_reason(reason: Failure) -> str:
    """A short operator-facing reason for a failed handshake."""
    if reason.check(VerificationError):
        return "the certificate does not name this host"
    text = reason.getErrorMessage()
    if "certificate verify failed" in text:
        return "the certificate is not signed by a trusted CA"
    return text[:200]


@implementer(IGrantStore, ISendTokenStore, ISendIntentStore, IClientStore)
class RedisGrantStore(Service):
    """
    `IGrantStore` on Redis.  The connection pool is opened in
    `startService` and closed in `stopService`.

    :param ca_file: for ``rediss://``, the PEM CAs to trust instead of the
        system trust store.
    """

    def __init__(
        self,
        url: str,
        clock: IReactorTime,
        prefix: str = "mailmcp:",
        poolsize: int = 4,
        timeout: float = 5.0,
        ca_file: Path | None = None,
        reactor: Any = None,
    ) -> None:
        self._url = url
        self._ca_file = ca_file
        self._reactor = reactor
        self._clock = clock
        self._timeout = timeout
        self._prefix = prefix
        self._poolsize = poolsize
        self._redis: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.connect()
        if self._reactor is not None and parse_redis_url(self._url).get("tls"):
            self.check_tls()

    def check_tls(self) -> Deferred[bool]:
        """
        One TLS handshake with the server, no Redis command, to say clearly
        in the log (at start) whether the server's certificate verifies: the
        pool's own failures only read "Lost connection".  Fires with the
        outcome; never fails.
        """
        options = parse_redis_url(self._url)
        where = f"{options['host']}:{options['port']}"
        endpoint = wrapClientTLS(
            redis_tls_options(options["host"], self._ca_file),
            HostnameEndpoint(self._reactor, options["host"], options["port"], timeout=5),
        )
        done: Deferred[bool] = Deferred()

        def failed(reason: Failure) -> bool:
            if reason.check(ConnectError, DNSLookupError, TCPTimedOutError):
                # Not a verdict on the certificate: Redis is not up (yet).
                log.warn(
                    "grant store {where}: not reachable at start, TLS not checked: {why}",
                    where=where,
                    why=reason.getErrorMessage()[:200],
                )
                return False
            log.error(
                "grant store {where}: TLS refused, nothing sent: {why} "
                "(trusting {trust}; check --store-ca-file and the host name in --store)",
                where=where,
                why=_tls_reason(reason),
                trust=self._ca_file or "the system CAs",
            )
            return False

        def verified(_: object) -> bool:
            log.info("grant store {where}: TLS certificate verified", where=where)
            return True

        done.addCallbacks(verified, failed)
        connected = endpoint.connect(Factory.forProtocol(lambda: _Handshake(done)))
        connected.addErrback(lambda f: None if done.called else done.errback(f))
        return done

    def connect(self) -> None:
        options = parse_redis_url(self._url)
        common = dict(
            dbid=options["dbid"],
            poolsize=self._poolsize,
            password=options["password"],
            connectTimeout=5,
            replyTimeout=5,
        )
        if "path" in options:
            self._redis = txredisapi.lazyUnixConnectionPool(options["path"], **common)
        else:
            tls = redis_tls_options(options["host"], self._ca_file) if options["tls"] else False
            self._redis = txredisapi.lazyConnectionPool(
                options["host"], options["port"], ssl_context_factory=tls, **common
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.disconnect()

    def disconnect(self) -> Deferred[None] | None:
        redis, self._redis = self._redis, None
        if redis is None:
            return None
        d: Deferred[None] = redis.disconnect()
        return d

    def _now(self) -> float:
        return self._clock.seconds()

    def _deadline(self, coro: Any) -> Deferred[Any]:
        """
        Every operation ends within the timeout: a lazy txredisapi pool
        queues commands while Redis is down, and a login must not hang.
        """
        if self._redis is None:
            coro.close()
            return fail(RedisUnavailable())
        d: Deferred[Any] = Deferred.fromCoroutine(coro)
        d.addTimeout(self._timeout, self._clock)
        return d

    def _ttl(self, expires: float) -> int:
        return max(1, int(expires - self._now()) + 1)

    def _grant_key(self, grant_id: str) -> str:
        return f"{self._prefix}grant:{grant_id}"

    async def _create(self, record: GrantRecord) -> None:
        key = self._grant_key(record.grant_id)
        await self._redis.execute_command(
            "HSET",
            key,
            "client_ref",
            record.client_ref,
            "sealed",
            base64.b64encode(record.sealed).decode("ascii"),
            "created",
            str(record.created),
            "expires",
            str(record.expires),
            "gen",
            str(record.generation),
            "account",
            record.account,
            "client_name",
            record.client_name,
            "last_used",
            str(record.last_used),
            "scope",
            record.scope,
        )
        await self._redis.execute_command("EXPIRE", key, self._ttl(record.expires))
        await self._index(record)

    def create_grant(self, record: GrantRecord) -> Deferred[None]:
        return self._deadline(self._create(record))

    async def _get(self, grant_id: str) -> GrantRecord | None:
        reply = await self._redis.eval(_GRANT, [self._grant_key(grant_id)], [])
        return self._record(grant_id, reply)

    def _record(self, grant_id: str, reply: Any) -> GrantRecord | None:
        """The live grant from `_GRANT`'s reply, None when absent or expired."""
        fields = orjson.loads(reply) if reply else None
        if not fields or not isinstance(fields, list):  # cjson spells no fields "{}"
            return None
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
        expires = int(fields["expires"])
        if expires <= self._now():
            return None
        return GrantRecord(
            grant_id=grant_id,
            client_ref=str(fields["client_ref"]),
            sealed=base64.b64decode(str(fields["sealed"])),
            created=int(fields["created"]),
            expires=expires,
            generation=int(fields["gen"]),
            account=str(fields.get("account", "")),
            client_name=str(fields.get("client_name", "")),
            last_used=int(fields.get("last_used", 0)),
            scope=str(fields.get("scope", "")),
        )

    def get_grant(self, grant_id: str) -> Deferred[GrantRecord | None]:
        return self._deadline(self._get(grant_id))

    async def _get_allowed(self, grant_id: str, client_ref: str) -> GrantRecord | None:
        reply = await self._redis.eval(
            _ALLOWED_GRANT,
            [self._grant_key(grant_id), f"{self._prefix}denied:{client_ref}"],
            [],
        )
        record = self._record(grant_id, reply)
        return record if record is not None and record.client_ref == client_ref else None

    def get_allowed_grant(self, grant_id: str, client_ref: str) -> Deferred[GrantRecord | None]:
        """`IGrantStore.get_allowed_grant`: one Lua script, one round trip."""
        return self._deadline(self._get_allowed(grant_id, client_ref))

    async def _activate(self, grant_id: str, code_id: str, code_expires: int, expires: int) -> bool:
        result = await self._redis.eval(
            _ACTIVATE,
            [f"{self._prefix}code:{code_id}", self._grant_key(grant_id)],
            [
                self._ttl(code_expires + USED_CODE_MARGIN),
                str(expires),
                str(self._now()),
                self._ttl(expires),
            ],
        )
        return int(result) == 1

    def activate_grant(
        self, grant_id: str, code_id: str, code_expires: int, expires: int
    ) -> Deferred[bool]:
        return self._deadline(self._activated(grant_id, code_id, code_expires, expires))

    async def _activated(
        self, grant_id: str, code_id: str, code_expires: int, expires: int
    ) -> bool:
        first = await self._activate(grant_id, code_id, code_expires, expires)
        if first:
            await self._extend_index(grant_id, self._ttl(expires))
        return first

    async def _rotate(
        self, grant_id: str, generation: int, successor: bytes, grace: int
    ) -> bytes | None:
        result = await self._redis.eval(
            _ROTATE,
            [self._grant_key(grant_id)],
            [
                str(generation),
                repr(self._now()),
                base64.b64encode(successor).decode("ascii"),
                str(int(grace)),
            ],
        )
        if not result:
            return None
        return base64.b64decode(str(result))

    def rotate_refresh(
        self, grant_id: str, generation: int, successor: bytes, grace: int
    ) -> Deferred[bytes | None]:
        return self._deadline(self._rotate(grant_id, generation, successor, grace))

    async def _replace_sealed(self, grant_id: str, old: bytes, new: bytes) -> bool:
        result = await self._redis.eval(
            _REPLACE_SEALED,
            [self._grant_key(grant_id)],
            [
                base64.b64encode(old).decode("ascii"),
                base64.b64encode(new).decode("ascii"),
                repr(self._now()),
            ],
        )
        return int(result) == 1

    def replace_sealed(self, grant_id: str, old: bytes, new: bytes) -> Deferred[bool]:
        return self._deadline(self._replace_sealed(grant_id, old, new))

    async def _revoke(self, grant_id: str) -> None:
        await self._redis.execute_command("DEL", self._grant_key(grant_id))

    def revoke_grant(self, grant_id: str) -> Deferred[None]:
        return self._deadline(self._revoke(grant_id))

    async def _hit(self, key: str, window: int) -> int:
        result = await self._redis.eval(
            _HIT, [f"{self._prefix}count:{key}"], [str(self._now()), int(window)]
        )
        return int(result)

    def hit(self, key: str, window: int) -> Deferred[int]:
        return self._deadline(self._hit(key, window))

    async def _count(self, key: str) -> int:
        fields = await self._redis.execute_command(
            "HMGET", f"{self._prefix}count:{key}", "count", "until"
        )
        count, until = fields
        if count is None or until is None or float(until) <= self._now():
            return 0
        return int(count)

    def count(self, key: str) -> Deferred[int]:
        return self._deadline(self._count(key))

    async def _reserve(self, budgets: Sequence[tuple[str, int, int]]) -> str | None:
        args: list[str | int] = [str(self._now())]
        for _, limit, window in budgets:
            args += [int(limit), int(window)]
        keys = [f"{self._prefix}count:{key}" for key, _, _ in budgets]
        full = int(await self._redis.eval(_RESERVE, keys, args))
        return budgets[full - 1][0] if full else None

    def reserve(self, budgets: Sequence[tuple[str, int, int]]) -> Deferred[str | None]:
        return self._deadline(self._reserve(budgets))

    async def _release(self, keys: Sequence[str]) -> None:
        if keys:
            await self._redis.eval(
                _RELEASE, [f"{self._prefix}count:{key}" for key in keys], [str(self._now())]
            )

    def release(self, keys: Sequence[str]) -> Deferred[None]:
        return self._deadline(self._release(keys))

    # -- short client ids (IClientStore) --

    async def _put_client(self, client_id: str, sealed: str) -> None:
        created = await self._redis.execute_command(
            "SET", f"{self._prefix}client:{client_id}", sealed, "NX"
        )
        if not created:
            raise KeyError("client id already taken")

    def put_client(self, client_id: str, sealed: str) -> Deferred[None]:
        return self._deadline(self._put_client(client_id, sealed))

    async def _get_client(self, client_id: str) -> str | None:
        value = await self._redis.execute_command("GET", f"{self._prefix}client:{client_id}")
        return None if value is None else str(value)

    def get_client(self, client_id: str) -> Deferred[str | None]:
        return self._deadline(self._get_client(client_id))

    # -- send limit (SM-12): recipients' token buckets shared by every daemon --

    async def _take_send_tokens(self, key: str, count: int, burst: int, per_hour: float) -> float:
        rate = per_hour / 3600.0
        # A bucket untouched this long has refilled: it may as well vanish.
        ttl = math.ceil(burst / rate) + 1
        result = await self._redis.eval(
            _TAKE_SEND_TOKENS,
            [f"{self._prefix}send:{key}"],
            [str(burst), repr(rate), repr(self._now()), str(count), str(ttl)],
        )
        return float(result)

    def take_send_tokens(
        self, key: str, count: int, burst: int, per_hour: float
    ) -> Deferred[float]:
        """`ISendTokenStore.take_send_tokens`: one Lua script, so racing daemons share one bucket."""
        return self._deadline(self._take_send_tokens(key, count, burst, per_hour))

    # -- account page and operator revocation (issue 15) -------------------
    #
    # Grants are found by mailbox and by client through two sets of grant
    # ids, ``acct:<account index>`` and ``cgrants:<client ref>``, which live
    # at least as long as the longest grant they list; dead members are
    # dropped when a listing meets them.

    def _account_key(self, account: str) -> str:
        return f"{self._prefix}acct:{account}"

    def _client_key(self, client_ref: str) -> str:
        return f"{self._prefix}cgrants:{client_ref}"

    async def _index(self, record: GrantRecord) -> None:
        keys = [self._client_key(record.client_ref)]
        if record.account:
            keys.append(self._account_key(record.account))
        for key in keys:
            await self._redis.execute_command("SADD", key, record.grant_id)
        await self._redis.eval(_EXTEND, keys, [self._ttl(record.expires)])

    async def _extend_index(self, grant_id: str, ttl: int) -> None:
        account, cref = await self._redis.execute_command(
            "HMGET", self._grant_key(grant_id), "account", "client_ref"
        )
        keys = [self._client_key(str(cref))] if cref else []
        if account:
            keys.append(self._account_key(str(account)))
        if keys:
            await self._redis.eval(_EXTEND, keys, [ttl])

    async def _list_account(self, account: str) -> list[GrantRecord]:
        key = self._account_key(account)
        found: list[GrantRecord] = []
        for gid in await self._redis.execute_command("SMEMBERS", key) or []:
            record = await self._get(str(gid))
            if record is None:
                await self._redis.execute_command("SREM", key, gid)
            elif record.account == account:
                found.append(record)
        return sorted(found, key=lambda r: (r.created, r.grant_id))

    def list_account_grants(self, account: str) -> Deferred[list[GrantRecord]]:
        return self._deadline(self._list_account(account))

    async def _revoke_set(self, key: str, mark: str | None = None) -> int:
        keys = [key] if mark is None else [key, mark]
        result = await self._redis.eval(_REVOKE_SET, keys, [self._grant_key(""), str(self._now())])
        return int(result)

    def revoke_account(self, account: str) -> Deferred[int]:
        return self._deadline(self._revoke_set(self._account_key(account)))

    async def _touch(self, grant_id: str, when: int) -> None:
        # Only an existing grant (HSET alone would create a stub of a revoked one).
        await self._redis.eval(_TOUCH, [self._grant_key(grant_id)], [str(when)])

    def touch_grant(self, grant_id: str, when: int) -> Deferred[None]:
        return self._deadline(self._touch(grant_id, when))

    async def _set_account(self, grant_id: str, account: str) -> bool:
        record = await self._get(grant_id)
        if record is None or record.account:
            return False
        done = await self._redis.eval(
            _SET_ACCOUNT,
            [self._grant_key(grant_id), self._account_key(account)],
            [account, grant_id, str(self._ttl(record.expires))],
        )
        return bool(done)

    def set_grant_account(self, grant_id: str, account: str) -> Deferred[bool]:
        return self._deadline(self._set_account(grant_id, account))

    def deny_client(self, client_ref: str) -> Deferred[int]:
        return self._deadline(
            self._revoke_set(self._client_key(client_ref), f"{self._prefix}denied:{client_ref}")
        )

    async def _denied(self, client_ref: str) -> bool:
        return bool(
            await self._redis.execute_command("EXISTS", f"{self._prefix}denied:{client_ref}")
        )

    def client_denied(self, client_ref: str) -> Deferred[bool]:
        return self._deadline(self._denied(client_ref))

    # -- send intents (SM-13, SM-14): at most once for every daemon on this Redis --

    async def _begin_send(self, key: str, account: str, owner: str, lease: float, keep: int) -> str:
        now = self._now()
        result = await self._redis.eval(
            _BEGIN_SEND,
            [f"{self._prefix}intent:{key}"],
            [account, owner, repr(now), repr(now + lease), str(keep), repr(now + keep)],
        )
        return result.decode("ascii") if isinstance(result, bytes) else str(result)

    def begin_send(
        self, key: str, account: str, owner: str, lease: float, keep: int
    ) -> Deferred[str]:
        """`ISendIntentStore.begin_send`: one Lua script."""
        return self._deadline(self._begin_send(key, account, owner, lease, keep))

    async def _end_send(self, key: str, owner: str, state: str, keep: int) -> None:
        await self._redis.eval(
            _END_SEND,
            [f"{self._prefix}intent:{key}"],
            [owner, state, str(keep), repr(self._now() + keep)],
        )

    def end_send(self, key: str, owner: str, state: str, keep: int) -> Deferred[None]:
        """`ISendIntentStore.end_send`."""
        return self._deadline(self._end_send(key, owner, state, keep))
