"""
The login form as a password-guessing oracle (OA-19), attacked through a real
``twistd mailmcp`` (HTTP, and the real Chromium for the form itself):

- 30 concurrent guesses for one username reach the IMAP server at most the
  limit's number of times (a scripted IMAP server counts every LOGIN and
  answers each one slowly, so all 30 attempts overlap);
- guessing someone's SMTP password behind a valid IMAP login is throttled on
  the SMTP username (the real Dovecot and Postfix; their logs count every
  contact), whatever spelling of the name is used, and throttled answers make
  no IMAP or SMTP contact at all;
- ``X-Forwarded-For`` counts only through ``--trusted-proxies``: spoofed
  headers, from a direct client or prepended before a trusted proxy's hop,
  never buy a fresh address budget.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
import pytest_twisted
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from twisted.internet import reactor, threads

from tests.harness import Daemon, Services, generate_client, scripted_imap_client
from tests.hostile.scripted_imap import listen
from tests.integration.chromium import PatientWait as WebDriverWait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REDIRECT = "http://127.0.0.1:9/cb"
THROTTLED = "Too many sign-in attempts"


def authorize_params(client: dict[str, Any]) -> dict[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return {"client_id": client["client_id"], "redirect_uri": REDIRECT, "response_type": "code",
            "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"}


def login_form(http: httpx2.Client, client: dict[str, Any], imap: tuple[str, str],
               smtp: tuple[str, str] | None = None) -> dict[str, str]:
    """GET the form (its CSRF cookie stays in C{http}) and fill it in."""
    params = authorize_params(client)
    page = http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    form = dict(params, csrf_token=found.group(1), email=imap[0].strip().lower(),
                full_name="Throttle", imap_username=imap[0], imap_password=imap[1])
    if smtp is None:
        form["use_same_credentials"] = "1"
    else:
        form.update(smtp_username=smtp[0], smtp_password=smtp[1])
    return form


def post_together(posts: list[tuple[httpx2.Client, dict[str, str]]]) -> list[httpx2.Response]:
    """POST every (client, form) at once (a barrier releases all threads together)."""
    barrier = threading.Barrier(len(posts))

    def post(job: tuple[httpx2.Client, dict[str, str]]) -> httpx2.Response:
        barrier.wait(30)
        return job[0].post("/oauth/authorize", data=job[1])

    with ThreadPoolExecutor(len(posts)) as pool:
        return list(pool.map(post, posts))


# -- contact counters on the real servers -------------------------------------------


def dovecot_logins(services: Services, user: str) -> int:
    """Successful IMAP logins of C{user} in Dovecot's log."""
    text = (services.svc / "dovecot" / "dovecot.log").read_text(errors="replace")
    return len(re.findall(r"imap-login: (?:Info: )?Login: user=<" + re.escape(user) + ">", text))


def dovecot_contacts(services: Services) -> int:
    """Every IMAP client session Dovecot logged (logins and failures alike)."""
    return (services.svc / "dovecot" / "dovecot.log").read_text(errors="replace").count("imap-login:")


def postfix_connects(services: Services) -> int:
    """SMTP connections Postfix accepted on any port."""
    text = (services.svc / "postfix" / "maillog").read_text(errors="replace")
    return len(re.findall(r"/smtpd\[\d+\]: connect from", text))


def postfix_auth_failures(services: Services) -> int:
    """SMTP sessions that tried AUTH and never succeeded (Postfix's ``auth=0/N`` summary)."""
    text = (services.svc / "postfix" / "maillog").read_text(errors="replace")
    return len(re.findall(r"/smtpd\[\d+\]: disconnect from .* auth=0/", text))


def settle_logs() -> None:
    time.sleep(1.0)  # Dovecot and postlogd write their lines asynchronously


# -- 30 concurrent guesses for one username ---------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "redis-two-processes"])
@pytest_twisted.ensureDeferred
async def test_30_concurrent_guesses_reach_imap_at_most_limit_times(
    services: Services, daemon_factory: Any, tmp_path: Any, store: str
) -> None:
    """
    30 guesses for one username, all in flight together against a scripted
    IMAP server that answers every LOGIN ``NO`` after half a second: the
    server sees exactly 5 LOGINs (the per-username limit), 5 answers are
    400 and 25 are 429 with Retry-After.  (Check-then-act let all 30
    through.)  With a Redis store the 30 are split over two daemon processes
    sharing it, and the limit still holds across them.
    """
    factory, port = await listen(reactor, "reject-slow")
    try:
        args = ["--login-attempts-per-address", "100"]
        if store == "sqlite":
            daemons = [daemon_factory(services, *args)]
        else:
            shared = tmp_path / "shared-state"
            one = daemon_factory(services, *args, "--store", services.redis_url, state_dir=shared)
            two = daemon_factory(services, *args, "--store", services.redis_url,
                                 "--base-url", one.base_url, state_dir=shared)
            daemons = [one, two]
        client = scripted_imap_client(daemons[0].state_dir, port.getHost().port, services)
        victim = f"victim-{secrets.token_hex(3)}@example.test"

        def attack() -> list[httpx2.Response]:
            clients = [httpx2.Client(base_url=d.base_url, timeout=60, follow_redirects=False)
                       for d in daemons]
            try:
                posts = [(http, login_form(http, client, (victim, f"guess-{i}")))
                         for i in range(30) for http in [clients[i % len(clients)]]]
                return post_together(posts)
            finally:
                for http in clients:
                    http.close()

        responses = await threads.deferToThread(attack)
        logins = [v for v in factory.verbs if v in (b"LOGIN", b"AUTHENTICATE")]
        assert len(logins) == 5, factory.verbs
        codes = sorted(r.status_code for r in responses)
        assert codes == [400] * 5 + [429] * 25, codes
        for r in responses:
            if r.status_code == 429:
                assert THROTTLED in r.text and r.headers["retry-after"] == "300"
            else:
                assert "IMAP: the mail server rejected" in r.text
    finally:
        factory.close_all()
        await port.stopListening()


# -- SMTP guessing behind a valid IMAP login ----------------------------------------------


@pytest.fixture
def pair(services: Services) -> tuple[str, str]:
    """A fresh attacker (with a real mailbox) and a fresh victim on the test Dovecot."""
    tag = secrets.token_hex(3)
    attacker, victim = f"attacker-{tag}@example.test", f"victim-{tag}@example.test"
    services.add_users({attacker: "attackerpw", victim: "victimpw"})
    return attacker, victim


def test_smtp_guessing_behind_a_valid_imap_login_is_throttled(
    services: Services, daemon_factory: Any, pair: tuple[str, str]
) -> None:
    """
    With a valid IMAP login of their own, an attacker unticks "same
    credentials" and fires 15 guesses of the victim's SMTP password at once,
    spelling the victim's name three ways.  Only 5 reach Postfix (5 SMTP
    connections, 5 sessions with failed AUTH); 10 are 429.  Afterwards the victim's name
    -- as an IMAP username too, in any spelling, with the right password --
    is throttled with no contact with Dovecot or Postfix, while the attacker's
    own budget was handed back each time (their IMAP login succeeded).
    (Most of this test's time is Dovecot's per-address auth failure delay,
    which Postfix's SASL lookups pay: all of them come from 127.0.0.1.)
    """
    attacker, victim = pair
    spellings = [victim, f"  {victim.upper()} ", victim.replace("victim", "Victim")]
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    with httpx2.Client(base_url=daemon.base_url, timeout=60, follow_redirects=False) as http:
        forms = [login_form(http, client, (attacker, "attackerpw"), (spellings[i % 3], f"guess-{i}"))
                 for i in range(15)]
        settle_logs()
        smtp0, fail0, imap0 = postfix_connects(services), postfix_auth_failures(services), \
            dovecot_logins(services, attacker)
        responses = post_together([(http, form) for form in forms])
        settle_logs()
        codes = sorted(r.status_code for r in responses)
        assert codes == [400] * 5 + [429] * 10, codes
        assert all("SMTP: the mail server rejected" in r.text for r in responses if r.status_code == 400)
        assert postfix_connects(services) - smtp0 == 5
        assert postfix_auth_failures(services) - fail0 == 5
        assert dovecot_logins(services, attacker) - imap0 == 5

        # Throttled answers: no IMAP or SMTP contact at all.
        smtp1, imap1 = postfix_connects(services), dovecot_contacts(services)
        for spelling in spellings:
            answer = http.post("/oauth/authorize",
                               data=login_form(http, client, (spelling, "victimpw")))
            assert answer.status_code == 429 and THROTTLED in answer.text
            again = http.post("/oauth/authorize", data=login_form(
                http, client, (attacker, "attackerpw"), (spelling, "victimpw")))
            assert again.status_code == 429
        settle_logs()
        assert (postfix_connects(services), dovecot_contacts(services)) == (smtp1, imap1)

        # The attacker's own name was never charged: their login still works.
        own = http.post("/oauth/authorize", data=login_form(http, client, (attacker, "attackerpw")))
        assert own.status_code == 303, own.text[:300]


def test_smtp_username_throttle_in_the_browser(
    services: Services, daemon_factory: Any, pair: tuple[str, str], browser: Any, artifacts: Any
) -> None:
    """
    In the real Chromium: untick "use the same credentials", enter one's own
    IMAP login and guess someone's SMTP password; with
    ``--login-failures-per-user 2`` the third guess shows the throttle
    message (HTTP 429) instead of another SMTP answer.
    """
    attacker, victim = pair
    daemon = daemon_factory(services, "--login-failures-per-user", "2")
    client = generate_client(daemon.state_dir, services)
    url = daemon.base_url + "/oauth/authorize?" + urlencode(authorize_params(client))
    lines = []
    for guess in ("guess-1", "guess-2", "victimpw"):
        browser.get(url)
        browser.find_element(By.ID, "email").send_keys(attacker)
        browser.find_element(By.ID, "full_name").send_keys("Mallory")
        browser.find_element(By.ID, "imap_username").send_keys(attacker)
        browser.find_element(By.ID, "imap_password").send_keys("attackerpw")
        browser.find_element(By.CSS_SELECTOR, "label[for=use_same_credentials]").click()
        browser.find_element(By.ID, "smtp_username").send_keys(victim)
        browser.find_element(By.ID, "smtp_password").send_keys(guess)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CLASS_NAME, "error-line")))
        lines.append([e.text for e in browser.find_elements(By.CLASS_NAME, "error-line")])
    browser.save_screenshot(str(artifacts / "login-smtp-throttled.png"))
    assert lines[:2] == [["SMTP: the mail server rejected this username or password."]] * 2
    assert len(lines[2]) == 1 and THROTTLED in lines[2][0]
    assert "victimpw" not in browser.page_source


# -- X-Forwarded-For and --trusted-proxies ------------------------------------------------


@pytest.fixture
def dave_daemon(services: Services, daemon_factory: Any) -> Iterator[Any]:
    def start(*extra: str, env: dict[str, str] | None = None) -> tuple[Daemon, dict[str, Any]]:
        daemon = daemon_factory(services, "--login-attempts-per-address", "2", *extra, env=env)
        return daemon, generate_client(daemon.state_dir, services)

    yield start


def attempt(daemon: Daemon, client: dict[str, Any], source: str,
            forwarded: list[str] | None = None) -> int:
    """One correct login from loopback address C{source}, with these X-Forwarded-For lines."""
    transport = httpx2.HTTPTransport(local_address=source)
    with httpx2.Client(base_url=daemon.base_url, transport=transport, timeout=60,
                       follow_redirects=False) as http:
        form = login_form(http, client, ("dave@example.test", "davepw"))
        headers = [("X-Forwarded-For", value) for value in forwarded or []]
        return int(http.post("/oauth/authorize", data=form, headers=headers).status_code)


@pytest.mark.parametrize("via", ["option", "environment"])
def test_forwarded_for_counts_only_through_trusted_proxies(dave_daemon: Any, via: str) -> None:
    """
    ``--trusted-proxies "127.0.0.1, 10.0.0.0/8"`` (or MAILMCP_TRUSTED_PROXIES),
    2 attempts per address.
    A direct (untrusted) client's X-Forwarded-For is ignored, so rotating it
    buys nothing.  Through the trusted proxy the client is the right-most
    untrusted hop: a spoofed hop prepended by the client, a second trusted
    proxy in the chain, or a second header line does not change who is
    charged, and a different real client has its own budget.
    """
    proxies = "127.0.0.1, 10.0.0.0/8"
    if via == "option":
        daemon, client = dave_daemon("--trusted-proxies", proxies)
    else:
        daemon, client = dave_daemon(env={"MAILMCP_TRUSTED_PROXIES": proxies})
    # A direct client on 127.6.0.9 (not a proxy) spoofing the header.
    direct = [attempt(daemon, client, "127.6.0.9", [f"203.0.113.{i}"]) for i in range(3)]
    assert direct == [303, 303, 429]
    # Through the trusted proxy 127.0.0.1: client 203.0.113.7.
    proxy = "127.0.0.1"
    assert attempt(daemon, client, proxy, ["203.0.113.7"]) == 303
    assert attempt(daemon, client, proxy, ["198.51.100.1, 203.0.113.7, 10.1.2.3"]) == 303
    assert attempt(daemon, client, proxy, ["198.51.100.2, 203.0.113.7"]) == 429
    assert attempt(daemon, client, proxy, ["198.51.100.3", "203.0.113.7"]) == 429
    assert attempt(daemon, client, proxy, ["203.0.113.7, 10.9.9.9"]) == 429
    # Another real client behind the proxy, and the proxy itself without a header.
    assert attempt(daemon, client, proxy, ["203.0.113.8"]) == 303
    assert attempt(daemon, client, proxy) == 303


def test_trust_forwarded_trusts_the_direct_peer(dave_daemon: Any) -> None:
    """``--trust-forwarded`` (kept): any direct peer is a proxy; the last hop is the client."""
    daemon, client = dave_daemon("--trust-forwarded")
    assert [attempt(daemon, client, "127.6.0.9", ["198.51.100.9, 203.0.113.7"]) for _ in range(3)] == [
        303, 303, 429]
    assert attempt(daemon, client, "127.6.0.9", ["203.0.113.8"]) == 303
