"""``python manage.py dodo_ingest_check``: validate the configuration, then test connectivity and the key.

Exit status: 0 when everything is fine, 1 when the host cannot be reached or rejects the key, 2 when the
configuration is invalid. The connectivity test is one read-only ``GET /events?page_size=1``; no event is
sent. The API key is never printed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dodo_ingest.config import mask_key
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.transport import check_health
from dodo_ingest_django.checks import check_middleware, check_settings
from dodo_ingest_django.conf import load_config


class Command(BaseCommand):
    """Validate the dodo-ingest configuration and check connectivity and credentials."""

    help = (
        "Validate the DODO_INGEST_* settings, then check that the configured Dodo host is reachable and "
        "accepts the API key (one read-only request; no event is sent)."
    )
    requires_system_checks: list[str] = []  # this command reports the checks itself

    def add_arguments(self, parser: CommandParser) -> None:
        """``--skip-connection``: only validate the configuration."""
        parser.add_argument(
            "--skip-connection",
            action="store_true",
            help="Only validate the configuration; do not contact the host.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the configuration, the check results and the verdict; raise CommandError on failure."""
        problems = check_settings() + check_middleware()
        for problem in problems:
            style = self.style.ERROR if problem.is_serious() else self.style.WARNING
            self.stdout.write(style(f"{problem.id}: {problem.msg}"))
            if problem.hint:
                self.stdout.write(f"    hint: {problem.hint}")
        try:
            config = load_config()
        except ConfigurationError as exc:
            raise CommandError(f"FAILED: the configuration is invalid: {exc}", returncode=2) from None
        if any(p.is_serious() for p in problems):
            raise CommandError("FAILED: fix the errors above (python manage.py check lists them too).", returncode=2)
        self.stdout.write(f"host:        {config.host} ({config.environment})")
        self.stdout.write(f"event name:  {config.event_name}")
        self.stdout.write(f"API key:     {mask_key(config.api_key)}")
        self.stdout.write(f"enabled:     {config.enabled}")
        self.stdout.write("configuration: OK")
        if options["skip_connection"]:
            self.stdout.write(self.style.SUCCESS("OK: the configuration is valid (connection not checked)."))
            return
        if not config.api_key:
            self.stdout.write(
                self.style.WARNING(
                    "OK: metering is disabled (DODO_INGEST_ENABLED = False) and no API key is set; "
                    "nothing to connect with."
                )
            )
            return
        health = check_health(config)
        ok, verdict = health.healthy, health.message
        if not ok:
            raise CommandError(f"FAILED: {verdict}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"OK: {verdict}"))
