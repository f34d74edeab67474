"""The lazy settings object: read through the core schema, cached, rebuilt by override_settings."""

from __future__ import annotations

import pytest
from django.test import override_settings
from pytest_django import Settings

from dodo_ingest.errors import ConfigurationError
from dodo_ingest_django import get_ingestion
from dodo_ingest_django.conf import DjangoSettings, conf, load_config


def test_settings_mapping_sees_only_what_is_set(settings: Settings) -> None:
    mapping = DjangoSettings()
    assert mapping["DODO_INGEST_SHUTDOWN_TIMEOUT"] == settings.DODO_INGEST_SHUTDOWN_TIMEOUT == 1.0
    assert "DODO_INGEST_EVENT_NAME" not in mapping
    with pytest.raises(KeyError):
        mapping["DODO_INGEST_EVENT_NAME"]
    assert "DODO_INGEST_API_KEY" in list(mapping)
    assert all(key.startswith("DODO_INGEST_") for key in mapping)
    assert len(mapping) == len(list(mapping))


def test_config_comes_from_settings_and_is_cached() -> None:
    config = conf.config
    assert config.base_url == "http://127.0.0.1:9"
    assert config.event_name == "api_call"  # a default
    resolver = config.request.customer_resolver
    assert resolver is not None and resolver.__name__ == "customer_from_header"
    assert conf.config is config
    assert conf.ingestion is get_ingestion()
    assert conf.meter.ingestion is conf.ingestion


def test_override_settings_rebuilds() -> None:
    before = conf.ingestion
    with override_settings(DODO_INGEST_EVENT_NAME="llm_call"):
        assert conf.config.event_name == "llm_call"
        assert conf.ingestion is not before
        assert conf.ingestion.config.event_name == "llm_call"
    assert conf.config.event_name == "api_call"


def test_unrelated_settings_keep_the_cache() -> None:
    config = conf.config
    with override_settings(SOME_OTHER_SETTING=1):
        assert conf.config is config


def test_same_values_reuse_the_ingestion() -> None:
    ingestion = conf.ingestion
    with override_settings(DODO_INGEST_EVENT_NAME="api_call"):  # the default, spelled out
        assert conf.ingestion is ingestion


def test_replaced_batcher_is_drained(settings: Settings) -> None:
    old = conf.ingestion
    old.batcher  # noqa: B018 - start a batcher to be retired
    settings.DODO_INGEST_EVENT_NAME = "other"
    new = conf.ingestion
    assert new is not old
    assert old.batcher.add("cus_1") is False  # shut down: it accepts nothing more


def test_invalid_setting_names_the_setting(settings: Settings) -> None:
    settings.DODO_INGEST_MAX_BATCH_SIZE = 5000
    with pytest.raises(ConfigurationError, match=r"settings\.DODO_INGEST_MAX_BATCH_SIZE"):
        load_config()
    with pytest.raises(ConfigurationError, match="DODO_INGEST_MAX_BATCH_SIZE"):
        conf.meter  # noqa: B018


def test_dotted_paths_are_imported(settings: Settings) -> None:
    settings.DODO_INGEST_ON_DROP = "tests.django_tests.views.customer_from_header"
    from tests.django_tests.views import customer_from_header

    assert conf.config.on_drop is customer_from_header


def test_key_from_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    del settings.DODO_INGEST_API_KEY
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", "sk_env_key_12345")
    assert conf.config.api_key == "sk_env_key_12345"
    assert "sk_env_key" not in repr(conf.config)
