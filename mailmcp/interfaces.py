"""
The replaceable parts of mailmcp, as zope interfaces.  Each has a real
implementation in a private module and a test implementation in
`mailmcp.testing`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from ._account import MailAccount
    from .attachments._common import ResolvedAttachment, StoredObject
    from .oauth._clients import MailServer
    from .oauth._grants import GrantRecord


class IAccessTokenVerifier(Interface):
    """Turns a Bearer token into the mail account it grants access to."""

    def verify(token: str) -> Deferred[MailAccount]:
        """
        :return: a Deferred (or awaitable) firing with a
            `mailmcp._account.MailAccount`.
        :raises mailmcp.oauth._tokens.InvalidToken: (as a failure) for any token
            that is not a live access token for this server.
        """


class IGrantStore(Interface):
    """
    Server-side OAuth state: grants (one per login, holding the mail
    credentials sealed under a key only the tokens carry), single-use
    authorization codes, the refresh-token generation of each grant's family,
    and login-throttle counters.  Every method returns a Deferred.
    """

    def create_grant(record: GrantRecord) -> Deferred[None]:
        """Store a new `mailmcp.oauth._grants.GrantRecord` (generation 0)."""

    def get_grant(grant_id: str) -> Deferred[GrantRecord | None]:
        """Fire with the live `GrantRecord`, or None if revoked or expired."""

    def get_allowed_grant(grant_id: str, client_ref: str) -> Deferred[GrantRecord | None]:
        """
        Fire with the live `GrantRecord` if it was issued to C{client_ref}
        and that client is not deny-listed, else None.  What every ``/mcp``
        request reads: one read, so one round trip on a networked store.
        """

    def activate_grant(
        grant_id: str, code_id: str, code_expires: int, expires: int
    ) -> Deferred[bool]:
        """
        Consume authorization code C{code_id} of the grant atomically and set
        the grant's absolute expiry.  Fire with True the first time only; a
        second call with the same code (a replay), or for a missing grant,
        fires with False.  The used-code marker outlives C{code_expires} by
        `mailmcp.oauth._grants.USED_CODE_MARGIN` seconds, so a replica whose clock
        runs behind still sees the code as used.
        """

    def rotate_refresh(
        grant_id: str, generation: int, successor: bytes, grace: int
    ) -> Deferred[bytes | None]:
        """
        Rotate the grant's refresh family, atomically (concurrent calls from
        several processes see one outcome):

          - the grant is at C{generation}: move it to C{generation + 1},
            remember C{successor} (the new refresh token, sealed under the
            grant key) and the time, and fire with C{successor};
          - the grant is already at C{generation + 1} and was rotated less
            than C{grace} seconds ago (a lost response, or a concurrent
            refresh of the same token): fire with the remembered successor,
            changing nothing;
          - otherwise (older reuse, reuse after the grace, no such live
            grant): fire with None.
        """

    def revoke_grant(grant_id: str) -> Deferred[None]:
        """Delete the grant; every token of its family dies with it."""

    def replace_sealed(grant_id: str, old: bytes, new: bytes) -> Deferred[bool]:
        """
        Compare-and-swap the grant's sealed credentials: when the live grant
        still holds exactly C{old}, store C{new} and fire with True; else
        (someone else replaced it first, or the grant is gone) change
        nothing and fire with False.  Provider sign-in stores a rotated
        provider refresh token this way, so of two processes refreshing at
        once exactly one wins and the other re-reads the winner's tokens.
        """

    def hit(key: str, window: int) -> Deferred[int]:
        """Add one to counter C{key} (a window of C{window} seconds from its first hit); fire with the new count."""

    def count(key: str) -> Deferred[int]:
        """Fire with the current count of C{key} (0 when absent or expired)."""

    def reserve(budgets: Sequence[tuple[str, int, int]]) -> Deferred[str | None]:
        """
        Take one unit from every budget, atomically and all or nothing.

        C{budgets} is a sequence of (counter key, limit, window seconds) with
        distinct keys.  When every counter is below its limit, add one to
        each (a counter's window starts at its first unit) and fire with
        None; otherwise change nothing and fire with the first key that is
        at its limit.  Two processes racing on one counter can never take
        more than its limit between them (no check-then-act).
        """

    def release(keys: Sequence[str]) -> Deferred[None]:
        """
        Hand back one unit of each counter in C{keys} (taken by `reserve`),
        never going below zero; an expired counter stays expired.
        """

    # -- account page and operator revocation (issue 15) -------------------

    def list_account_grants(account: str) -> Deferred[list[GrantRecord]]:
        """
        Fire with the live `GrantRecord`s whose C{account} (the mailbox's
        `mailmcp.oauth._grants.account_index`) is C{account}, oldest first.
        """

    def revoke_account(account: str) -> Deferred[int]:
        """Delete every grant of mailbox C{account}; fire with how many were live."""

    def touch_grant(grant_id: str, when: int) -> Deferred[None]:
        """Set the grant's C{last_used} to C{when} (never backwards); a missing grant is ignored."""

    def set_grant_account(grant_id: str, account: str) -> Deferred[bool]:
        """
        Give a grant made before account indexes (C{account} "") its index,
        so the account page lists it from now on; fire with True when it was
        set.  A grant that has one keeps it; a missing grant is ignored.
        """

    def deny_client(client_ref: str) -> Deferred[int]:
        """
        Put client C{client_ref} (`mailmcp.oauth._grants.client_ref`) on the
        deny-list for good and delete every grant it holds; fire with how many
        grants were live.
        """

    def client_denied(client_ref: str) -> Deferred[bool]:
        """Fire with True when C{client_ref} is on the deny-list."""


class ILoginChecker(Interface):
    """Checks mail credentials live against the user's IMAP or SMTP server."""

    def check(
        server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        """
        Fire with None when the server accepts the login; fail with
        `mailmcp.mail._mailcheck.LoginRejected` (wrong credentials) or
        `mailmcp.mail._mailcheck.MailServerUnavailable` (unreachable, TLS failure,
        timeout, protocol error).  With C{mechanism} ``xoauth2`` or
        ``oauthbearer``, C{password} is a provider access token
        (`mailmcp.mail._mailcheck.credentials_check` picks them from `Credentials`).
        """


class IAttachmentStore(Interface):
    """
    Content-addressed, per-owner blob storage for attachments, with signed,
    expiring, owner-bound download links (`mailmcp.attachments`).
    """

    limits = Attribute("the size caps (`mailmcp.attachments.Limits`)")
    link_lifetime = Attribute("default and longest link lifetime, in seconds")

    def put(owner: str, data: bytes, content_type: str) -> Awaitable[StoredObject]:
        """
        Store C{data} for C{owner}, off the reactor thread.  Idempotent:
        storing the same bytes again writes nothing.

        :return: an awaitable firing with a `StoredObject`.
        """

    def link(
        owner: str,
        obj: StoredObject,
        filename: str,
        content_type: str,
        lifetime: float | None = None,
    ) -> str:
        """
        A download URL for C{obj}, valid for C{lifetime} seconds (capped by
        configuration), served as an attachment named C{filename}.  Computed
        locally, with no network request.
        """

    def check(owner: str, url: str) -> object:
        """
        Pure check (no I/O) that C{url} is a live link this server issued to
        C{owner}.

        :raises AttachmentRefused: otherwise.
        """

    def resolve(owner: str, url: str) -> Awaitable[ResolvedAttachment]:
        """
        The stored content behind C{url}, which must be a live link this
        server issued to C{owner}.  The URL itself is never fetched.

        :return: an awaitable firing with a `ResolvedAttachment`.
        :raises AttachmentRefused: for any other URL, before any I/O.
        """


# -- send limit (SM-12) -------------------------------------------------------


class ISendBudget(Interface):
    """
    An account's send budget: a token bucket of recipients
    (`mailmcp.mail._sendrate`).
    """

    burst = Attribute("recipients one account may send to at once")
    per_hour = Attribute("recipients the bucket refills by per hour")

    def take(key: str, count: int) -> Deferred[float]:
        """
        Take C{count} tokens (one per recipient) from bucket C{key}.

        :return: a Deferred firing with 0.0 when they were taken, else with
            the seconds until they will be available (`math.inf` when
            C{count} is more than the burst); nothing is taken then.
        """


class ISendTokenStore(Interface):
    """A store that can hold the send buckets for every daemon sharing it."""

    def take_send_tokens(key: str, count: int, burst: int, per_hour: float) -> Deferred[float]:
        """
        Atomically take C{count} tokens from the bucket C{key} (capacity
        C{burst}, refilled at C{per_hour} per hour on the store's clock).

        :return: a Deferred firing as `ISendBudget.take` does.
        """


class IClientStore(Interface):
    """
    Where short client ids live: each maps to the client's description,
    sealed under the key ring (so the store never sees a secret hash or a
    mail server in the clear).  Shared by every process on the same store.
    """

    def put_client(client_id: str, sealed: str) -> Deferred[None]:
        """Record C{sealed} under C{client_id} (a new, random id); fire with None."""

    def get_client(client_id: str) -> Deferred[str | None]:
        """Fire with the sealed description of C{client_id}, or None when unknown."""


# -- send intents: at most once across processes (SM-13, SM-14) ---------------


class ISendIntentStore(Interface):
    """
    A store that records, before ``DATA``, that a message is being sent, so
    every daemon sharing it sends a Message-ID at most once
    (`mailmcp.mail._sendintent`).  Every method returns a Deferred.
    """

    def begin_send(key: str, account: str, owner: str, lease: float, keep: int) -> Deferred[str]:
        """
        Atomically claim intent C{key} for process C{owner}, unless another
        call holds it.  Fire with:

          - ``"claimed"``: there was no record, or only a ``failed`` one;
            now it is ``sending``, owned by C{owner} for C{lease} seconds
            and kept for C{keep} seconds;
          - ``"sending"``: a ``sending`` record whose lease has not run out;
          - ``"unknown"``: a ``sending`` record past its lease (its owner
            died mid-send), or one ended as ``unknown``;
          - ``"sent"``: one ended as ``sent``.

        C{account} (a hash, `mailmcp.mail._sendrate.send_key`) is kept with it.
        """

    def end_send(key: str, owner: str, state: str, keep: int) -> Deferred[None]:
        """
        Record the outcome (``"sent"``, ``"failed"`` or ``"unknown"``) of
        C{owner}'s send of C{key}; a record C{owner} does not hold is left
        alone.
        """
