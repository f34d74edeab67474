"""The Limiter on memory:// (and on a Redis port nobody listens on): limits, costs, scopes, plans, quotas,
billing periods with an injected clock, headers, the 429 body, fail-open and its circuit breaker."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ratelimit import Limiter, parse_limits, rejection_response, shared_memory_warning, worker_processes
from dodo_ingest.ratelimit.limiter import CircuitBreaker
from tests.helpers import free_port
from tests.ratelimit.conftest import ManualClock


def allowed(limiter: Limiter, customer: str, n: int, **kwargs: Any) -> int:
    return sum(limiter.check(customer, **kwargs).allowed for _ in range(n))


# --- parsing ------------------------------------------------------------------------------------------------


def test_limits_are_parsed_shortest_window_first_and_billing_periods_last() -> None:
    parsed = parse_limits("20000/month;100/minute;5/second;1000/2 hours")
    assert [limit.name for limit in parsed] == ["5/second", "100/minute", "1000/2 hours", "20000/month"]
    assert [limit.months for limit in parsed] == [0, 0, 0, 1]
    assert parse_limits(["1/second", "3/year"])[1].months == 12
    assert parse_limits("") == ()


@pytest.mark.parametrize("bad", ["100/fortnight", "lots", "100 per"])
def test_an_unparseable_limit_fails_at_construction_naming_the_setting(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"rate_limits: cannot parse .*100/minute;20000/month"):
        Limiter(bad)


def test_settings_errors_name_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="rate_limit_storage: unknown storage scheme 'mysql'"):
        Limiter("1/second", storage="mysql://localhost")
    with pytest.raises(ConfigurationError, match="rate_limit_strategy: must be one of"):
        Limiter("1/second", strategy="token-bucket")
    with pytest.raises(ConfigurationError, match="rate_limit_timeout: is in seconds, not milliseconds"):
        Limiter("1/second", timeout=250)
    with pytest.raises(ConfigurationError, match="rate_limits: cannot import module"):
        Limiter("nowhere.billing.limits_for")


def test_a_dotted_path_names_the_plan_callable() -> None:
    limiter = Limiter("tests.ratelimit.plans.limits_for")
    assert allowed(limiter, "cus_free", 5) == 2
    assert allowed(limiter, "cus_enterprise", 50) == 50  # None: unlimited
    assert limiter.check("cus_enterprise").reason == "unlimited"


def test_the_setting_entries_use_the_core_schema() -> None:
    from dodo_ingest.config import Setting
    from dodo_ingest.ratelimit import RATE_LIMIT_SETTINGS

    assert all(isinstance(s, Setting) for s in RATE_LIMIT_SETTINGS)
    keys = {s.key for s in RATE_LIMIT_SETTINGS}
    assert {"DODO_INGEST_RATE_LIMITS", "DODO_INGEST_RATE_LIMIT_STORAGE", "DODO_INGEST_RATE_LIMIT_KEY"} <= keys
    by_name = {s.name: s for s in RATE_LIMIT_SETTINGS}
    assert by_name["rate_limit_storage"].default == "memory://"
    assert by_name["rate_limit_fail_open"].default is True
    parsed = by_name["rate_limits"].parse("10/minute")
    limiter = Limiter.from_config({"rate_limits": parsed, "rate_limit_strategy": "fixed-window"})
    assert limiter.strategy == "fixed-window"
    assert allowed(limiter, "cus_1", 12) == 10


# --- checks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "fixed-window", "moving-window"])
def test_a_customer_gets_exactly_the_limit_then_a_rejection_with_retry_after(strategy: str) -> None:
    limiter = Limiter("3/minute", strategy=strategy)
    decisions = [limiter.check("cus_1") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    rejected = decisions[-1]
    assert rejected.reason == "limited" and rejected.limit == 3
    assert rejected.retry_after is not None and 1 <= rejected.retry_after <= 60
    assert decisions[0].retry_after is None
    assert limiter.check("cus_2").allowed  # another customer has its own counter
    assert limiter.stats()["rate_limited"] == 1
    assert [s.remaining for s in limiter.usage("cus_1")] == [0]


def test_cost_consumes_several_units() -> None:
    limiter = Limiter("10/minute")
    assert [limiter.check("cus_1", cost=5).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("cus_2", cost=11).allowed is False  # more than the whole limit never passes
    with pytest.raises(ValueError, match="cost"):
        limiter.check("cus_1", cost=0)


def test_a_views_own_limit_is_counted_per_scope_beside_the_customers_limit() -> None:
    limiter = Limiter("5/minute")
    render = [limiter.check("cus_1", scope="render", limits="2/minute") for _ in range(3)]
    assert [d.allowed for d in render] == [True, True, False]
    assert [s.policy for s in render[-1].states] == ["5/minute", "render:2/minute"]
    assert render[-1].binding is not None and render[-1].binding.policy == "render:2/minute"
    assert limiter.check("cus_1", scope="export", limits="2/minute").allowed  # another view, another counter
    assert allowed(limiter, "cus_1", 5) == 1  # the customer-wide 5/minute saw 3 admitted + 1 rejected-by-view


def test_view_limits_work_without_customer_limits() -> None:
    limiter = Limiter(None)
    assert not limiter.enabled
    assert limiter.check("cus_1").reason == "unlimited"
    assert allowed(limiter, "cus_1", 4, scope="upload", limits=lambda customer: "3/hour") == 3


def test_each_plan_gets_its_own_limits_from_the_callable() -> None:
    plans = {"cus_free": "2/minute", "cus_pro": ["10/minute", "1000/month"]}
    limiter = Limiter(plans.get)
    assert allowed(limiter, "cus_free", 5) == 2
    assert allowed(limiter, "cus_pro", 12) == 10
    assert limiter.check("cus_unknown").reason == "unlimited"


def test_customer_ids_cannot_forge_another_customers_key() -> None:
    limiter = Limiter("1/minute")
    assert limiter.check("a/b").allowed
    assert limiter.check("a", scope="b").allowed is True  # "a" + scope "b" is not customer "a/b"
    assert limiter.check("{a}").allowed


def test_threads_sharing_memory_get_exactly_the_limit() -> None:
    limiter = Limiter("50/minute", strategy="moving-window")
    results: list[bool] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        results.extend(limiter.check("cus_1").allowed for _ in range(25))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 200 and sum(results) == 50


# --- the quota counts what is billed ------------------------------------------------------------------------


def test_a_request_rejected_by_a_rate_limit_does_not_consume_the_monthly_quota(clock: ManualClock) -> None:
    limiter = Limiter("3/minute;100/month", clock=clock)
    assert allowed(limiter, "cus_1", 5) == 3
    month = limiter.usage("cus_1")[1]
    assert (month.policy, month.used, month.remaining) == ("100/month", 3, 97)


def test_a_request_over_the_quota_is_refunded_so_the_quota_equals_the_admitted_units(clock: ManualClock) -> None:
    limiter = Limiter("100/minute;4/month", clock=clock)
    assert limiter.check("cus_1", cost=3).allowed
    over = limiter.check("cus_1", cost=3)
    assert not over.allowed
    assert over.binding is not None and over.binding.policy == "4/month" and over.remaining == 1
    assert limiter.usage("cus_1")[1].used == 3
    assert limiter.check("cus_1", cost=1).allowed
    assert limiter.usage("cus_1")[1].used == 4


# --- billing periods ----------------------------------------------------------------------------------------


def test_the_monthly_quota_restarts_exactly_at_the_utc_month_boundary(clock: ManualClock) -> None:
    limiter = Limiter("2/month", clock=clock)
    clock.set(datetime(2025, 1, 31, 23, 59, 59))
    assert allowed(limiter, "cus_1", 3) == 2
    last = limiter.check("cus_1")
    assert not last.allowed and last.retry_after == 1 and last.reset == 1
    assert last.states[0].window == 31 * 86400
    clock.set(datetime(2025, 2, 1, 0, 0, 0))
    first = limiter.check("cus_1")
    assert first.allowed and first.remaining == 1
    assert first.states[0].window == 28 * 86400
    assert first.reset == 28 * 86400
    assert limiter.usage("cus_1")[0].used == 1


def test_a_billing_anchor_moves_the_period_to_the_customers_cycle(clock: ManualClock) -> None:
    anchors = {"cus_31": datetime(2024, 1, 31, 10, 0, tzinfo=timezone.utc)}
    limiter = Limiter("1/month", clock=clock, billing_anchor=anchors.get)
    clock.set(datetime(2025, 2, 28, 9, 59, 59))  # the period Jan 31 10:00 - Feb 28 10:00 (clamped)
    assert limiter.check("cus_31").allowed
    assert not limiter.check("cus_31").allowed
    clock.set(datetime(2025, 2, 28, 10, 0, 0))  # the next one starts: Feb 28 10:00 - Mar 31 10:00
    decision = limiter.check("cus_31")
    assert decision.allowed and decision.states[0].window == 31 * 86400
    assert limiter.check("cus_plain").allowed  # no anchor: the calendar month
    clock.set(datetime(2025, 3, 1))
    assert limiter.check("cus_plain").allowed and not limiter.check("cus_31").allowed


def test_a_plan_upgrade_mid_period_keeps_the_units_already_used(clock: ManualClock) -> None:
    plan = {"cus_1": "3/month"}
    limiter = Limiter(plan.get, clock=clock)
    assert allowed(limiter, "cus_1", 4) == 3
    plan["cus_1"] = "5/month"
    assert allowed(limiter, "cus_1", 4) == 2


async def test_acheck_awaits_async_plan_and_anchor_hooks(clock: ManualClock) -> None:
    async def limits_for(customer: str) -> str:
        return "2/month"

    async def anchor_for(customer: str) -> datetime:
        return datetime(2024, 12, 20, tzinfo=timezone.utc)

    limiter = Limiter(limits_for, billing_anchor=anchor_for, clock=clock)
    results = [(await limiter.acheck("cus_1")).allowed for _ in range(3)]
    assert results == [True, True, False]
    usage = await limiter.ausage("cus_1")
    assert usage[0].used == 2 and usage[0].reset == 5 * 86400 - 12 * 3600  # 2025-01-15 12:00 -> 01-20 00:00
    # the same async hooks in a sync check cannot be awaited: counted, logged, and the request passes
    assert limiter.check("cus_1").reason == "fail_open"
    assert limiter.stats()["limits_errors"] == 1


# --- what a limited caller sees -----------------------------------------------------------------------------


def test_headers_follow_the_ietf_draft_and_retry_after_only_on_rejection(clock: ManualClock) -> None:
    limiter = Limiter("2/minute;10/month", strategy="fixed-window", clock=clock)
    ok = dict(limiter.check("cus_1").headers())
    assert ok["RateLimit-Policy"] == '"2/minute";q=2;w=60, "10/month";q=10;w=2678400'
    assert ok["RateLimit"].startswith('"2/minute";r=1;t=')
    assert ok["RateLimit"].endswith(f', "10/month";r=9;t={16 * 86400 + 12 * 3600}')
    assert "Retry-After" not in ok and "X-RateLimit-Limit" not in ok
    limiter.check("cus_1")
    rejected = limiter.check("cus_1")
    legacy = dict(rejected.headers(legacy=True))
    assert legacy["Retry-After"] == str(rejected.retry_after)
    assert legacy["X-RateLimit-Limit"] == "2" and legacy["X-RateLimit-Remaining"] == "0"
    assert int(legacy["X-RateLimit-Reset"]) > 1_700_000_000  # epoch seconds


def test_the_rejection_response_is_a_429_with_a_json_body_naming_the_limit() -> None:
    limiter = Limiter("1/hour")
    limiter.check("cus_1")
    status, headers, body = rejection_response(limiter.check("cus_1"))
    assert status == 429
    fields = dict(headers)
    assert fields["Content-Type"] == "application/json" and fields["Content-Length"] == str(len(body))
    payload = json.loads(body)
    assert payload["error"] == "rate_limited" and payload["policy"] == "1/hour"
    assert payload["retry_after"] == int(fields["Retry-After"]) and payload["remaining"] == 0


def test_policy_names_are_escaped_as_structured_field_strings() -> None:
    limiter = Limiter(None)
    decision = limiter.check("cus_1", scope='say "hi"\\', limits="1/minute")
    assert dict(decision.headers())["RateLimit-Policy"] == '"say \\"hi\\"\\\\:1/minute";q=1;w=60'


# --- failures -----------------------------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A redis-py connection that counts its connection attempts."""

    attempts = 0

    def connect(self) -> None:
        type(self).attempts += 1
        super().connect()


class ManualMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_redis_limiter(**kwargs: Any) -> tuple[Limiter, ManualMonotonic]:
    CountingConnection.attempts = 0
    limiter = Limiter(
        "5/minute",
        storage=f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0",
        storage_options={"connection_class": CountingConnection},
        **kwargs,
    )
    monotonic = ManualMonotonic()
    limiter.breaker = CircuitBreaker(threshold=3, cooldown=2.0, clock=monotonic)
    return limiter, monotonic


def test_a_dead_store_fails_open_and_the_breaker_stops_all_network_calls(caplog: pytest.LogCaptureFixture) -> None:
    limiter, monotonic = dead_redis_limiter()
    with caplog.at_level(logging.WARNING, logger="dodo_ingest.ratelimit"):
        decisions = [limiter.check("cus_1") for _ in range(3)]
    assert all(d.allowed and d.reason == "fail_open" and d.headers() == [] for d in decisions)
    assert limiter.breaker.state == "open"
    attempts = CountingConnection.attempts
    assert attempts == 3
    assert all(limiter.check("cus_1").allowed for _ in range(100))
    assert CountingConnection.attempts == attempts  # no check waited on the network
    stats = limiter.stats()
    assert stats["failed_open"] == 103 and stats["storage_errors"] == 3 and stats["breaker_opened"] == 1
    assert len(caplog.records) == 1  # logged, rate-limited
    assert "s3cret" not in caplog.text and "s3cret" not in repr(limiter)
    monotonic.now += 2.0  # the cooldown passed: exactly one check probes the store
    assert limiter.breaker.state == "half-open"
    assert limiter.check("cus_1").allowed
    assert CountingConnection.attempts == attempts + 1 and limiter.breaker.state == "open"


async def test_a_dead_store_fails_open_in_async_checks_too() -> None:
    limiter, _ = dead_redis_limiter()
    decisions = [await limiter.acheck("cus_1") for _ in range(10)]
    assert all(d.reason == "fail_open" for d in decisions)
    assert limiter.breaker.state == "open" and limiter.stats()["storage_errors"] == 3


def test_fail_closed_rejects_with_503_while_the_store_is_down() -> None:
    limiter, _ = dead_redis_limiter(fail_open=False)
    decision = limiter.check("cus_1")
    assert not decision.allowed and decision.reason == "unavailable"
    status, headers, body = rejection_response(decision)
    assert status == 503 and dict(headers)["Retry-After"] == "2"
    assert json.loads(body)["error"] == "rate_limit_unavailable"
    assert limiter.stats()["failed_closed"] == 1


def test_a_failing_plan_callable_lets_the_request_pass_and_is_counted() -> None:
    def broken(customer: str) -> str:
        raise RuntimeError("database down")

    limiter = Limiter(broken)
    assert limiter.check("cus_1").reason == "fail_open"
    assert limiter.stats()["limits_errors"] == 1


# --- memory:// with several processes -----------------------------------------------------------------------


def test_memory_storage_with_several_workers_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dodo_ingest.ratelimit"):
        Limiter("1/second", workers=4)
        Limiter("1/second", workers=1)
    assert len(caplog.records) == 1 and "multiplied by 4" in caplog.records[0].getMessage()
    assert shared_memory_warning("redis://127.0.0.1:6379/0", 4) is None


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["/venv/bin/gunicorn", "-w", "4", "app:app"], {}, 4),
        (["gunicorn", "--workers=3", "app:app"], {}, 3),
        (["gunicorn", "-w2", "app:app"], {}, 2),
        (["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--bind 0.0.0.0:80 --workers 5"}, 5),
        (["manage.py", "runserver"], {"WEB_CONCURRENCY": "6"}, 6),
        (["manage.py", "runserver"], {}, 1),
    ],
)
def test_worker_processes_are_read_from_the_server_command_line(
    argv: list[str], environ: dict[str, str], expected: int
) -> None:
    assert worker_processes(environ, argv) == expected


def test_a_forked_copy_of_a_memory_limiter_warns(caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter("1/second")
    limiter._pid = -1  # as if this process were a child forked after the limiter was built
    with caplog.at_level(logging.WARNING, logger="dodo_ingest.ratelimit"):
        limiter.check("cus_1")
        limiter.check("cus_1")
    assert len(caplog.records) == 1 and "forked process" in caplog.records[0].getMessage()


def test_from_config_reads_attributes_of_a_config_object(clock: ManualClock) -> None:
    class Config:
        rate_limits = parse_limits("2/minute")
        rate_limit_storage = "memory://"
        rate_limit_strategy = "moving-window"
        rate_limit_fail_open = False
        rate_limit_timeout = 0.05

    limiter = Limiter.from_config(Config(), workers=1, clock=clock)
    assert (limiter.strategy, limiter.fail_open, limiter.timeout) == ("moving-window", False, 0.05)
    assert allowed(limiter, "cus_1", 3) == 2


def test_usage_reports_a_views_own_limits_by_scope(clock: ManualClock) -> None:
    limiter = Limiter("100/month", clock=clock)
    for _ in range(3):
        limiter.check("cus_1", scope="render", cost=2, limits="10/hour")
    usage = limiter.usage("cus_1", scope="render", limits="10/hour")
    assert [(s.policy, s.used, s.remaining) for s in usage] == [("100/month", 6, 94), ("render:10/hour", 6, 4)]
    assert usage[0]._asdict()["window"] == 31 * 86400
