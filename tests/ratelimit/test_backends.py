"""The fast paths (memory, Redis pipeline) decide exactly as ``limits``' public strategy API does."""

from __future__ import annotations

import pytest
from limits.storage import storage_from_string

from dodo_ingest.ratelimit import Limiter
from dodo_ingest.ratelimit.backends import GenericBackend
from tests.ratelimit.conftest import ManualClock

STRATEGIES = ["sliding-window-counter", "fixed-window", "moving-window"]


def run(limiter: Limiter, costs: list[int]) -> list[tuple[bool, tuple[int, ...]]]:
    decisions = [limiter.check("cus_1", scope="v", cost=cost, limits="4/hour") for cost in costs]
    return [(d.allowed, tuple(s.remaining for s in d.states)) for d in decisions]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("storage", ["memory://", "redis"])
def test_the_fast_path_matches_the_public_strategy_api(
    strategy: str, storage: str, clock: ManualClock, request: pytest.FixtureRequest
) -> None:
    uri = request.getfixturevalue("redis_url") if storage == "redis" else storage
    costs = [1, 2, 1, 3, 1, 1, 5, 1]
    fast = Limiter("6/minute;9/month", storage=uri, strategy=strategy, clock=clock)
    fast_results = run(fast, costs)
    if storage == "redis":
        fast._backend.storage.reset()
    generic = Limiter("6/minute;9/month", storage=uri, strategy=strategy, clock=clock)
    generic._backend = GenericBackend(storage_from_string(uri), strategy)  # type: ignore[arg-type]
    assert run(generic, costs) == fast_results
    assert [s.used for s in generic.usage("cus_1")] == [s.used for s in fast.usage("cus_1")]
    assert sum(allowed for allowed, _ in fast_results) == 3  # the view's 4/hour is the binding limit


async def test_the_generic_backend_serves_async_checks_from_a_worker_thread(clock: ManualClock) -> None:
    limiter = Limiter("3/minute;5/month", clock=clock)
    limiter._backend = GenericBackend(storage_from_string("memory://"), "sliding-window-counter")  # type: ignore[arg-type]
    results = [(await limiter.acheck("cus_1")).allowed for _ in range(4)]
    assert results == [True, True, True, False]
    assert [s.used for s in await limiter.ausage("cus_1")] == [3, 3]  # the rejected check was refunded
