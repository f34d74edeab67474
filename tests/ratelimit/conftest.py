"""Fixtures for the rate-limit tests: a shared real Redis (flushed per test), and a manual clock."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

pytest.importorskip("limits", reason="the ratelimit extra is not installed")


class ManualClock:
    """An injectable wall clock (epoch seconds) that only moves when told to."""

    def __init__(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (naive means UTC)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        self.now = moment.timestamp()


@pytest.fixture
def clock() -> ManualClock:
    """A clock standing at 2025-01-15T12:00:00Z."""
    return ManualClock(datetime(2025, 1, 15, 12, tzinfo=timezone.utc))
