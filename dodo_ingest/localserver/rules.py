"""Dodo's acceptance rules for usage events, as pure functions (no I/O).

This module decides, for a raw ``POST /events/ingest`` body, exactly what Dodo
accepts and rejects, and normalizes the accepted events for storage. It also
parses and formats the RFC 3339 timestamps used on the wire.

Status codes
------------
Dodo's spec lists 400 for "validation errors, duplicate event IDs, or invalid
timestamps" and 422 for "malformed JSON or schema validation errors". The local
server draws the line like this, so that *422 means exactly "the published
OpenAPI schema rejects this body"* (the conformance tests check that):

* **422** - the body is not JSON (bad syntax, not UTF-8, ``NaN``/``Infinity``
  tokens, lone UTF-16 surrogates, a metadata number that overflows a double
  such as ``1e400``) or it breaks
  the schema: not an object, ``events`` missing or not an array, fewer than 1
  or more than 1000 events, an event that is not an object, a required field
  missing or not a string, ``timestamp`` neither a string nor null,
  ``metadata`` neither an object nor null, a metadata value that is not a
  string, number or boolean.
* **400** - the body fits the schema but breaks a documented rule the schema
  cannot express: an empty ``event_id``/``customer_id``/``event_name``, a
  timestamp that is not RFC 3339 or falls outside the accepted window, more
  than 50 metadata keys, a key over 100 characters, a string value over 500
  characters, the same ``event_id`` twice in one request.

Error codes follow Dodo's error-code page: every body problem (422 and 400
alike) is ``INVALID_REQUEST_BODY``, except more than 50 metadata keys, which is
``MAXIMUM_KEYS_REACHED`` (400). The status line keeps the 400/422 split above.

Lengths are counted in Unicode code points. ``metadata: null`` and
``timestamp: null`` are accepted (the schema allows them) and mean "absent".
Unknown fields are ignored. Every message names the offending field and
index, e.g. ``events[3].metadata.endpoint: value longer than 500 characters``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, NamedTuple

__all__ = [
    "INVALID_REQUEST_BODY",
    "MAXIMUM_KEYS_REACHED",
    "MAX_EVENTS_PER_REQUEST",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "NormalizedEvent",
    "RuleViolation",
    "format_timestamp",
    "parse_body",
    "parse_timestamp",
    "validate_ingest",
]

INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"
MAXIMUM_KEYS_REACHED = "MAXIMUM_KEYS_REACHED"
MAX_EVENTS_PER_REQUEST = 1000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 100
MAX_METADATA_VALUE_LENGTH = 500

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
_US_PER_SECOND = 1_000_000


class RuleViolation(Exception):
    """A request Dodo would reject: ``status`` (400/422), an error ``code`` and a ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class NormalizedEvent(NamedTuple):
    """An accepted event, ready to store.

    ``timestamp_us`` is microseconds since the Unix epoch (UTC); ``metadata`` is
    the flat metadata object (values str/int/float/bool), or None when absent.
    """

    event_id: str
    customer_id: str
    event_name: str
    timestamp_us: int
    metadata: dict[str, Any] | None


def _schema(message: str) -> RuleViolation:
    return RuleViolation(422, INVALID_REQUEST_BODY, message)


def _invalid(message: str, code: str = INVALID_REQUEST_BODY) -> RuleViolation:
    return RuleViolation(400, code, message)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def parse_body(raw: bytes) -> Any:
    """Decode a request body as strict JSON (UTF-8, no NaN/Infinity tokens, no lone surrogates).

    Raises RuleViolation(422) when the bytes are not such JSON.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _schema(f"malformed JSON: body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _schema(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise _schema(f"malformed JSON: {exc}") from None
    if "\\u" in text or "\\U" in text:
        _check_surrogates(value)
    return value


def _check_surrogates(body: Any) -> None:
    """Reject lone UTF-16 surrogates (``"\\ud800"``), which are not Unicode text (iterative: any depth)."""
    pending: list[tuple[Any, str]] = [(body, "body")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _schema(f"malformed JSON: {where[:200]} contains a lone UTF-16 surrogate") from None
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.append((key, f"{where} key"))
                pending.append((item, f"{where}.{key}"))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(value))


def parse_timestamp(text: str) -> int:
    """Parse an RFC 3339 date-time (``Z`` or ``+HH:MM`` offset, any fraction) to epoch microseconds.

    Raises ValueError when ``text`` is not RFC 3339 or names an impossible date or time.
    Fractions finer than a microsecond are truncated.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time (expected e.g. 2024-01-15T10:30:00Z)")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError("not a valid calendar date") from None
    h, m, s = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or s > 59:
        raise ValueError("not a valid time of day")
    seconds = days * 86400 + h * 3600 + m * 60 + s
    if not zulu:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise ValueError("not a valid UTC offset")
        offset = oh * 3600 + om * 60
        seconds += -offset if sign == "+" else offset
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    return seconds * _US_PER_SECOND + micros


def _parse_timestamp_cached(text: str, seconds: dict[str, int]) -> int:
    """:func:`parse_timestamp`, with a fast path for ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the SDK's own form).

    ``seconds`` caches the validated ``YYYY-MM-DDTHH:MM:SS`` part, so a batch parses each second once.
    """
    if len(text) == 24 and text[19] == "." and text[23] == "Z":
        millis = text[20:23]
        if millis.isdigit() and millis.isascii():
            prefix = text[:19]
            base = seconds.get(prefix)
            if base is None:
                base = seconds[prefix] = parse_timestamp(prefix + "Z")
            return base + int(millis) * 1000
    return parse_timestamp(text)


def format_timestamp(timestamp_us: int) -> str:
    """Format epoch microseconds as RFC 3339 UTC with ``Z`` (milli- or microsecond fraction only when set)."""
    moment = _EPOCH + timedelta(microseconds=timestamp_us)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"


def _field_error(index: int, event: dict[str, Any], name: str) -> RuleViolation:
    if name not in event:
        return _schema(f"events[{index}].{name}: missing required field")
    value = event[name]
    if not isinstance(value, str):
        return _schema(f"events[{index}].{name}: must be a string, got {json_type(value)}")
    return _invalid(f"events[{index}].{name}: must not be empty")


def json_type(value: Any) -> str:
    """The JSON Schema type name of a parsed JSON value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _metadata_error(index: int, metadata: dict[str, Any]) -> RuleViolation | None:
    if len(metadata) > MAX_METADATA_KEYS:
        message = f"events[{index}].metadata: {len(metadata)} keys, at most {MAX_METADATA_KEYS} are allowed"
        return _invalid(message, MAXIMUM_KEYS_REACHED)
    for key, value in metadata.items():
        where = f"events[{index}].metadata.{key[:MAX_METADATA_KEY_LENGTH]}"
        kind = type(value)
        if kind is str:
            if len(value) > MAX_METADATA_VALUE_LENGTH:
                return _invalid(f"{where}: value longer than {MAX_METADATA_VALUE_LENGTH} characters")
        elif kind is float:
            if math.isinf(value):
                return _schema(f"{where}: number out of range for a double (malformed JSON)")
        elif kind is not int and kind is not bool:
            return _schema(f"{where}: value must be a string, number or boolean, got {json_type(value)}")
        if len(key) > MAX_METADATA_KEY_LENGTH:
            return _invalid(f"{where}...: key longer than {MAX_METADATA_KEY_LENGTH} characters")
    return None


def _timestamp_error(index: int, value: Any, now_us: int, oldest_us: int, newest_us: int) -> RuleViolation:
    where = f"events[{index}].timestamp"
    if not isinstance(value, str):
        return _schema(f"{where}: must be an RFC 3339 string or null, got {json_type(value)}")
    try:
        ts = parse_timestamp(value)
    except ValueError as exc:
        return _invalid(f"{where}: {value[:64]!r} is {exc}")
    if ts < oldest_us:
        age = (now_us - ts) / _US_PER_SECOND
        limit = (now_us - oldest_us) / _US_PER_SECOND
        return _invalid(f"{where}: {value} is {age:.0f} s old, older than the {limit:.0f} s accepted")
    ahead = (ts - now_us) / _US_PER_SECOND
    limit = (newest_us - now_us) / _US_PER_SECOND
    return _invalid(f"{where}: {value} is {ahead:.0f} s in the future, more than the {limit:.0f} s accepted")


def validate_ingest(
    body: Any,
    *,
    now: float,
    max_event_age: float = 3600.0,
    max_future_skew: float = 300.0,
) -> list[NormalizedEvent]:
    """Apply Dodo's rules to a decoded ingest body and return the normalized events.

    ``now`` is the server clock (seconds since the epoch): it fills in missing
    timestamps and anchors the accepted window [now - max_event_age,
    now + max_future_skew]. Raises RuleViolation on the first broken rule; one
    bad event fails the whole request.
    """
    if not isinstance(body, dict):
        raise _schema(f"body: must be a JSON object, got {json_type(body)}")
    events = body.get("events")
    if not isinstance(events, list):
        if "events" not in body:
            raise _schema("events: missing required field")
        raise _schema(f"events: must be an array, got {json_type(events)}")
    if not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
        raise _schema(f"events: {len(events)} events, between 1 and {MAX_EVENTS_PER_REQUEST} are required")

    now_us = int(now * _US_PER_SECOND)
    oldest_us = now_us - int(max_event_age * _US_PER_SECOND)
    newest_us = now_us + int(max_future_skew * _US_PER_SECOND)
    parsed_times: dict[str, int] = {}
    parsed_seconds: dict[str, int] = {}
    first_index: dict[str, int] = {}
    out: list[NormalizedEvent] = []
    append = out.append
    new = tuple.__new__  # what NormalizedEvent(...) does, minus a Python-level call
    max_keys, max_key_len = MAX_METADATA_KEYS, MAX_METADATA_KEY_LENGTH
    max_value_len = MAX_METADATA_VALUE_LENGTH

    for index, event in enumerate(events):
        if type(event) is not dict:
            raise _schema(f"events[{index}]: must be an object, got {json_type(event)}")
        event_id = event.get("event_id")
        customer_id = event.get("customer_id")
        event_name = event.get("event_name")
        if type(event_id) is not str or not event_id:
            raise _field_error(index, event, "event_id")
        if type(customer_id) is not str or not customer_id:
            raise _field_error(index, event, "customer_id")
        if type(event_name) is not str or not event_name:
            raise _field_error(index, event, "event_name")

        raw_ts = event.get("timestamp")
        if raw_ts is None:
            ts = now_us
        else:
            cached = parsed_times.get(raw_ts) if type(raw_ts) is str else None
            if cached is None:
                try:
                    cached = _parse_timestamp_cached(raw_ts, parsed_seconds)
                except (ValueError, TypeError):
                    raise _timestamp_error(index, raw_ts, now_us, oldest_us, newest_us) from None
                parsed_times[raw_ts] = cached
            ts = cached
            if ts < oldest_us or ts > newest_us:
                raise _timestamp_error(index, raw_ts, now_us, oldest_us, newest_us)

        metadata = event.get("metadata")
        if metadata is not None:
            if type(metadata) is not dict:
                raise _schema(f"events[{index}].metadata: must be an object or null, got {json_type(metadata)}")
            ok = len(metadata) <= max_keys
            if ok:
                for key, value in metadata.items():
                    kind = type(value)
                    if kind is str:
                        if len(value) > max_value_len:
                            ok = False
                            break
                    elif kind is float:
                        if value - value:  # inf - inf is NaN (truthy); finite floats give 0.0
                            ok = False
                            break
                    elif kind is not int and kind is not bool:
                        ok = False
                        break
                    if len(key) > max_key_len:
                        ok = False
                        break
            if not ok:
                error = _metadata_error(index, metadata)
                if error is not None:
                    raise error

        seen = first_index.setdefault(event_id, index)
        if seen != index:
            raise _invalid(f"events[{index}].event_id: {event_id!r} duplicates events[{seen}].event_id")
        append(new(NormalizedEvent, (event_id, customer_id, event_name, ts, metadata)))
    return out
