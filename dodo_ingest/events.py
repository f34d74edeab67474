"""The usage event, its ids and timestamps, and Dodo's validation rules for it.

Rules (Dodo's ``POST /events/ingest`` contract): ``event_id``, ``customer_id`` and ``event_name`` are
non-empty strings of valid text (no lone surrogates); ``metadata`` is flat, its values ``str``, ``int``,
``float`` or ``bool`` (``bool`` is its own type; other numbers such as ``numpy.float64`` are sent as plain
numbers; NaN, infinities and ints beyond 64 bits are rejected), at most 50 keys, keys at most 100 characters,
string values at most 500 characters; ``timestamp`` is RFC 3339 in UTC with ``Z``, taken when the event is
created.

Two policies use these rules:

* **strict** (``track_api_call``, :meth:`Ingestion.event`): any violation raises
  :class:`~dodo_ingest.errors.ValidationError` naming the field.
* **lenient** (the batch and middleware paths, which must never raise into a request): a ``None``
  metadata value is omitted, a string value longer than 500 characters is truncated and a lone surrogate in
  a string value becomes ``?`` (all counted as ``repaired``); anything else that breaks a rule drops the
  event with reason ``invalid``.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dodo_ingest.errors import ValidationError

MetadataValue = str | int | float | bool

MAX_METADATA_KEYS = 50
MAX_KEY_LENGTH = 100
MAX_VALUE_LENGTH = 500
#: Dodo rejects events older than one hour; keep a margin for clock skew and the request itself.
MAX_EVENT_AGE = 3600.0 - 120.0


# --- ids --------------------------------------------------------------------------------------------------


class _IdSource:
    """Unique, cheap event ids: a random per-process prefix (80 bits) and a counter.

    The prefix belongs to one process id and is renewed as soon as the pid changes. That check, not an
    at-fork hook, is what keeps ids unique across processes: uWSGI and a raw ``fork()`` through ctypes fork in
    C without running Python's at-fork hooks. ``(pid, prefix, counter)`` is one tuple, swapped in one
    assignment, so threads racing to renew it never pair one prefix with another's counter;
    ``next(itertools.count())`` is atomic in CPython, so no lock is needed.
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = self._fresh()

    @staticmethod
    def _fresh() -> tuple[int, str, itertools.count[int]]:
        return os.getpid(), "evt_" + os.urandom(10).hex() + "_", itertools.count(1)

    def new_id(self) -> str:
        state = self._state
        if state[0] != os.getpid():
            state = self._state = self._fresh()
        return state[1] + format(next(state[2]), "x")


_ids = _IdSource()


def new_event_id() -> str:
    """A new unique event id, e.g. ``evt_3f9a1c2b7e4d5a60c1d2_1a``."""
    return _ids.new_id()


# --- timestamps -------------------------------------------------------------------------------------------


_second_prefix: tuple[int, str] = (-1, "")


def format_timestamp(epoch: float) -> str:
    """RFC 3339 in UTC with millisecond precision and ``Z``: ``2026-11-21T19:55:30.123Z``.

    The ``YYYY-MM-DDTHH:MM:SS`` part is cached per second: this runs once per event on the flush thread.
    """
    global _second_prefix
    second, millis = divmod(round(epoch * 1000), 1000)  # rounded: .123 s is often 0.12299999 as a float
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{millis:03d}Z"


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)?")


def _parse_rfc3339(value: str) -> datetime | None:
    """RFC 3339 with any number of fraction digits (``datetime.fromisoformat`` takes only 3 or 6 before 3.11)."""
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        return None
    date, clock, fraction, zone = match.groups()
    fraction = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone in ("Z", "z") else (zone or "")
    try:
        return datetime.fromisoformat(f"{date}T{clock}.{fraction}{zone}")
    except ValueError:
        return None


def _timestamp_from(value: datetime | str | float | None) -> tuple[float, str]:
    if value is None:
        now = time.time()
        return now, format_timestamp(now)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(
                "timestamp", "naive datetime; pass an aware datetime such as datetime.now(timezone.utc)"
            )
        epoch = value.timestamp()
        return epoch, format_timestamp(epoch)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), format_timestamp(float(value))
    if isinstance(value, str):
        parsed = _parse_rfc3339(value)
        if parsed is None or parsed.tzinfo is None:
            raise ValidationError(
                "timestamp",
                f"{value!r} is not an RFC 3339 timestamp with a time zone (e.g. '2026-11-21T19:55:30.123Z')",
            )
        epoch = parsed.timestamp()
        return epoch, format_timestamp(epoch)
    raise ValidationError(
        "timestamp", f"expected a datetime, an RFC 3339 string or epoch seconds, got {type(value).__name__}"
    )


# --- validation -------------------------------------------------------------------------------------------

#: Dodo's integers are 64-bit; a larger int is refused here (with its key named) rather than by Dodo.
MAX_INT = 2**63 - 1


def describe(value: Any) -> str:
    """``repr(value)`` for an error message, shortened, and safe when ``__repr__`` itself raises."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} whose repr() raised>"
    return text if len(text) <= 60 else text[:57] + "..."


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent as UTF-8: no lone surrogates (``"\\udc80"``, which Dodo rejects)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_identifier(name: str, value: Any) -> str | None:
    """The problem with a required string field, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if not is_utf8(value):
        return "contains a lone surrogate (not valid UTF-8); decode the bytes it came from properly"
    return None


def check_identifiers(customer_id: Any, event_name: Any, event_id: Any) -> None:
    """Raise :class:`ValidationError` naming the first bad one of an event's ids (``event_id`` may be None)."""
    for name, value in (("customer_id", customer_id), ("event_name", event_name), ("event_id", event_id)):
        if value is None and name == "event_id":
            continue
        problem = check_identifier(name, value)
        if problem:
            raise ValidationError(name, problem)


def clean_metadata(metadata: Any, *, strict: bool) -> tuple[dict[str, MetadataValue], int]:
    """Validate metadata; return a clean copy and the number of repairs made (lenient policy only).

    Raises :class:`ValidationError` naming the field (``metadata.<key>``) for a violation that is not
    repaired under the given policy. Numbers of other types (``numpy.float64``, ``Decimal``, int enums) are
    sent as plain ``int`` / ``float``; NaN, infinities and ints outside 64 bits are refused.
    """
    if metadata is None:
        return {}, 0
    if not strict and type(metadata) is dict and _encode_if_plain(metadata) is not None:
        return metadata, 0  # the common case: already fine as it is
    if not isinstance(metadata, Mapping):
        raise ValidationError("metadata", f"must be a dict of str -> str/int/float/bool, got {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError("metadata", f"has {len(metadata)} keys; Dodo accepts at most {MAX_METADATA_KEYS}")
    clean: dict[str, MetadataValue] = {}
    repairs = 0
    for raw_key, raw_value in metadata.items():
        if not isinstance(raw_key, str) or not raw_key:
            raise ValidationError("metadata", f"keys must be non-empty strings, got {describe(raw_key)}")
        key = str.__str__(raw_key)
        if len(key) > MAX_KEY_LENGTH:
            raise ValidationError(
                f"metadata.{key[:40]}...", f"key is {len(key)} characters; Dodo accepts at most {MAX_KEY_LENGTH}"
            )
        if not is_utf8(key):
            raise ValidationError("metadata", f"key {key.encode('utf-8', 'replace')!r} contains a lone surrogate")
        if raw_value is None and not strict:
            repairs += 1
            continue
        value, repaired = _clean_value(key, raw_value, strict)
        repairs += repaired
        clean[key] = value
    return clean, repairs


def _clean_value(key: str, value: Any, strict: bool) -> tuple[MetadataValue, int]:
    """One metadata value as Dodo takes it, and whether it was repaired (lenient policy only)."""
    field = f"metadata.{key}"
    if isinstance(value, str):
        value = str.__str__(value)  # the plain value, even for enums whose __str__ differs
        repairs = 0
        if not is_utf8(value):
            if strict:
                raise ValidationError(field, "contains a lone surrogate (not valid UTF-8)")
            value = value.encode("utf-8", "replace").decode("utf-8")
            repairs = 1
        if len(value) > MAX_VALUE_LENGTH:
            if strict:
                raise ValidationError(
                    field, f"value is {len(value)} characters; Dodo accepts at most {MAX_VALUE_LENGTH}"
                )
            value = value[:MAX_VALUE_LENGTH]
            repairs = 1
        return value, repairs
    if isinstance(value, bool):
        return bool(value), 0
    if isinstance(value, numbers.Integral):
        number = int(value)
        if not -MAX_INT - 1 <= number <= MAX_INT:
            raise ValidationError(field, "integer is outside the signed 64-bit range; send it as a string")
        return number, 0
    if isinstance(value, numbers.Real):
        try:
            real = float(value)
        except (OverflowError, ValueError):
            real = math.nan
        if not math.isfinite(real):
            raise ValidationError(field, f"{describe(value)} is not a finite number; JSON has no NaN or infinity")
        return real, 0
    raise ValidationError(
        field,
        f"{type(value).__name__} is not allowed; Dodo metadata is flat: use str, "
        "int, float or bool (convert it, e.g. str(value), or flatten nested values into their own keys)",
    )


# --- the event --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One usage event, exactly as it goes on the wire (see :meth:`to_dict`)."""

    event_id: str
    customer_id: str
    event_name: str
    timestamp: str
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    #: Creation time in epoch seconds (not sent; used to drop events Dodo would reject as too old).
    created: float = field(default=0.0, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        customer_id: str,
        event_name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        timestamp: datetime | str | float | None = None,
    ) -> Event:
        """Build and validate an event (strict policy): raises :class:`ValidationError` naming the field."""
        check_identifiers(customer_id, event_name, event_id)
        clean, _ = clean_metadata(metadata, strict=True)
        created, stamp = _timestamp_from(timestamp)
        return cls(event_id or new_event_id(), customer_id, event_name, stamp, clean, created)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent to Dodo."""
        return {
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "event_name": self.event_name,
            "timestamp": self.timestamp,
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        """The event serialized once, ASCII-only, so ``len()`` is its size in bytes."""
        return encode_event(self.event_id, self.customer_id, self.event_name, self.timestamp, self.metadata)


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii

#: JSON for flat, validated metadata, built once. (A private C encoder of the json module would save about
#: 0.9 µs per event on the flush thread: not worth a private API at Dodo's ~1,700 events/s per key.)
_encode_metadata: Callable[[Mapping[str, MetadataValue]], str] = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, check_circular=False
).encode


_int_repr = int.__repr__
_float_repr = float.__repr__  # a finite float's repr is valid JSON ("0.1", "1e-05")


def _encode_if_plain(metadata: dict[Any, Any]) -> str | None:
    """Check and encode flat metadata in one pass, when every key and value is already fine as it is (ASCII
    strings within Dodo's limits, ints within 64 bits, finite floats, bools); None otherwise."""
    if len(metadata) > MAX_METADATA_KEYS:
        return None
    parts = []
    for key, value in metadata.items():
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii():
            return None
        kind = type(value)
        if kind is str:
            if len(value) > MAX_VALUE_LENGTH or not value.isascii():
                return None
            encoded = _quote(value)
        elif kind is int:
            if not -MAX_INT - 1 <= value <= MAX_INT:
                return None
            encoded = _int_repr(value)
        elif kind is float:
            if value - value != 0.0:  # NaN or an infinity
                return None
            encoded = _float_repr(value)
        elif kind is bool:
            encoded = "true" if value else "false"
        else:
            return None
        parts.append(f"{_quote(key)}:{encoded}")
    return "{" + ",".join(parts) + "}"


def encode_event(
    event_id: str, customer_id: str, event_name: str, timestamp: str, metadata: Mapping[str, MetadataValue]
) -> str:
    """One event as ASCII JSON (``len()`` is its size in bytes), without building an intermediate dict."""
    return (
        f'{{"event_id":{_quote(event_id)},"customer_id":{_quote(customer_id)},'
        f'"event_name":{_quote(event_name)},"timestamp":"{timestamp}","metadata":{_encode_metadata(metadata)}}}'
    )


def encode_plain(customer_id: Any, event_name: Any, metadata: Any, created: float) -> str | None:
    """The flush thread's fast path: check and encode a queued event in one step, with a new event id.

    Applies only when nothing needs a message or a repair (ids are non-blank ASCII strings, metadata is a flat
    dict that is already valid); returns None otherwise, and the caller takes the general path.
    """
    if (
        type(customer_id) is not str
        or type(event_name) is not str
        or not customer_id.isascii()
        or not event_name.isascii()
        or not customer_id.strip()
        or not event_name.strip()
    ):
        return None
    if metadata is None:
        encoded_metadata: str | None = "{}"
    elif type(metadata) is dict:
        encoded_metadata = _encode_if_plain(metadata)
    else:
        return None
    if encoded_metadata is None:
        return None
    return (
        f'{{"event_id":"{_ids.new_id()}","customer_id":{_quote(customer_id)},'
        f'"event_name":{_quote(event_name)},"timestamp":"{format_timestamp(created)}","metadata":{encoded_metadata}}}'
    )


def encode_batch(parts: list[str]) -> bytes:
    """The request body for events already serialized with :meth:`Event.to_json`."""
    return ('{"events":[' + ",".join(parts) + "]}").encode("ascii")
