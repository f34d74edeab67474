"""``Limiter.adjust``: how a request whose bill and check differ is settled in the quota."""

from __future__ import annotations

from datetime import datetime

from dodo_ingest.ratelimit import Limiter
from tests.helpers import free_port
from tests.ratelimit.conftest import ManualClock


def used(limiter: Limiter, customer: str, **kwargs: object) -> dict[str, int]:
    return {state.policy: state.used for state in limiter.usage(customer, **kwargs)}  # type: ignore[arg-type]


def test_adjust_moves_billing_periods_only(clock: ManualClock) -> None:
    limiter = Limiter("10/minute;100/month", clock=clock)
    assert limiter.check("cus_1", cost=3).allowed
    assert limiter.adjust("cus_1", -3)  # checked, then not billed
    assert limiter.adjust("cus_2", 2)  # billed without a check
    assert used(limiter, "cus_1") == {"10/minute": 3, "100/month": 0}  # the rate was used all the same
    assert used(limiter, "cus_2") == {"10/minute": 0, "100/month": 2}
    assert limiter.adjust("cus_2", 0) and limiter.adjust("cus_unlimited", 5)


def test_adjust_counts_past_the_quota_and_the_next_check_is_rejected(clock: ManualClock) -> None:
    limiter = Limiter("2/month", clock=clock)
    assert limiter.adjust("cus_1", 3)  # three 404s billed: billed is billed
    assert used(limiter, "cus_1") == {"2/month": 3}
    assert not limiter.check("cus_1").allowed


def test_a_views_own_periods_are_settled_by_scope(clock: ManualClock) -> None:
    limiter = Limiter("100/month", clock=clock)
    assert limiter.check("cus_1", scope="render", cost=5, limits="50/month").allowed
    assert limiter.adjust("cus_1", -5, scope="render", limits="50/month")
    assert used(limiter, "cus_1", scope="render", limits="50/month") == {"100/month": 0, "render:50/month": 0}


def test_now_settles_in_the_period_of_the_check(clock: ManualClock) -> None:
    limiter = Limiter("100/month", clock=clock)
    clock.set(datetime(2025, 1, 31, 23, 59, 59))
    checked_at = limiter.clock()
    assert limiter.check("cus_1").allowed
    clock.set(datetime(2025, 2, 1, 0, 0, 1))  # the request ended in February, and was not billed
    assert limiter.adjust("cus_1", -1, now=checked_at)
    assert used(limiter, "cus_1") == {"100/month": 0}  # February untouched
    clock.set(datetime(2025, 1, 31, 23, 59, 59))
    assert used(limiter, "cus_1") == {"100/month": 0}  # January given back


async def test_aadjust(clock: ManualClock) -> None:
    async def plan(customer: str) -> str:
        return "100/month"

    limiter = Limiter(plan, clock=clock)
    assert await limiter.aadjust("cus_1", 4)
    assert {s.policy: s.used for s in await limiter.ausage("cus_1")} == {"100/month": 4}
    assert not limiter.adjust("cus_1", 1)  # an async plan in sync code: not settled, counted
    assert limiter.stats()["limits_errors"] == 1


def test_a_dead_store_is_counted_never_raised() -> None:
    limiter = Limiter("100/month", storage=f"redis://127.0.0.1:{free_port()}/0", timeout=0.05)
    assert not limiter.adjust("cus_1", 1)
    stats = limiter.stats()
    assert stats["storage_errors"] == 1 and stats["refund_errors"] == 1
    for _ in range(5):
        limiter.adjust("cus_1", 1)
    assert limiter.breaker.state == "open" and limiter.stats()["storage_errors"] == 3  # no more attempts
