"""Every exception dodo-ingest raises, in one place.

Only configuration (at start-up) and the explicit synchronous API (`track_api_call`, `Ingestion.send`)
raise. The batch and middleware paths never raise into the caller: they count and log instead.
"""

from __future__ import annotations

from typing import Any


class DodoIngestError(Exception):
    """Base class of every error raised by dodo-ingest.

    Like the JavaScript package's ``DodoIngestionError``, every error has a ``code`` (``VALIDATION_ERROR``,
    ``API_ERROR``, ``CONFIGURATION_ERROR``, ``PROVIDER_ERROR``), a ``status_code`` and ``details``.
    """

    code: str = "DODO_INGESTION_ERROR"
    status_code: int | None = None
    details: Any = None


class ConfigurationError(DodoIngestError, ValueError):
    """A setting is missing or invalid. The message names the setting and says how to fix it."""

    code = "CONFIGURATION_ERROR"
    status_code = 500


class ValidationError(DodoIngestError, ValueError):
    """An event breaks Dodo's rules. `field` names the offending field (e.g. ``metadata.endpoint``)."""

    code = "VALIDATION_ERROR"
    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class APIError(DodoIngestError):
    """Dodo's API did not accept a request (the JavaScript package's ``APIError``).

    ``status_code`` is the HTTP status when one is known (``None`` for a network error or a timeout).
    """

    code = "API_ERROR"

    def __init__(self, message: str, status_code: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.details = details


class DeliveryError(APIError):
    """Dodo did not accept a synchronous send (after retries, where retrying made sense).

    ``status`` is the last HTTP status (``None`` for a network error), ``reason`` the drop reason
    (see :data:`dodo_ingest.stats.DROP_REASONS`).
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str = "rejected") -> None:
        super().__init__(message, status)
        self.status = status
        self.reason = reason


class AuthenticationError(DeliveryError):
    """Dodo answered 401 or 403: the API key is wrong, revoked, or for the other environment."""


class ProviderError(DodoIngestError):
    """An LLM client or response cannot be metered (the JavaScript package's ``ProviderError``)."""

    code = "PROVIDER_ERROR"
    status_code = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


#: The JavaScript package's name for :class:`DodoIngestError`.
DodoIngestionError = DodoIngestError
