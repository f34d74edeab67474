"""The Django app: registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class DodoIngestConfig(AppConfig):
    """``INSTALLED_APPS = [..., "dodo_ingest_django"]``: system checks and the ``dodo_ingest_check`` command."""

    name = "dodo_ingest_django"
    verbose_name = "Dodo Payments usage metering"

    def ready(self) -> None:
        """Register the system checks (``python manage.py check``)."""
        from dodo_ingest_django import checks

        checks.register()
