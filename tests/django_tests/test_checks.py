"""System checks: one test per id, plus a clean bill of health for the test project."""

from __future__ import annotations

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from pytest_django import Settings

from dodo_ingest.config import SETTINGS
from dodo_ingest_django.checks import (
    CALLABLE_SETTINGS,
    MIDDLEWARE_PATH,
    PATH_SETTINGS,
    check_middleware,
    check_settings,
)

MW = MIDDLEWARE_PATH


def ids(settings_only: bool = False) -> list[str]:
    messages = check_settings() if settings_only else check_settings() + check_middleware()
    return [m.id or "" for m in messages]


def test_test_project_is_clean() -> None:
    assert ids() == []
    assert list(checks.run_checks(tags=["dodo_ingest"])) == []


def test_e001_missing_api_key(settings: Settings) -> None:
    del settings.DODO_INGEST_API_KEY
    assert ids() == ["dodo_ingest.E001"]
    settings.DODO_INGEST_API_KEY = "  "
    assert ids() == ["dodo_ingest.E001"]


def test_e001_not_raised_with_env_key_or_when_disabled(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    del settings.DODO_INGEST_API_KEY
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", "sk_from_env")
    assert ids() == []
    monkeypatch.delenv("DODO_PAYMENTS_API_KEY")
    settings.DODO_INGEST_ENABLED = False
    assert ids() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DODO_INGEST_FLUSH_INTERVAL", "5"),
        ("DODO_INGEST_MAX_BATCH_SIZE", 10.5),
        ("DODO_INGEST_SYNC_MODE", "yes"),
        ("DODO_INGEST_ENVIRONMENT", 1),
        ("DODO_INGEST_EXCLUDE_PATHS", "/admin"),
        ("DODO_INGEST_EXCLUDE_METHODS", "OPTIONS"),
        ("DODO_INGEST_API_KEY", 12345),
    ],
)
def test_e002_wrong_type(settings: Settings, name: str, value: object) -> None:
    setattr(settings, name, value)
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.E002"]
    assert name in messages[0].msg


def test_e003_unimportable_dotted_path(settings: Settings) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = "myapp.billing.customer_for"
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.E003"]
    assert "DODO_INGEST_CUSTOMER_ID" in messages[0].msg
    settings.DODO_INGEST_CUSTOMER_ID = "tests.django_tests.views.no_such_function"
    assert ids(settings_only=True) == ["dodo_ingest.E003"]
    settings.DODO_INGEST_CUSTOMER_ID = "nodots"
    assert ids(settings_only=True) == ["dodo_ingest.E003"]


def test_e004_not_callable(settings: Settings) -> None:
    settings.DODO_INGEST_ON_ERROR = "tests.django_tests.views.CHUNKS"
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.E004"]
    assert "DODO_INGEST_ON_ERROR" in messages[0].msg
    settings.DODO_INGEST_ON_ERROR = 42
    assert ids(settings_only=True) == ["dodo_ingest.E004"]


def test_e005_invalid_regex(settings: Settings) -> None:
    settings.DODO_INGEST_EXCLUDE_PATHS = ["/ok", r"/admin/(.*"]
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.E005"]
    assert "/admin/(.*" in messages[0].msg
    settings.DODO_INGEST_INCLUDE_PATHS = ["[a-"]
    assert ids(settings_only=True) == ["dodo_ingest.E005", "dodo_ingest.E005"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DODO_INGEST_MAX_BATCH_SIZE", 5000),
        ("DODO_INGEST_FLUSH_INTERVAL", 5000),  # milliseconds by mistake
        ("DODO_INGEST_SHUTDOWN_TIMEOUT", -1),
        ("DODO_INGEST_ENVIRONMENT", "production"),
        ("DODO_INGEST_BASE_URL", "http://dodo.example.com"),  # the key would travel unencrypted
        ("DODO_INGEST_FALLBACK_CUSTOMER_ID", "anonymous"),
        ("DODO_INGEST_EVENT_NAME", ""),
    ],
)
def test_e006_out_of_range_or_invalid(settings: Settings, name: str, value: object) -> None:
    setattr(settings, name, value)
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.E006"]
    assert name in messages[0].msg


def test_e007_middleware_absent(settings: Settings) -> None:
    settings.MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    messages = check_middleware()
    assert [m.id for m in messages] == ["dodo_ingest.E007"]
    assert messages[0].hint and MW in messages[0].hint


def test_e008_middleware_twice(settings: Settings) -> None:
    settings.MIDDLEWARE = [MW, "django.contrib.sessions.middleware.SessionMiddleware", MW]
    assert [m.id for m in check_middleware()] == ["dodo_ingest.E008"]


def test_w001_middleware_not_at_the_top(settings: Settings) -> None:
    settings.MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",  # allowed above
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        MW,
    ]
    messages = check_middleware()
    assert [m.id for m in messages] == ["dodo_ingest.W001"]
    assert "CsrfViewMiddleware" in messages[0].msg
    assert "SecurityMiddleware" not in messages[0].msg
    settings.MIDDLEWARE = ["django.middleware.security.SecurityMiddleware", MW]
    assert check_middleware() == []


def test_w002_unknown_setting(settings: Settings) -> None:
    settings.DODO_INGEST_CUSTOMER = "x.y"
    messages = check_settings()
    assert [m.id for m in messages] == ["dodo_ingest.W002"]
    assert messages[0].hint == "Did you mean DODO_INGEST_CUSTOMER_ID?"


def test_manage_py_check_fails_on_errors(settings: Settings) -> None:
    settings.DODO_INGEST_MAX_QUEUE_SIZE = 0
    with pytest.raises(SystemCheckError, match=r"dodo_ingest\.E006"):
        call_command("check")


def test_every_setting_is_classified() -> None:
    """A setting added to the core schema must be sorted into E002/E006 correctly (or listed here)."""
    for setting in SETTINGS:
        default = setting.default
        assert (
            setting.name in CALLABLE_SETTINGS
            or setting.name in PATH_SETTINGS
            or default is None
            or isinstance(default, (bool, int, float, str, tuple))
        ), setting.name
