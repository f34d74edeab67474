"""Django settings of the dodo_ingest_django test-suite (pytest-django: DJANGO_SETTINGS_MODULE)."""

from __future__ import annotations

SECRET_KEY = "dodo-ingest-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "tests.django_tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
    "dodo_ingest_django",
    "tests.django_tests.testapp",
]

MIDDLEWARE = [
    "dodo_ingest_django.middleware.DodoIngestMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tests.django_tests.middleware.BlockMiddleware",
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
AUTH_USER_MODEL = "testapp.User"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

# dodo-ingest: the tests capture events (dodo_ingest.testing.capture_events) or point BASE_URL at the
# local server; the defaults here go nowhere useful and give up fast.
DODO_INGEST_API_KEY = "sk_test_local_0123456789abcdef"  # tests/conftest.py TEST_KEY
DODO_INGEST_BASE_URL = "http://127.0.0.1:9"
DODO_INGEST_REQUEST_TIMEOUT = 1.0
DODO_INGEST_MAX_RETRY_TIME = 1.0
DODO_INGEST_SHUTDOWN_TIMEOUT = 1.0
DODO_INGEST_CUSTOMER_ID = "tests.django_tests.views.customer_from_header"
DODO_INGEST_EXCLUDE_PATHS = [r"/health(/.*)?", "/admin"]
