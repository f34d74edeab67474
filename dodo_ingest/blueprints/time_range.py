"""The time range blueprint: bill for elapsed time (function runs, jobs, containers, sessions).

:func:`track_time_range` sends the JavaScript package's ``trackTimeRange`` event: metadata
``{"durationMs": ..., "durationSeconds": ..., "durationMinutes": ..., **metadata}``, each duration key only when
given, numbers as JavaScript writes them (``2.0`` goes out as ``2``). :func:`measure_time_range` measures the
time itself, as a ``with`` block or a decorator (sync and async functions). Events are queued on the
Ingestion's batcher (JavaScript sends one request per event).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from dodo_ingest.blueprints._values import check_amount, send_safely
from dodo_ingest.ingestion import Ingestion

F = TypeVar("F", bound=Callable[..., Any])
Unit = Literal["ms", "seconds", "minutes"]

#: The metadata key for each unit of :func:`measure_time_range`, and how the elapsed seconds are written there.
UNITS: dict[str, tuple[str, Callable[[float], int | float]]] = {
    "ms": ("durationMs", lambda seconds: round(seconds * 1000)),
    "seconds": ("durationSeconds", lambda seconds: round(seconds, 3)),
    "minutes": ("durationMinutes", lambda seconds: round(seconds / 60, 6)),
}


def time_range_metadata(
    duration_ms: float | None,
    duration_seconds: float | None,
    duration_minutes: float | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The metadata of a time range event, keys in the JavaScript package's order."""
    event: dict[str, Any] = {}
    for key, field, value in (
        ("durationMs", "duration_ms", duration_ms),
        ("durationSeconds", "duration_seconds", duration_seconds),
        ("durationMinutes", "duration_minutes", duration_minutes),
    ):
        if value is not None:
            event[key] = check_amount(field, value)
    if metadata:
        event.update(metadata)
    return event


def track_time_range(
    ingestion: Ingestion,
    customer_id: str,
    *,
    duration_ms: float | None = None,
    duration_seconds: float | None = None,
    duration_minutes: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    event_name: str | None = None,
    event_id: str | None = None,
) -> bool:
    """Queue a time range event: ``track_time_range(ingestion, "cus_1", duration_ms=1234, metadata={...})``.

    Durations are numbers >= 0. Raises :class:`~dodo_ingest.errors.ValidationError` naming the field for bad
    input; returns whether the event was queued.
    """
    event = time_range_metadata(duration_ms, duration_seconds, duration_minutes, metadata)
    return ingestion.track(customer_id, event, event_name=event_name, event_id=event_id)


class TimeRange:
    """Measures elapsed time and sends a time range event at the end; see :func:`measure_time_range`.

    Inside the ``with`` block, :attr:`metadata` can still be changed and :attr:`elapsed` read.
    """

    def __init__(
        self,
        ingestion: Ingestion,
        customer_id: str | Callable[..., str],
        metadata: Mapping[str, Any] | None,
        unit: str,
        event_name: str | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
        if not callable(customer_id):
            ingestion.event(customer_id, metadata, event_name=event_name)  # bad input fails here, at start
        self.ingestion = ingestion
        self.customer_id = customer_id
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.unit = unit
        self.event_name = event_name
        self._clock = clock
        self._start: float | None = None
        self._end: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the block started (the final figure once it ended)."""
        if self._start is None:
            return 0.0
        return (self._end if self._end is not None else self._clock()) - self._start

    def __enter__(self) -> TimeRange:
        self._start, self._end = self._clock(), None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end = self._clock()
        self._send(())

    def _send(self, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> None:
        key, convert = UNITS[self.unit]
        duration = convert(self.elapsed)

        def send() -> None:
            customer = self.customer_id(*args, **(kwargs or {})) if callable(self.customer_id) else self.customer_id
            self.ingestion.track(
                customer, {key: check_amount(key, duration), **self.metadata}, event_name=self.event_name
            )

        send_safely("time range", send)

    def __call__(self, func: F) -> F:
        """Use as a decorator: every call of ``func`` (sync or async) is measured and sent on its own."""

        def fresh() -> TimeRange:
            return TimeRange(self.ingestion, self.customer_id, self.metadata, self.unit, self.event_name, self._clock)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                measure = fresh().__enter__()
                try:
                    return await func(*args, **kwargs)
                finally:
                    measure._end = measure._clock()
                    measure._send(args, kwargs)

            return cast(F, timed_async)

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            measure = fresh().__enter__()
            try:
                return func(*args, **kwargs)
            finally:
                measure._end = measure._clock()
                measure._send(args, kwargs)

        return cast(F, timed)


def measure_time_range(
    ingestion: Ingestion,
    customer_id: str | Callable[..., str],
    *,
    metadata: Mapping[str, Any] | None = None,
    unit: Unit = "ms",
    event_name: str | None = None,
) -> TimeRange:
    """Measure elapsed time (a monotonic clock) and send it as a time range event when done::

        with measure_time_range(ingestion, "cus_1", metadata={"function_name": "resize"}) as run:
            resize(image)
            run.metadata["pixels"] = image.size        # may still be changed inside the block

        @measure_time_range(ingestion, customer_id=lambda job: job.customer_id, unit="seconds")
        def process(job): ...

    ``unit`` picks the key: ``"ms"`` → ``durationMs`` (whole milliseconds, as ``Date.now() - start`` gives in
    JavaScript), ``"seconds"`` → ``durationSeconds``, ``"minutes"`` → ``durationMinutes``. As a decorator,
    ``customer_id`` may be a callable that receives the function's arguments. Time spent in a block or call that
    raised is billed too (the work ran); metering errors are logged, never raised into the measured code.
    """
    return TimeRange(ingestion, customer_id, metadata, unit, event_name)
