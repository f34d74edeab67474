"""The time range blueprint: ``track_time_range`` and ``measure_time_range`` (``with`` block and decorator).

Event shape (JavaScript 0.6.1 ``trackTimeRange``): ``{"durationMs", "durationSeconds", "durationMinutes",
**metadata}``, each duration only when given, integral numbers as integers. The measuring variants are driven by
a fake clock: no test depends on how long anything really takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dodo_ingest import Ingestion, ValidationError, measure_time_range, track_time_range
from dodo_ingest.blueprints import TimeRange
from dodo_ingest.localserver import LocalDodoServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ingestion(make_ingestion: Callable[..., Ingestion]) -> Ingestion:
    return make_ingestion(event_name="function_execution", sync_mode=True)


def metadata(server: LocalDodoServer) -> list[dict[str, Any]]:
    return [e["metadata"] for e in server.events()]


def test_track_time_range_sends_the_keys_it_is_given(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    track_time_range(ingestion, "cus_1", duration_ms=1234, metadata={"function_name": "resize", "memory_mb": 512})
    track_time_range(ingestion, "cus_1", duration_seconds=2.0, duration_minutes=0.25)
    assert metadata(dodo_server) == [
        {"durationMs": 1234, "function_name": "resize", "memory_mb": 512},
        {"durationSeconds": 2, "durationMinutes": 0.25},
    ]
    assert type(metadata(dodo_server)[1]["durationSeconds"]) is int  # 2.0 goes out as 2, as in JavaScript


@pytest.mark.parametrize("bad", [-0.001, "5", True, float("inf")])
def test_durations_are_checked(ingestion: Ingestion, bad: Any) -> None:
    with pytest.raises(ValidationError, match=r"^duration_seconds: "):
        track_time_range(ingestion, "cus_1", duration_seconds=bad)


def test_measure_as_a_with_block(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    clock = FakeClock()
    with TimeRange(ingestion, "cus_1", {"job": "resize"}, "ms", None, clock) as run:
        clock.now += 1.2345
        assert run.elapsed == pytest.approx(1.2345)
        run.metadata["pixels"] = 4096
        assert dodo_server.event_count() == 0
    clock.now += 100  # after the block: the figure is final
    assert run.elapsed == pytest.approx(1.2345)
    assert metadata(dodo_server) == [{"durationMs": 1234, "job": "resize", "pixels": 4096}]


@pytest.mark.parametrize(
    ("unit", "seconds", "expected"),
    [
        ("ms", 0.0004, {"durationMs": 0}),
        ("seconds", 90.0, {"durationSeconds": 90}),
        ("minutes", 90.0, {"durationMinutes": 1.5}),
    ],
)
def test_units(
    dodo_server: LocalDodoServer, ingestion: Ingestion, unit: str, seconds: float, expected: dict[str, Any]
) -> None:
    clock = FakeClock()
    with TimeRange(ingestion, "cus_1", None, unit, None, clock):
        clock.now += seconds
    assert metadata(dodo_server) == [expected]
    assert type(metadata(dodo_server)[0][next(iter(expected))]) is type(next(iter(expected.values())))


def test_time_spent_in_a_block_that_raised_is_billed(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    clock = FakeClock()

    def job() -> None:
        clock.now += 3
        raise KeyError("job failed")

    with pytest.raises(KeyError), TimeRange(ingestion, "cus_1", None, "seconds", None, clock):
        job()
    assert metadata(dodo_server) == [{"durationSeconds": 3}]


def test_decorator_sync_with_a_customer_from_the_arguments(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    clock = FakeClock()

    @TimeRange(ingestion, lambda job, **_: job["customer"], {"kind": "batch"}, "ms", "job_run", clock)
    def process(job: dict[str, Any], *, cost: float) -> str:
        clock.now += cost
        return job["customer"]

    assert process({"customer": "cus_a"}, cost=0.5) == "cus_a"
    assert process({"customer": "cus_b"}, cost=0.25) == "cus_b"
    assert process.__name__ == "process"
    assert [(e["customer_id"], e["event_name"], e["metadata"]) for e in dodo_server.events()] == [
        ("cus_a", "job_run", {"durationMs": 500, "kind": "batch"}),
        ("cus_b", "job_run", {"durationMs": 250, "kind": "batch"}),
    ]


async def test_decorator_async(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    clock = FakeClock()

    @TimeRange(ingestion, "cus_1", None, "seconds", None, clock)
    async def transcode(seconds: float) -> float:
        clock.now += seconds
        return seconds

    assert await transcode(1.5) == 1.5
    with pytest.raises(ZeroDivisionError):
        await TimeRange(ingestion, "cus_1", None, "seconds", None, clock)(lambda_async_failing)()
    assert metadata(dodo_server) == [{"durationSeconds": 1.5}, {"durationSeconds": 0}]


async def lambda_async_failing() -> None:
    raise ZeroDivisionError


def test_measure_time_range_checks_its_input_early_and_never_breaks_the_measured_code(
    dodo_server: LocalDodoServer, ingestion: Ingestion, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValidationError, match="customer_id"):
        measure_time_range(ingestion, "")
    with pytest.raises(ValueError, match="unit"):
        measure_time_range(ingestion, "cus_1", unit="hours")  # type: ignore[arg-type]

    @measure_time_range(ingestion, customer_id=lambda: 1 / 0)  # a broken customer hook
    def work() -> str:
        return "done"

    assert work() == "done"
    with measure_time_range(ingestion, "cus_1") as run:  # the real clock: only the shape is asserted
        run.metadata["bad"] = {"nested": True}
    assert dodo_server.event_count() == 0
    assert sum("time range" in r.getMessage() for r in caplog.records) == 2
