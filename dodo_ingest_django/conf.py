"""Settings access: one lazy object, rebuilt when ``DODO_INGEST_*`` settings change.

``conf.config`` is the validated :class:`~dodo_ingest.config.Config` read from ``django.conf.settings``
through the core schema (the same names and meaning as ``Ingestion(**kwargs)``); ``conf.ingestion`` and
``conf.meter`` are the process's shared :class:`~dodo_ingest.Ingestion` and its request-path
:class:`~dodo_ingest.request.Meter`.
All three are built on first use and cached. When a ``DODO_INGEST_*`` setting changes (``override_settings``,
pytest-django's ``settings`` fixture) Django sends ``setting_changed``: the cache is dropped, and the next
use builds a new configuration; the previous batcher is drained (it keeps its own settings) unless the
configuration did not actually change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from dodo_ingest.config import PREFIX, Config
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.request import Meter

logger = logging.getLogger("dodo_ingest.django")

SOURCE = "settings."


class DjangoSettings(Mapping[str, Any]):
    """``django.conf.settings`` seen as a read-only mapping of its ``DODO_INGEST_*`` names."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(settings, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(settings, key)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(name for name in dir(settings) if name.startswith(PREFIX)))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def load_config() -> Config:
    """Read and validate the ``DODO_INGEST_*`` settings now (uncached).

    Raises :class:`~dodo_ingest.errors.ConfigurationError` naming the setting (``settings.DODO_INGEST_…``).
    """
    return Config.load(None, DjangoSettings(), source=SOURCE)


class DodoIngestConf:
    """The lazily built configuration, shared ingestion and meter of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._ingestion: Ingestion | None = None
        self._meter: Meter | None = None
        #: The previous ingestion, kept until the next build decides whether it can be reused.
        self._stale: Ingestion | None = None

    @property
    def config(self) -> Config:
        """The validated configuration (raises ``ConfigurationError`` if a setting is invalid)."""
        config = self._config
        if config is None:
            config = self._build().config
        return config

    @property
    def ingestion(self) -> Ingestion:
        """The shared :class:`~dodo_ingest.Ingestion` (its batcher is ``ingestion.batcher``)."""
        ingestion = self._ingestion
        if ingestion is None:
            ingestion = self._build()
        return ingestion

    @property
    def meter(self) -> Meter:
        """The shared :class:`~dodo_ingest.request.Meter` the middleware records through."""
        meter = self._meter
        if meter is None:
            self._build()
            meter = self._meter
            assert meter is not None
        return meter

    def _build(self) -> Ingestion:
        with self._lock:
            if self._ingestion is not None:
                return self._ingestion
            config = load_config()
            stale, self._stale = self._stale, None
            if stale is not None and stale.config == config:
                ingestion = stale  # e.g. override_settings of an unrelated DODO_INGEST_* value and back
                config = stale.config
            else:
                ingestion = Ingestion(config=config)
                if stale is not None:
                    _retire(stale)
            self._config, self._ingestion, self._meter = config, ingestion, Meter(ingestion, config.request)
            return ingestion

    def reset(self) -> None:
        """Forget the cached configuration; the next use re-reads the settings."""
        with self._lock:
            if self._ingestion is not None:
                if self._stale is not None:
                    _retire(self._stale)
                self._stale = self._ingestion
            self._config = self._ingestion = self._meter = None


def _retire(ingestion: Ingestion) -> None:
    """Deliver what an ingestion that is no longer used still holds (within its shutdown_timeout)."""
    try:
        ingestion.shutdown()
    except Exception:  # pragma: no cover - shutdown never raises; belt and braces for invariant 1
        logger.exception("dodo-ingest could not shut down a replaced batcher")


conf = DodoIngestConf()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        conf.reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="dodo_ingest_django.conf")
