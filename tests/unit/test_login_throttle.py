"""
The login throttle (OA-19), socket-free: `OAuthApp` on a `StubTreq` with a memory
store and fake login checkers (the daemon-level proofs are in
``tests/hostile/test_hostile_login_throttle.py``).  Every username tried is
charged (IMAP and SMTP, normalised), the attempt is reserved before the live
check, failure budgets are handed back on success, and ``X-Forwarded-For``
counts only through trusted proxies.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from mailmcp.mail._mailcheck import LoginRejected
from mailmcp.oauth._throttle import (
    GLOBAL_FAILURES_KEY,
    REFUSAL_LOG_KEYS,
    REFUSAL_LOG_WINDOW,
    RefusalLog,
    ThrottlePolicy,
    address_failure_key,
    client_address,
    normalise_username,
    parse_networks,
    username_key,
)
from tests.unit.oauth_helpers import BASE, make_server

ALICE, BOB = "alice@example.test", "bob@example.test"
PROXIES = parse_networks("127.0.0.1/32, 10.0.0.0/8 2001:db8::/32")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # an untrusted peer: the header is ignored, whatever it says
        ("192.0.2.9", [b"203.0.113.7"], "192.0.2.9"),
        # a trusted peer: the right-most hop that is not a proxy of ours
        ("127.0.0.1", [b"203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", [b"198.51.100.1, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", [b"198.51.100.1, 203.0.113.7, 10.1.2.3"], "203.0.113.7"),
        ("127.0.0.1", [b"198.51.100.1", b"203.0.113.7, 10.1.2.3"], "203.0.113.7"),
        # ports, brackets and mapped addresses are taken apart
        ("127.0.0.1", [b"203.0.113.7:4711"], "203.0.113.7"),
        ("127.0.0.1", [b"[2001:db8:1::5]:443, [2001:db9::5]:443"], "2001:db9::5"),
        ("::ffff:127.0.0.1", [b"::ffff:203.0.113.8"], "203.0.113.8"),
        # only proxies: the furthest one; an empty header: the peer
        ("127.0.0.1", [b"10.9.9.9, 10.1.2.3"], "10.9.9.9"),
        ("127.0.0.1", [b" , "], "127.0.0.1"),
        # a hop that is not an address (written by a trusted proxy) counts as itself
        ("127.0.0.1", [b"unknown"], "unknown"),
    ],
)
def test_client_address_walks_hops_from_the_right(
    peer: str, forwarded: list[bytes], expected: str
) -> None:
    """X-Forwarded-For counts only from a trusted peer; the first untrusted hop from the right wins."""
    assert client_address(peer, forwarded, PROXIES) == expected


def test_trust_forwarded_trusts_any_peer() -> None:
    """--trust-forwarded: the peer is a proxy whatever its address; further hops as usual."""
    assert client_address("unknown", [b"203.0.113.7"], (), trust_peer=True) == "203.0.113.7"
    assert client_address("192.0.2.9", [b"1.1.1.1, 10.1.2.3"], PROXIES, trust_peer=True) == "1.1.1.1"
    assert client_address("192.0.2.9", [b"1.1.1.1"], (), trust_peer=False) == "192.0.2.9"


def test_parse_networks() -> None:
    """Commas or spaces; bare addresses are /32 or /128; host bits are dropped."""
    assert parse_networks(" 10.1.2.3/8,::1  192.0.2.1") == (
        ip_network("10.0.0.0/8"), ip_network("::1/128"), ip_network("192.0.2.1/32"))
    with pytest.raises(ValueError, match="'proxy' is not an IP address"):
        parse_networks("10.0.0.0/8, proxy")


def test_usernames_normalised() -> None:
    """NFKC, case folding and trimming give one spelling per name."""
    assert normalise_username("  Alice@Example.TEST\t") == ALICE
    assert normalise_username("\uff21lice@example.test") == ALICE  # full-width A
    assert normalise_username("STRASSE") == normalise_username("straße")
    assert username_key("Alice@Example.test ") == username_key(ALICE)
    assert username_key(ALICE) != username_key(BOB)


def test_spellings_of_one_username_share_a_budget(tmp_path: Path) -> None:
    """Failures as 'Alice@Example.test ' throttle 'alice@example.test': 429, no IMAP contact."""
    server = make_server(tmp_path, ThrottlePolicy(user_failures=3, ip_attempts=100))
    for spelling in ("Alice@Example.test ", "ALICE@EXAMPLE.TEST", "\uff21lice@example.test"):
        assert server.login(spelling, "nope")[0].code == 400
    calls = len(server.imap.calls)
    response, body = server.login(ALICE, "alice-pw")
    assert response.code == 429
    assert b"Too many sign-in attempts" in body
    assert len(server.imap.calls) == calls


def smtp_guess(server, password: str, imap_user: str = ALICE):  # type: ignore[no-untyped-def]
    """IMAP: alice's real login; SMTP: bob's username with a guessed password."""
    return server.login(imap_user, "alice-pw", same=False,
                        extra={"smtp_username": BOB, "smtp_password": password})


def test_smtp_username_is_charged(tmp_path: Path) -> None:
    """
    Guessing bob's SMTP password behind alice's valid IMAP login spends bob's
    budget: after 3 failures the 4th guess is 429 with no IMAP or SMTP
    contact, and bob's own IMAP login is throttled too.  Alice's budget was
    handed back each time (her login succeeded), so she can still sign in.
    """
    server = make_server(tmp_path, ThrottlePolicy(user_failures=3, ip_attempts=100))
    for i in range(3):
        response, body = smtp_guess(server, f"guess-{i}")
        assert response.code == 400 and b"SMTP: the mail server rejected" in body
    imap_calls, smtp_calls = len(server.imap.calls), len(server.smtp.calls)
    assert smtp_guess(server, "bob-pw")[0].code == 429
    assert server.login(" Bob@Example.test", "bob-pw")[0].code == 429
    assert (len(server.imap.calls), len(server.smtp.calls)) == (imap_calls, smtp_calls)
    assert server.run(server.store.count(username_key(ALICE))) == 0
    assert server.login(ALICE, "alice-pw")[0].code == 303


def test_a_victim_throttled_as_imap_user_is_throttled_as_smtp_user(tmp_path: Path) -> None:
    """The reverse order: bob's IMAP failures make an SMTP guess for bob a 429 at once."""
    server = make_server(tmp_path, ThrottlePolicy(user_failures=3, ip_attempts=100))
    for _ in range(3):
        assert server.login(BOB, "nope")[0].code == 400
    smtp_calls = len(server.smtp.calls)
    assert smtp_guess(server, "bob-pw")[0].code == 429
    assert len(server.smtp.calls) == smtp_calls


def test_concurrent_attempts_reserve_before_the_live_check(tmp_path: Path) -> None:
    """
    30 attempts for one username in flight at once (the checker never
    answers until told): only the limit (5) reach the IMAP checker, the other
    25 are 429 at once; once the 5 fail, the username stays throttled.
    """
    server = make_server(tmp_path, ThrottlePolicy(user_failures=5, ip_attempts=100), concurrency=64)
    server.imap.stall = True
    pending = []
    for _ in range(30):
        params = server.authorize_params()
        _, _, cookie, csrf = server.get_form(params)
        form = dict(params, email=ALICE, imap_username=ALICE, imap_password="guess",
                    use_same_credentials="1", csrf_token=csrf)
        pending.append(server.treq.request(
            "POST", BASE + "/oauth/authorize", data=form, allow_redirects=False,
            headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}))
    server.treq.flush()
    assert len(server.imap.calls) == 5
    for d in server.imap.pending:
        d.errback(LoginRejected("IMAP"))
    codes = sorted(server.run(d).code for d in pending)
    assert codes == [400] * 5 + [429] * 25
    assert server.run(server.store.count(username_key(ALICE))) == 5
    server.imap.stall = False
    assert server.login(ALICE, "alice-pw")[0].code == 429


def test_success_hands_the_failure_budgets_back(tmp_path: Path) -> None:
    """Successful logins never use up the username, address-failure or global budgets."""
    server = make_server(tmp_path, ThrottlePolicy(user_failures=3, ip_failures=3,
                                                  global_failures=3, ip_attempts=100))
    assert server.login(ALICE, "nope")[0].code == 400
    for _ in range(10):
        assert server.login(ALICE, "alice-pw")[0].code == 303
    count = server.store.count
    assert server.run(count(username_key(ALICE))) == 1
    assert server.run(count(GLOBAL_FAILURES_KEY)) == 1
    assert server.run(count(address_failure_key("127.0.0.1"))) == 1


def test_unreachable_server_keeps_the_charge(tmp_path: Path) -> None:
    """A server that cannot be reached says nothing about the password: the attempt stays charged."""
    server = make_server(tmp_path, ThrottlePolicy(user_failures=2, ip_attempts=100))
    server.imap.down = True
    for _ in range(2):
        assert b"could not be reached" in server.login(ALICE, "alice-pw")[1]
    server.imap.down = False
    assert server.login(ALICE, "alice-pw")[0].code == 429


def test_busy_hands_everything_back(tmp_path: Path) -> None:
    """A 503 (no live-check slot) was never checked: no failure budget stays charged."""
    server = make_server(tmp_path, ThrottlePolicy(user_failures=3, ip_attempts=100), concurrency=1)
    server.imap.stall = True
    params = server.authorize_params()
    _, _, cookie, csrf = server.get_form(params)
    form = dict(params, email=ALICE, imap_username=ALICE, imap_password="alice-pw",
                use_same_credentials="1", csrf_token=csrf)
    first = server.treq.request("POST", BASE + "/oauth/authorize", data=form, allow_redirects=False,
                                headers={"Cookie": cookie,
                                         "Content-Type": "application/x-www-form-urlencoded"})
    server.treq.flush()
    assert server.login(BOB, "bob-pw")[0].code == 503
    assert server.run(server.store.count(username_key(BOB))) == 0
    assert server.run(server.store.count(GLOBAL_FAILURES_KEY)) == 1  # alice's, in flight
    server.imap.pending[0].callback(None)
    assert server.run(first).code == 303
    assert server.run(server.store.count(GLOBAL_FAILURES_KEY)) == 0


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def test_address_failure_budget(tmp_path: Path) -> None:
    """Failures for many usernames from one address use up its failure budget; another address is not affected."""
    server = make_server(tmp_path, ThrottlePolicy(ip_failures=3, ip_attempts=100),
                         trusted_proxies=PROXIES)
    for i in range(3):
        assert server.login(f"user{i}@example.test", "nope", headers=forwarded("203.0.113.7"))[0].code == 400
    response, _ = server.login(ALICE, "alice-pw", headers=forwarded("203.0.113.7"))
    assert response.code == 429
    assert response.headers.getRawHeaders(b"retry-after") == [b"3600"]
    assert server.login(ALICE, "alice-pw", headers=forwarded("203.0.113.8"))[0].code == 303


def test_global_failure_budget(tmp_path: Path) -> None:
    """Failures spread over addresses and usernames use up the global budget: then every attempt is 429."""
    server = make_server(tmp_path, ThrottlePolicy(global_failures=4, ip_attempts=100),
                         trusted_proxies=PROXIES)
    for i in range(4):
        assert server.login(f"user{i}@example.test", "nope",
                            headers=forwarded(f"203.0.113.{i}"))[0].code == 400
    calls = len(server.imap.calls)
    response, _ = server.login(ALICE, "alice-pw", headers=forwarded("198.51.100.1"))
    assert response.code == 429
    assert response.headers.getRawHeaders(b"retry-after") == [b"300"]
    assert len(server.imap.calls) == calls
    server.clock.advance(301)
    assert server.login(ALICE, "alice-pw", headers=forwarded("198.51.100.1"))[0].code == 303


def test_spoofed_forwarded_header_is_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    """Without --trusted-proxies a client cannot buy fresh address budgets with X-Forwarded-For."""
    server = make_server(tmp_path, ThrottlePolicy(ip_attempts=3, user_failures=100))
    codes = [server.login(ALICE, "alice-pw", headers=forwarded(f"203.0.113.{i}"))[0].code
             for i in range(4)]
    assert codes == [303, 303, 303, 429]


def _throttle_lines(events: Any) -> list[str]:
    return [formatEvent(e) for e in events if "login throttled" in str(e.get("log_format"))]


def test_a_guessing_flood_logs_one_line_per_window_and_a_count(tmp_path: Path) -> None:
    """
    OA-19: 50 refused guesses (429) within a minute log one line at the first
    refusal and, when the window ends (Clock), one line with the count of the
    other 49; the next window starts with a line again.  Another address
    gets its own first line at once.
    """
    server = make_server(tmp_path, ThrottlePolicy(user_failures=1000, ip_attempts=3))
    with capturedLogs() as events:
        for _ in range(3):
            assert server.login(ALICE, "nope")[0].code == 400
        assert _throttle_lines(events) == []
        for _ in range(50):
            assert server.login(ALICE, "nope")[0].code == 429
        assert _throttle_lines(events) == [
            "login throttled for 127.0.0.1: address budget used up"]
        server.clock.advance(REFUSAL_LOG_WINDOW)
        assert _throttle_lines(events)[1:] == [
            "login throttled for 127.0.0.1: address budget, 49 more refusals "
            "in the last 60 seconds"]
        # The address budget's own window (60 s) has ended too: 3 more guesses pass.
        for _ in range(3):
            assert server.login(ALICE, "nope")[0].code == 400
        assert server.login(ALICE, "nope")[0].code == 429
        assert len(_throttle_lines(events)) == 3
        server.clock.advance(REFUSAL_LOG_WINDOW)
        assert len(_throttle_lines(events)) == 3  # nothing more was refused: no summary


def test_refusal_log_bounds_what_it_tracks() -> None:
    """Past REFUSAL_LOG_KEYS addresses, refusals share one entry: one more line, then counts."""
    clock = Clock()
    refusals = RefusalLog(clock)
    with capturedLogs() as events:
        for i in range(REFUSAL_LOG_KEYS + 100):
            refusals.refused(f"10.0.{i // 256}.{i % 256}", "address")
        lines = _throttle_lines(events)
        assert len(lines) == REFUSAL_LOG_KEYS + 1
        assert lines[-1] == "login throttled for many addresses: address budget used up"
        assert len(clock.getDelayedCalls()) == REFUSAL_LOG_KEYS + 1
        clock.advance(REFUSAL_LOG_WINDOW)
        assert _throttle_lines(events)[-1] == (
            "login throttled for many addresses: address budget, 99 more refusals "
            "in the last 60 seconds")
        assert clock.getDelayedCalls() == []
