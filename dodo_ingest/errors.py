"""Every exception dodo-ingest raises, in one place.

Only configuration (at start-up) and the explicit synchronous API (`track_api_call`, `Ingestion.send`)
raise. The batch and middleware paths never raise into the caller: they count and log instead.
"""

from __future__ import annotations


class DodoIngestError(Exception):
    """Base class of every error raised by dodo-ingest."""


class ConfigurationError(DodoIngestError, ValueError):
    """A setting is missing or invalid. The message names the setting and says how to fix it."""


class ValidationError(DodoIngestError, ValueError):
    """An event breaks Dodo's rules. `field` names the offending field (e.g. ``metadata.endpoint``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DeliveryError(DodoIngestError):
    """Dodo did not accept a synchronous send (after retries, where retrying made sense).

    ``status`` is the last HTTP status (``None`` for a network error), ``reason`` the drop reason
    (see :data:`dodo_ingest.stats.DROP_REASONS`).
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str = "rejected") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class AuthenticationError(DeliveryError):
    """Dodo answered 401 or 403: the API key is wrong, revoked, or for the other environment."""
