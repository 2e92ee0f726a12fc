"""`Admission`: the lag-adapted limit on /mcp requests in progress."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred

from mailmcp.web._admission import Admission, Refused, fixed


def entered(d: Deferred[None]) -> bool:
    return d.called


def test_within_the_limit_requests_enter_at_once_beyond_it_they_queue_in_order() -> None:
    admission = fixed(2)
    first, second, third, fourth = (admission.enter() for _ in range(4))
    assert [entered(d) for d in (first, second, third, fourth)] == [True, True, False, False]
    assert (admission.working, admission.queued, admission.waited) == (2, 2, 2)
    admission.leave()
    assert entered(third) and not entered(fourth)
    admission.leave()
    assert entered(fourth) and admission.working == 2 and admission.queued == 0


def test_lag_above_the_target_cuts_the_limit_by_a_quarter_down_to_the_floor() -> None:
    admission = Admission(initial=16, minimum=4, maximum=64, target_lag=0.04)
    admission.observe_lag(0.2)
    assert admission.limit == 12
    for _ in range(20):
        admission.observe_lag(0.2)
    assert admission.limit == 4


def test_lag_below_the_target_raises_the_limit_by_one_up_to_the_ceiling() -> None:
    admission = Admission(initial=4, minimum=4, maximum=6, target_lag=0.04)
    admission.observe_lag(0.001)
    assert admission.limit == 5
    for _ in range(5):
        admission.observe_lag(0.0)
    assert admission.limit == 6


def test_calls_waiting_on_slow_servers_do_not_starve_the_queue() -> None:
    """
    Two calls that wait (on a slow mail server) use no CPU, so the lag
    stays low and the limit grows until the queued request gets in.
    """
    admission = Admission(initial=2, minimum=1, maximum=100)
    slow = [admission.enter(), admission.enter()]
    queued = admission.enter()
    assert all(entered(d) for d in slow) and not entered(queued)
    admission.observe_lag(0.001)
    assert entered(queued) and admission.working == 3


def test_a_lagging_reactor_admits_nobody_new_until_work_finishes() -> None:
    admission = Admission(initial=2, minimum=1, maximum=100)
    admission.enter(), admission.enter()
    queued = admission.enter()
    admission.observe_lag(0.5)  # limit 2 -> 1.5: still two at work, none admitted
    assert not entered(queued)
    admission.leave()
    assert not entered(queued)  # one at work, limit 1
    admission.leave()
    assert entered(queued)


def test_cancelling_a_wait_gives_up_the_place() -> None:
    admission = fixed(1)
    admission.enter()
    gone, kept = admission.enter(), admission.enter()
    gone.cancel()
    failures: list[object] = []
    gone.addErrback(lambda f: failures.append(f.trap(CancelledError)))
    assert failures == [CancelledError] and admission.queued == 1
    admission.leave()
    assert entered(kept) and admission.queued == 0 and admission.working == 1


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Admission(initial=2, minimum=4)


# -- per-account share, bounded queue, fairness (issue 12) -----------------------------


def test_an_account_past_its_share_is_refused_at_once_and_nothing_is_taken() -> None:
    """
    An account with per_account requests at work or waiting gets `Refused`
    (reason "account", Retry-After 1) for the next one; the counters are
    unchanged, and once one of its requests leaves it may enter again.
    """
    admission = fixed(2, per_account=3)
    first, second, third = (admission.enter("flood") for _ in range(3))
    assert [entered(d) for d in (first, second, third)] == [True, True, False]
    with pytest.raises(Refused) as refused:
        admission.enter("flood")
    assert (refused.value.reason, refused.value.retry_after) == ("account", 1)
    assert "at most 3" in refused.value.message
    assert (admission.working, admission.queued, admission.in_flight("flood")) == (2, 1, 3)
    assert admission.refused == {"account": 1, "queue": 0}
    admission.leave("flood")
    assert entered(third) and admission.in_flight("flood") == 2
    assert not admission.enter("flood").called  # room again: it queues


def test_another_account_is_not_refused_when_one_is_at_its_share() -> None:
    admission = fixed(4, per_account=2)
    admission.enter("a"), admission.enter("a")
    with pytest.raises(Refused):
        admission.enter("a")
    assert entered(admission.enter("b"))


def test_a_full_queue_refuses_with_reason_queue() -> None:
    """Past max_queued waiting requests (all accounts together), `Refused` ("queue", Retry-After 2)."""
    admission = fixed(1, per_account=10, max_queued=2)
    assert entered(admission.enter("a"))
    waiting = [admission.enter("b"), admission.enter("c")]
    assert not any(entered(d) for d in waiting) and admission.queued == 2
    with pytest.raises(Refused) as refused:
        admission.enter("d")
    assert (refused.value.reason, refused.value.retry_after) == ("queue", 2)
    assert admission.in_flight("d") == 0 and admission.queued == 2
    assert admission.refused == {"account": 0, "queue": 1}


def test_waiting_accounts_are_admitted_in_turn_so_a_flood_cannot_starve_another() -> None:
    """
    Account "flood" queued 8 requests before "quiet" queued its one: when a
    slot frees, flood and quiet take turns, so quiet's call is the second
    admitted, not the ninth.
    """
    admission = fixed(1, per_account=16)
    admission.enter("flood")
    order: list[str] = []
    for i in range(8):
        admission.enter("flood").addCallback(lambda _, i=i: order.append(f"flood{i}"))
    admission.enter("quiet").addCallback(lambda _: order.append("quiet"))
    for _ in range(3):
        admission.leave("flood")
    assert order == ["flood0", "quiet", "flood1"]


def test_round_robin_over_three_accounts_keeps_each_accounts_order() -> None:
    admission = fixed(1)
    admission.enter("x")
    order: list[str] = []
    for name in ("a", "a", "a", "b", "c", "c"):
        admission.enter(name).addCallback(lambda _, n=name: order.append(n))
    for _ in range(6):
        admission.leave()
    assert order == ["a", "b", "c", "a", "c", "a"]


def test_cancelling_a_wait_releases_the_accounts_share() -> None:
    admission = fixed(1, per_account=2)
    admission.enter("a")
    waiting = admission.enter("a")
    with pytest.raises(Refused):
        admission.enter("a")
    waiting.cancel()
    waiting.addErrback(lambda f: f.trap(CancelledError))
    assert admission.in_flight("a") == 1 and admission.queued == 0
    assert not admission.enter("a").called


def test_the_lag_controller_still_governs_a_fair_queue() -> None:
    """
    Shares and fairness sit on top of the AIMD limit: a lagging reactor
    admits nobody new, a quiet one admits the next account in turn.
    """
    admission = Admission(initial=2, minimum=1, maximum=100, per_account=8)
    admission.enter("a"), admission.enter("a")
    queued_a, queued_b = admission.enter("a"), admission.enter("b")
    admission.observe_lag(0.5)
    admission.leave("a")
    assert not entered(queued_a) and not entered(queued_b)
    admission.observe_lag(0.001)
    admission.observe_lag(0.001)
    assert entered(queued_a) and entered(queued_b)


def test_a_clock_driven_flood_leaves_the_quiet_account_unhurt() -> None:
    """
    Driven by a Clock: every request works for 1 s; account "flood" keeps
    its share (16) in flight and tries 200 more every second, "quiet" makes
    one call a second.  Over 30 s every quiet call enters within one
    round of admissions (at most 1 s of waiting), and the flood's extra
    calls are refused with reason "account" instead of queueing.
    """
    from twisted.internet.task import Clock

    clock = Clock()
    admission = fixed(8, per_account=16, max_queued=64)
    waits: list[float] = []

    def request(account: str) -> bool:
        try:
            d = admission.enter(account)
        except Refused:
            return False
        asked = clock.seconds()

        def work(_: None) -> None:
            if account == "quiet":
                waits.append(clock.seconds() - asked)
            clock.callLater(1.0, admission.leave, account)

        d.addCallback(work)
        return True

    refused = 0
    for _ in range(30):
        refused += sum(not request("flood") for _ in range(200))
        request("quiet")
        clock.advance(1.0)
    for _ in range(5):
        clock.advance(1.0)
    assert len(waits) == 30 and max(waits) <= 1.0, waits
    assert refused > 30 * 180
    assert admission.working == 0 and admission.queued == 0
