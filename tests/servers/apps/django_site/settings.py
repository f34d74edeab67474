"""Settings of the test site: metering from ``DODO_INGEST_*`` variables, no database."""

from tests.servers.apps.common import EXCLUDED, settings_from_env

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.servers.apps.django_site.urls"
USE_TZ = True
DATABASES: dict[str, dict[str, str]] = {}
INSTALLED_APPS = ["dodo_ingest_django"]
MIDDLEWARE = ["dodo_ingest_django.middleware.DodoIngestMiddleware"]

DODO_INGEST_EXCLUDE_PATHS = EXCLUDED
globals().update({"DODO_INGEST_" + name.upper(): value for name, value in settings_from_env().items()})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dodo_ingest": {"handlers": ["console"], "level": "WARNING"}},
}
