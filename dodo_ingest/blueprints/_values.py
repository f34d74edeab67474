"""Small helpers the blueprints share: numbers as the JavaScript package sends them, and safe sends."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from dodo_ingest.errors import ValidationError

logger = logging.getLogger("dodo_ingest.blueprints")


def js_number(value: int | float) -> int | float:
    """The number as JavaScript's ``JSON.stringify`` writes it: an integral float goes out as an integer.

    ``2.0`` becomes ``2`` (JavaScript has one number type and writes ``2``), so the events are byte-for-byte
    those of the JavaScript package; other values are unchanged.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_amount(field: str, value: Any, *, integer: bool = False) -> int | float:
    """A finite, non-negative number (an ``int`` when ``integer``), or :class:`ValidationError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if integer else "a number"
        raise ValidationError(field, f"must be {kind}, got {type(value).__name__} {value!r}")
    if integer and not isinstance(value, int):
        raise ValidationError(field, f"must be a whole number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(field, f"must be a finite number >= 0, got {value!r}")
    return js_number(value)


def send_safely(what: str, send: Callable[[], object]) -> None:
    """Run a send that happens at the end of the host's work (a stream's close, a ``with`` block's exit):
    a failure is logged, never raised into the host app."""
    try:
        send()
    except Exception:
        logger.exception("dodo-ingest could not record the %s event; it was not sent", what)
