"""Dodo's acceptance rules as pure functions: body parsing, event validation, RFC 3339 timestamps."""

from __future__ import annotations

from typing import Any

import pytest

from dodo_ingest.localserver.rules import (
    MAX_EVENTS_PER_REQUEST,
    NormalizedEvent,
    RuleViolation,
    format_timestamp,
    parse_body,
    parse_timestamp,
    validate_ingest,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
NOW_ISO = "2023-11-14T22:13:20Z"
NOW_US = 1_700_000_000_000_000


def event(i: int = 0, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": f"evt_{i}", "customer_id": "cus_1", "event_name": "api_call"}
    base.update(fields)
    return base


def validate(*events: dict[str, Any]) -> list[NormalizedEvent]:
    return validate_ingest({"events": list(events)}, now=NOW)


def violation(*events: dict[str, Any], body: Any = None) -> RuleViolation:
    with pytest.raises(RuleViolation) as info:
        validate_ingest(body if body is not None else {"events": list(events)}, now=NOW)
    return info.value


# --- body shape -------------------------------------------------------------------------------------------


def test_a_minimal_event_is_normalized_with_the_server_time() -> None:
    assert validate(event()) == [NormalizedEvent("evt_0", "cus_1", "api_call", NOW_US, None)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "body: must be a JSON object"),
        ("events", "body: must be a JSON object"),
        ({}, "events: missing required field"),
        ({"events": {}}, "events: must be an array"),
        ({"events": None}, "events: must be an array"),
        ({"events": []}, "0 events"),
        ({"events": [event(i) for i in range(MAX_EVENTS_PER_REQUEST + 1)]}, "1001 events"),
        ({"events": [event(), "evt"]}, "events[1]: must be an object"),
    ],
)
def test_schema_violations_of_the_body_are_422(body: Any, fragment: str) -> None:
    error = violation(body=body)
    assert (error.status, error.code) == (422, "INVALID_REQUEST_BODY")
    assert fragment in error.message


def test_1000_events_are_accepted() -> None:
    assert len(validate(*(event(i) for i in range(1000)))) == 1000


def test_unknown_fields_are_ignored() -> None:
    assert validate_ingest({"events": [event(extra=[1, 2])], "other": True}, now=NOW)[0].event_id == "evt_0"


@pytest.mark.parametrize("name", ["event_id", "customer_id", "event_name"])
def test_required_fields_missing_or_not_strings_are_422_and_empty_is_400(name: str) -> None:
    missing = event(3)
    del missing[name]
    error = violation(event(0), missing)
    assert error.status == 422 and error.message == f"events[1].{name}: missing required field"
    error = violation(event(0), event(1, **{name: 7}))
    assert error.status == 422 and error.message == f"events[1].{name}: must be a string, got number"
    error = violation(event(0), event(1, **{name: ""}))
    assert error.status == 400 and error.message == f"events[1].{name}: must not be empty"


def test_the_same_id_twice_in_one_request_is_400_naming_both() -> None:
    error = violation(event(0), event(1), event(0))
    assert error.status == 400
    assert error.message == "events[2].event_id: 'evt_0' duplicates events[0].event_id"


# --- metadata ---------------------------------------------------------------------------------------------


def test_metadata_scalars_are_accepted_and_kept() -> None:
    metadata = {"s": "x", "i": 3, "f": 2.5, "t": True, "n": -1, "z": 0.0}
    assert validate(event(metadata=metadata))[0].metadata == metadata


def test_null_and_empty_metadata_are_accepted() -> None:
    assert validate(event(metadata=None))[0].metadata is None
    assert validate(event(metadata={}))[0].metadata == {}


@pytest.mark.parametrize(
    ("metadata", "status", "fragment"),
    [
        ({f"k{i}": i for i in range(50)}, 200, ""),
        ({f"k{i}": i for i in range(51)}, 400, "events[0].metadata: 51 keys, at most 50"),
        ({"k" * 100: 1}, 200, ""),
        ({"k" * 101: 1}, 400, "key longer than 100 characters"),
        ({"v": "x" * 500}, 200, ""),
        ({"v": "x" * 501}, 400, "events[0].metadata.v: value longer than 500 characters"),
        ({"v": "é" * 500}, 200, ""),  # characters, not bytes
        ({"v": None}, 422, "events[0].metadata.v: value must be a string, number or boolean, got null"),
        ({"v": [1]}, 422, "got array"),
        ({"v": {"a": 1}}, 422, "got object"),
        ({"v": float("inf")}, 422, "out of range"),
        ({"ok": 1, "v": float("-inf")}, 422, "events[0].metadata.v"),
    ],
)
def test_metadata_rules_at_their_boundaries(metadata: dict[str, Any], status: int, fragment: str) -> None:
    body = {"events": [event(metadata=metadata)]}
    if status == 200:
        assert validate_ingest(body, now=NOW)[0].metadata == metadata
        return
    error = violation(body=body)
    assert error.status == status and fragment in error.message
    too_many_keys = len(metadata) > 50
    assert error.code == ("MAXIMUM_KEYS_REACHED" if too_many_keys else "INVALID_REQUEST_BODY")


@pytest.mark.parametrize("metadata", ["text", 1, ["a"], True])
def test_metadata_that_is_not_an_object_is_422(metadata: Any) -> None:
    error = violation(event(metadata=metadata))
    assert error.status == 422 and error.message.startswith("events[0].metadata: must be an object or null")


# --- timestamps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2023-11-14T22:13:20Z", NOW_US),
        ("2023-11-14T22:13:20+00:00", NOW_US),
        ("2023-11-14T22:13:20-00:00", NOW_US),
        ("2023-11-14t22:13:20z", NOW_US),
        ("2023-11-15T03:43:20+05:30", NOW_US),
        ("2023-11-14T20:13:20-02:00", NOW_US),
        ("2023-11-14T22:13:20.5Z", NOW_US + 500_000),
        ("2023-11-14T22:13:20.123456Z", NOW_US + 123_456),
        ("2023-11-14T22:13:20.1234569Z", NOW_US + 123_456),  # below a microsecond: truncated
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000),
    ],
)
def test_rfc3339_timestamps_parse_to_epoch_microseconds(text: str, expected_us: int) -> None:
    assert parse_timestamp(text) == expected_us


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2023-11-14",
        "2023-11-14T22:13Z",
        "2023-11-14T22:13:20",  # no offset
        "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:20.Z",
        "20231114T221320Z",
        "2023-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2023-11-14T24:00:00Z",
        "2023-11-14T22:60:00Z",
        "2023-11-14T22:13:60Z",
        "2023-11-14T22:13:20+24:00",
        "2023-11-14T22:13:20+05:60",
        "2023-11-14T22:13:20Z ",
        "１０２３-11-14T22:13:20Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_malformed_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_timestamp(text)
    error = violation(event(timestamp=text))
    assert error.status == 400 and error.message.startswith("events[0].timestamp:")


def test_a_timestamp_that_is_not_a_string_is_422() -> None:
    error = violation(event(timestamp=1700000000))
    assert error.status == 422 and "must be an RFC 3339 string or null" in error.message


def test_a_null_timestamp_means_server_time() -> None:
    assert validate(event(timestamp=None))[0].timestamp_us == NOW_US


@pytest.mark.parametrize(
    ("timestamp", "ok"),
    [
        ("2023-11-14T21:13:20Z", True),  # exactly one hour old
        ("2023-11-14T21:13:19.999999Z", False),
        ("2023-11-14T22:18:20Z", True),  # exactly five minutes ahead
        ("2023-11-14T22:18:20.000001Z", False),
    ],
)
def test_the_timestamp_window_is_inclusive_at_both_edges(timestamp: str, ok: bool) -> None:
    if ok:
        assert len(validate(event(timestamp=timestamp))) == 1
    else:
        error = violation(event(timestamp=timestamp))
        assert error.status == 400 and "events[0].timestamp" in error.message


def test_the_window_is_configurable() -> None:
    body = {"events": [event(timestamp="2023-11-14T22:12:20Z")]}  # 60 s old
    assert validate_ingest(body, now=NOW, max_event_age=60)[0].timestamp_us == NOW_US - 60_000_000
    with pytest.raises(RuleViolation, match="older than the 59 s accepted"):
        validate_ingest(body, now=NOW, max_event_age=59)
    future = {"events": [event(timestamp="2023-11-14T22:13:30Z")]}
    with pytest.raises(RuleViolation, match="in the future"):
        validate_ingest(future, now=NOW, max_future_skew=5)


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (NOW_US, NOW_ISO),
        (NOW_US + 120_000, "2023-11-14T22:13:20.120Z"),
        (NOW_US + 1, "2023-11-14T22:13:20.000001Z"),
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_format_timestamp_is_utc_with_z_and_round_trips(us: int, text: str) -> None:
    assert format_timestamp(us) == text
    assert parse_timestamp(text) == us


# --- raw body parsing -------------------------------------------------------------------------------------


def test_parse_body_accepts_utf8_json() -> None:
    assert parse_body('{"events": [{"v": "é\\u00e9"}]}'.encode()) == {"events": [{"v": "éé"}]}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"nul",
        b'{"events": [1,]}',
        b'{"v": NaN}',
        b'{"v": Infinity}',
        b'{"v": -Infinity}',
        b'\xff{"events": []}',
        b'{"v": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8
        b'{"v": "\\ud800"}',  # a lone surrogate escape
        b'{"\\udfff": 1}',
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v": ' + b"9" * 5000 + b"}",  # past Python's int-digits limit
    ],
)
def test_malformed_json_is_422(raw: bytes) -> None:
    with pytest.raises(RuleViolation) as info:
        parse_body(raw)
    assert info.value.status == 422 and info.value.message.startswith("malformed JSON")


def nested(depth: int, string: bytes) -> bytes:
    return b'{"events": ' + b"[" * depth + b'"' + string + b'"' + b"]" * depth + b"}"


def test_a_lone_surrogate_is_found_at_the_deepest_nesting_the_decoder_allows() -> None:
    depth = 4000  # the decoder's own limit differs between 3.10 and 3.13: find it
    while depth > 100:
        try:
            parse_body(nested(depth, b"\\u00e9"))
            break
        except RuleViolation:
            depth -= 100
    assert depth > 100
    with pytest.raises(RuleViolation, match="lone UTF-16 surrogate"):
        parse_body(nested(depth, b"\\udc00"))


def test_paired_surrogate_escapes_are_fine() -> None:
    assert parse_body(b'{"v": "\\ud83d\\ude00"}') == {"v": "\U0001f600"}


def test_huge_numbers_outside_metadata_parse_and_inside_are_422() -> None:
    body = parse_body(
        b'{"events": [{"event_id": "e", "customer_id": "c", "event_name": "n", "metadata": {"x": 1e400}}]}'
    )
    error = violation(body=body)
    assert error.status == 422 and "events[0].metadata.x" in error.message


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2023-11-14T22:13:20.120Z", NOW_US + 120_000),
        ("2023-11-14T22:13:20.000Z", NOW_US),
        ("2023-11-14T22:13:19.999Z", NOW_US - 1000),
        ("2023-11-14T21:59:59.999Z", NOW_US - 800_001_000),
    ],
)
def test_the_sdk_millisecond_form_takes_the_fast_path_with_the_same_result(text: str, expected_us: int) -> None:
    assert parse_timestamp(text) == expected_us
    events = [event(i, timestamp=text) for i in range(3)] + [event(9, timestamp=text[:-5] + ".001Z")]
    normalized = validate(*events)
    assert [e.timestamp_us for e in normalized[:3]] == [expected_us] * 3
    assert normalized[3].timestamp_us == expected_us - expected_us % 1_000_000 + 1000


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-30T22:13:20.120Z",  # impossible date in the cached prefix
        "2023-11-14T22:13:60.120Z",
        "2023-11-14T22:13:20.1a0Z",
        "2023-11-14T22:13:20.١٢٠Z",  # non-ASCII digits
        "2023-11-14X22:13:20.120Z",
        "2023-11-14T22:13:20,120Z",
    ],
)
def test_the_fast_path_refuses_what_the_full_parser_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not"):
        parse_timestamp(text)
    error = violation(event(0, timestamp="2023-11-14T22:13:20.120Z"), event(1, timestamp=text))
    assert error.status == 400 and error.message.startswith("events[1].timestamp:")
