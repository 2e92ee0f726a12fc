"""
The search compiler against the real Dovecot: every query the compiler
accepts (random, hypothesis-generated) is a well-formed ``UID SEARCH`` for a
real server -- Dovecot never answers ``BAD`` (malformed command) and never
breaks the connection -- and the results are UIDs of the folder.

Bounded: 150 examples, each one pooled round trip on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from mailmcp._tls import MailTLS
from mailmcp.mail._search import SearchQueryError, compile_search
from mailmcp.mail.imap import CommandFailed, IMAPPool
from tests.harness import Services
from tests.helpers import fresh_user
from tests.hostile.strategies import queries
from tests.integration.dovecot_wire import account_for

pytestmark = pytest.mark.integration

def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12).map(_quoted) | st.sampled_from(
    ["report", "Müller", "q1", "x*y", "%", "1:*"])
_leaf = (st.sampled_from(["ALL", "SEEN", "UNSEEN", "FLAGGED", "UNFLAGGED", "ANSWERED", "DELETED", "DRAFT", "NEW"])
         | st.tuples(st.sampled_from(["FROM", "TO", "CC", "SUBJECT", "TEXT", "BODY"]), _text).map(" ".join)
         | st.tuples(st.sampled_from(["SINCE", "BEFORE", "ON"]),
                     st.dates().map(lambda d: d.isoformat())).map(" ".join)
         | st.tuples(st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 2**32).map(str)).map(" ".join)
         | st.sampled_from(["UID 1", "UID 1:*", "UID 2,3", "UID 4294967295"])
         | st.tuples(_text, _text).map(lambda p: f"HEADER {p[0]} {p[1]}")
         | st.sampled_from(["KEYWORD $Junk", "UNKEYWORD foo"]))
grammar = st.recursive(_leaf, lambda inner: st.one_of(
    inner.map(lambda k: "NOT " + k),
    st.tuples(inner, inner).map(lambda p: f"OR {p[0]} {p[1]}"),
    st.lists(inner, min_size=1, max_size=3).map(lambda ks: "(" + " ".join(ks) + ")"),
    st.lists(inner, min_size=2, max_size=3).map(" ".join)), max_leaves=8)


@pytest.fixture(scope="module")
def searcher(services: Services) -> Iterator[tuple[IMAPPool, Any]]:
    """A pool and a fresh account with three messages."""
    email, password = fresh_user(services)
    for i in range(3):
        services.deliver(email, f"From: Müller <m{i}@example.test>\r\nSubject: q{i} report\r\n\r\nbody {i}\r\n"
                         .encode())
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=10.0)
    yield pool, account_for(services, email, password)
    pytest_twisted.blockon(pool.stopService())


@pytest_twisted.ensureDeferred
async def test_every_accepted_query_is_valid_for_dovecot(searcher: tuple[IMAPPool, Any]) -> None:
    """
    Any query the compiler accepts (150 hypothesis examples, collected
    first, then run) is answered OK -- or NO, e.g. a bad charset -- by
    Dovecot, never BAD; the UIDs are the folder's.
    """
    pool, account = searcher
    accepted: list[tuple[str, Any]] = []

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(query=grammar | queries)
    def collect(query: str) -> None:
        try:
            accepted.append((query, compile_search(query)))
        except SearchQueryError:
            pass

    collect()
    # About a third of random queries are refused by the compiler (e.g. a
    # lone quote); the bound only guards against a strategy that stopped
    # producing anything acceptable.
    assert len(accepted) >= 15, len(accepted)
    print(f"search: {len(accepted)} accepted queries sent to Dovecot")

    for query, criteria in accepted:
        async def search(session: Any, criteria: Any = criteria) -> list[int]:
            await session.examine("INBOX")
            uids: list[int] = await session.uid_search(criteria)
            return uids

        try:
            uids = await Deferred.fromCoroutine(pool.run(account, search, read_only=True))
        except CommandFailed as e:
            assert e.status == "NO", (query, criteria, e.message)
            continue
        assert set(uids) <= {1, 2, 3}, (query, uids)
