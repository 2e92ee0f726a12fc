"""`Admission`: the lag-adapted limit on /mcp requests in progress."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred

from mailmcp._admission import Admission, fixed


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
