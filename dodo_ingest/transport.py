"""HTTP transport: one ``requests.Session`` that POSTs ready-made bodies to ``/events/ingest``.

The transport sends and classifies; it never retries or sleeps (that policy lives in
:mod:`dodo_ingest.delivery`, where every wait can be interrupted). TLS verification is always on;
the API key travels only in the ``Authorization`` header and never appears in a repr or a message.
"""

from __future__ import annotations

import email.utils
import math
import platform
import time
from dataclasses import dataclass
from typing import Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from dodo_ingest._version import __version__
from dodo_ingest.config import Config

USER_AGENT = f"dodo-ingest-python/{__version__} python/{platform.python_version()} requests/{requests.__version__}"
INGEST_PATH = "/events/ingest"
#: How long a Retry-After may make us wait, at most (the official SDK's cap).
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class Answer:
    """What became of one POST: an HTTP status, or ``status=None`` with the network error's name."""

    status: int | None
    message: str = ""
    retry_after: float | None = None
    #: The server's ``x-should-retry`` header (what Dodo's official SDKs read), when it sent one.
    should_retry: bool | None = None
    #: The TLS certificate could not be verified: a configuration problem, not a network blip.
    tls_error: bool = False

    @property
    def ok(self) -> bool:
        """Dodo accepted the request."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth sending again with the same event ids: network errors, timeouts, 408, 409, 429, 5xx, or what
        the server's ``x-should-retry`` says (never for 401/403)."""
        if self.should_retry is not None and self.status not in (401, 403):
            return self.should_retry
        return self.status is None or self.status in (408, 409, 429) or self.status >= 500


class Transport(Protocol):
    """Anything that can POST a body to Dodo (a fake in unit tests, :class:`IngestClient` for real)."""

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send one request body (waiting at most ``timeout`` seconds for the answer, if given); never raise."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Release connections."""
        ...  # pragma: no cover


class _BearerAuth(AuthBase):
    """Bearer auth as an ``AuthBase`` so a ``~/.netrc`` entry cannot replace it; repr hides the key."""

    def __init__(self, key: str) -> None:
        self._header = f"Bearer {key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<BearerAuth ***>"


class IngestClient:
    """POSTs event batches to ``{host}/events/ingest`` over one keep-alive session.

    Create it on the thread that uses it (the flush thread); a ``Session`` is not shared across threads.
    """

    def __init__(self, config: Config) -> None:
        self.url = config.host + INGEST_PATH
        self.timeout = (min(config.request_timeout, 5.0), config.request_timeout)
        self._auth = _BearerAuth(config.api_key or "")
        self._session: requests.Session | None = None

    def __repr__(self) -> str:
        return f"<IngestClient {self.url}>"

    def _open(self) -> requests.Session:
        session = requests.Session()
        # One connection is all a single flush thread needs; retries are our own (interruptible) policy.
        session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
        session.headers.update(
            {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "application/json"}
        )
        session.auth = self._auth
        return session

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send one body. Never raises: network failures come back as ``Answer(status=None)``."""
        if self._session is None:
            self._session = self._open()
        limit = self.timeout if timeout is None else (min(self.timeout[0], timeout), min(self.timeout[1], timeout))
        try:
            response = self._session.post(self.url, data=body, timeout=limit, verify=True)
        except requests.Timeout as exc:
            return Answer(None, f"timeout: {type(exc).__name__}")
        except requests.exceptions.SSLError as exc:
            self.close()
            return Answer(None, f"TLS error: {_tls_reason(exc)}", tls_error=True)
        except requests.RequestException as exc:
            # Drop the pooled connection: after a reset it may be half-closed.
            self.close()
            return Answer(None, f"network error: {type(exc).__name__}")
        except Exception as exc:  # e.g. a header value the HTTP stack refuses: never raise into the flush thread
            self.close()
            return Answer(None, f"request failed: {type(exc).__name__}")
        should_retry = _should_retry(response.headers)
        if response.ok:
            return Answer(response.status_code)
        return Answer(response.status_code, _error_message(response), parse_retry_after(response.headers), should_retry)

    def close(self) -> None:
        """Close the session's connections (idempotent)."""
        if self._session is not None:
            self._session.close()
            self._session = None


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        message = body.get("message") or body.get("code") or ""
    except ValueError:
        message = response.text[:200]
    except AttributeError:
        message = ""
    return f"HTTP {response.status_code}" + (f": {message}" if message else "")


def _tls_reason(exc: Exception) -> str:
    """The certificate problem in a few words (no URL: it is in the log line already)."""
    text = str(exc)
    marker = "certificate verify failed"
    if marker in text:
        tail = text.split(marker, 1)[1].split(")", 1)[0].strip(" :")
        return f"{marker}: {tail}" if tail else marker
    return type(exc).__name__


def _should_retry(headers: requests.structures.CaseInsensitiveDict[str]) -> bool | None:
    value = (headers.get("x-should-retry") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def parse_retry_after(
    headers: requests.structures.CaseInsensitiveDict[str] | dict[str, str], now: float | None = None
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), within [0, 60].

    Anything unparsable or not finite (``nan``, ``inf``, ``1e999``) counts as absent: the backoff decides.
    """
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value_ms = float(millis)
        except ValueError:
            value_ms = math.nan
        if math.isfinite(value_ms):
            return min(max(value_ms / 1000.0, 0.0), MAX_RETRY_AFTER)
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:  # "-0000": a date without a known zone
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class HealthCheck:
    """The verdict of a health check; truthy when healthy.

    ``reason`` is ``"ok"``, ``"rate_limited"`` (reachable, key not rejected, 429: still healthy),
    ``"unauthorized"`` (401/403: wrong, revoked, or the other environment's key), ``"unavailable"`` (5xx),
    ``"unreachable"`` (network error or timeout) or ``"error"`` (any other answer, e.g. 404 for a wrong base URL).
    """

    healthy: bool
    reason: str
    message: str
    status_code: int | None = None

    def __bool__(self) -> bool:
        return self.healthy


def check_health(config: Config, timeout: float | None = None) -> HealthCheck:
    """One read-only request (``GET /events?page_size=1``) with the configured key; never raises, sends nothing."""
    seconds = config.request_timeout if timeout is None else timeout
    try:
        response = requests.get(
            config.host + "/events",
            params={"page_size": 1},
            auth=_BearerAuth(config.api_key or ""),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            timeout=(min(seconds, 5.0), seconds),
            verify=True,
        )
    except requests.RequestException as exc:
        return HealthCheck(False, "unreachable", f"cannot reach {config.host}: {type(exc).__name__}")
    status = response.status_code
    if 200 <= status < 300:
        return HealthCheck(
            True, "ok", f"connected to {config.host} ({config.environment}); the API key was accepted", status
        )
    if status == 429:
        return HealthCheck(True, "rate_limited", f"{config.host} is rate limiting this key (HTTP 429)", status)
    if status in (401, 403):
        return HealthCheck(
            False,
            "unauthorized",
            f"{config.host} rejected the API key (HTTP {status}): check that it belongs to "
            f"{config.environment} and has not been revoked",
            status,
        )
    if status >= 500:
        return HealthCheck(False, "unavailable", f"{config.host} answered HTTP {status}", status)
    return HealthCheck(False, "error", f"{config.host} answered HTTP {status}; check base_url", status)
