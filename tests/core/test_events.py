"""Dodo's event rules: the strict policy raises naming the field; the lenient one repairs or drops."""

from __future__ import annotations

import math
import re
import threading
from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum

import pytest

from dodo_ingest import Event, ValidationError
from dodo_ingest.events import clean_metadata, format_timestamp, new_event_id


def make(metadata: object = None, **kwargs: object) -> Event:
    return Event.create(kwargs.pop("customer_id", "cus_1"), kwargs.pop("event_name", "api_call"), metadata, **kwargs)  # type: ignore[arg-type]


def test_a_valid_event_on_the_wire() -> None:
    event = make({"endpoint": "/x", "status_code": 200, "ratio": 0.5, "cached": False})
    wire = event.to_dict()
    assert set(wire) == {"event_id", "customer_id", "event_name", "timestamp", "metadata"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wire["timestamp"])
    assert wire["metadata"] == {"endpoint": "/x", "status_code": 200, "ratio": 0.5, "cached": False}
    assert '"status_code":200' in event.to_json()  # numbers stay numbers


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": 123}, "customer_id"),
        ({"event_name": "  "}, "event_name"),
        ({"event_id": ""}, "event_id"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp"),  # naive
    ],
)
def test_required_fields_are_checked_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"a": None}, "metadata.a"),
        ({"a": [1]}, "metadata.a"),
        ({"a": {"b": 1}}, "metadata.a"),
        ({"a": math.nan}, "metadata.a"),
        ({"a": math.inf}, "metadata.a"),
        ({"a": "x" * 501}, "metadata.a"),
        ({"k" * 101: 1}, "metadata." + "k" * 40 + "..."),
        ({f"k{i}": i for i in range(51)}, "metadata"),
        ({1: "x"}, "metadata"),
        ("not a dict", "metadata"),
    ],
)
def test_metadata_rules_name_the_offending_key(metadata: object, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(metadata)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_metadata_limits_are_inclusive() -> None:
    event = make({**{f"k{i}": i for i in range(49)}, "k" * 100: "v" * 500})
    assert len(event.metadata) == 50


def test_bool_stays_bool_and_enum_subclasses_become_plain_values() -> None:
    class Color(str, Enum):
        RED = "red"

    class Level(IntEnum):
        HIGH = 3

    event = make({"flag": True, "color": Color.RED, "level": Level.HIGH})
    assert event.metadata == {"flag": True, "color": "red", "level": 3}
    assert type(event.metadata["color"]) is str and type(event.metadata["level"]) is int
    assert type(event.metadata["flag"]) is bool


def test_lenient_policy_repairs_none_and_long_strings_but_not_structure() -> None:
    clean, repairs = clean_metadata({"ua": "x" * 900, "gone": None, "ok": 1}, strict=False)
    assert clean == {"ua": "x" * 500, "ok": 1}
    assert repairs == 2
    with pytest.raises(ValidationError):
        clean_metadata({"nested": {"a": 1}}, strict=False)


def test_timestamps_are_utc_with_z_from_any_accepted_input() -> None:
    moment = datetime(2026, 11, 21, 19, 55, 30, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert make(timestamp=moment).timestamp == "2026-11-21T17:55:30.123Z"
    assert make(timestamp="2026-11-21T17:55:30.5+00:00").timestamp == "2026-11-21T17:55:30.500Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_event_ids_are_unique_across_threads_and_fixed_at_creation() -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [new_event_id() for _ in range(5000)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 20000
    event = make()
    assert event.to_dict()["event_id"] == event.event_id == make(event_id=event.event_id).event_id
