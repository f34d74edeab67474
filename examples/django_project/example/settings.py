"""Settings of the example project: metering configured in a few lines.

The API key and host come from the environment, as in Dodo's own SDKs:
``DODO_PAYMENTS_API_KEY`` and (for the local server) ``DODO_PAYMENTS_BASE_URL``.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"
USE_TZ = True
DATABASES: dict[str, dict[str, str]] = {}  # the example needs none

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "dodo_ingest_django",
]

MIDDLEWARE = [
    "dodo_ingest_django.middleware.DodoIngestMiddleware",  # first, so it sees every response
    "django.middleware.common.CommonMiddleware",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}

# --- dodo-ingest ---------------------------------------------------------------------------------------
DODO_INGEST_API_KEY = os.environ.get("DODO_PAYMENTS_API_KEY")
DODO_INGEST_ENVIRONMENT = os.environ.get("DODO_INGEST_ENVIRONMENT", "test_mode")
DODO_INGEST_CUSTOMER_RESOLVER = "example.billing.customer_for"  # (request, response) -> "cus_..." | None
DODO_INGEST_EXCLUDE_PATHS = [r"/admin/.*", "/healthz"]
DODO_INGEST_FLUSH_INTERVAL = float(os.environ.get("DODO_INGEST_FLUSH_INTERVAL", "5"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dodo_ingest": {"handlers": ["console"], "level": "WARNING"}},
}
