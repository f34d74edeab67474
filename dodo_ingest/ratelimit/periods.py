"""Billing periods: what ``"20000/month"`` means, precisely.

A period of ``m`` months anchored at ``A`` (a UTC instant) is the half-open interval
``[A + k·m months, A + (k+1)·m months)`` that contains now, for an integer ``k``. "``A`` + n months" keeps ``A``'s
day of the month and time of day, clamped to the last day of a shorter month, and is always computed from ``A``
itself (so an anchor on the 31st gives Jan 31, Feb 28/29, Mar 31, Apr 30, ... and never drifts to the 28th).

The default anchor is 1970-01-01T00:00:00Z: ``N/month`` is the calendar month in UTC, ``N/year`` the calendar
year in UTC. A per-customer anchor (their subscription's start) makes the quota follow their billing cycle.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved by ``months`` calendar months, the day clamped to the target month's length."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month0 = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def as_utc(moment: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def period_containing(now: float, months: int, anchor: datetime = EPOCH) -> tuple[float, float]:
    """``(start, end)`` as epoch seconds of the ``months``-month period anchored at ``anchor`` holding ``now``."""
    anchor = as_utc(anchor)
    current = datetime.fromtimestamp(now, timezone.utc)
    elapsed = (current.year - anchor.year) * 12 + (current.month - anchor.month)
    k = elapsed // months
    start = add_months(anchor, k * months)
    while start.timestamp() > now:  # at most one step: the anchor's day/time is later in the month than now
        k -= 1
        start = add_months(anchor, k * months)
    end = add_months(anchor, (k + 1) * months)
    while end.timestamp() <= now:  # pragma: no cover - defensive; the floor above already lands on k
        k += 1
        start, end = end, add_months(anchor, (k + 1) * months)
    return start.timestamp(), end.timestamp()
