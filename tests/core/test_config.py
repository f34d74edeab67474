"""The one configuration schema: defaults, precedence, and a clear error for every invalid value."""

from __future__ import annotations

import pytest

from dodo_ingest import ConfigurationError
from dodo_ingest.config import SETTINGS, Config, settings_table

KEY = "sk_test_SECRET_value_123"


def load(**kwargs: object) -> Config:
    kwargs.setdefault("api_key", KEY)
    return Config.load(kwargs)


def test_defaults_match_the_documented_schema() -> None:
    config = load()
    assert config.environment == "test_mode"
    assert config.host == "https://test.dodopayments.com"
    assert config.event_name == "api_call"
    assert config.max_batch_size == 100
    assert config.flush_interval == 5.0
    assert config.request.exclude_methods == frozenset()  # only CORS preflights are skipped by default
    assert config.request.skip_cors_preflight is True
    for setting in SETTINGS:  # the dataclass defaults and the documented defaults are the same values
        if setting.name in ("api_key",):
            continue
        holder = Config().request if setting.scope == "request" else Config()
        assert getattr(holder, setting.name) == setting.parse(setting.default), setting.name


def test_live_mode_host_and_base_url_override() -> None:
    assert load(environment="live_mode").host == "https://live.dodopayments.com"
    assert load(base_url="http://127.0.0.1:8765/").host == "http://127.0.0.1:8765"


def test_environment_variables_are_fallbacks() -> None:
    env = {"DODO_PAYMENTS_API_KEY": "from_env", "DODO_PAYMENTS_BASE_URL": "http://localhost:9"}
    config = Config.load({}, environ=env)
    assert config.api_key == "from_env"
    assert config.host == "http://localhost:9"
    assert Config.load({"api_key": "explicit"}, environ=env).api_key == "explicit"


def test_keyword_arguments_win_over_the_mapping() -> None:
    mapping = {"DODO_INGEST_API_KEY": KEY, "DODO_INGEST_EVENT_NAME": "from_mapping", "OTHER": 1}
    assert Config.load({}, mapping).event_name == "from_mapping"
    assert Config.load({"event_name": "from_kwargs"}, mapping).event_name == "from_kwargs"


def test_missing_key_names_every_way_to_set_it() -> None:
    with pytest.raises(ConfigurationError, match=r"api_key=.*DODO_PAYMENTS_API_KEY"):
        Config.load({}, environ={})
    with pytest.raises(ConfigurationError, match="DODO_INGEST_API_KEY"):
        Config.load({}, {}, environ={})
    assert Config.load({"enabled": False}, environ={}).api_key is None


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("flush_interval", 5000, "seconds, not milliseconds.*use 5 for 5000 ms"),
        ("flush_interval", 0, "between"),
        ("flush_interval", "5", "expected a number"),
        ("max_batch_size", 1001, "between 1 and 1000"),
        ("max_batch_size", 10.5, "whole number"),
        ("max_batch_size", True, "whole number"),
        ("environment", "production", "'test_mode' or 'live_mode'"),
        ("base_url", "ftp://x", "http"),
        ("base_url", "http://api.example.com", "use https"),
        ("event_name", "", "non-empty"),
        ("max_queue_size", 0, "between"),
        ("request_timeout", float("nan"), "between"),
        ("sync_mode", "yes", "True or False"),
        ("on_error", 42, "callable"),
        ("customer_id", "no_dots", "dotted path"),
        ("customer_id", "dodo_ingest.nope.fn", "cannot import"),
        ("customer_id", "dodo_ingest.config.no_such_attribute", "has no attribute"),
        ("exclude_paths", "/admin", "list of path patterns"),
        ("exclude_paths", ["/ok", "(unclosed"], r"entry 1 .* not a valid regular expression"),
        ("exclude_methods", ["GET", 3], "HTTP method"),
        ("fallback_customer_id", "anonymous", "not a Dodo customer id"),
    ],
)
def test_invalid_values_raise_an_error_naming_the_setting(setting: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        load(**{setting: value})
    assert str(info.value).startswith(f"{setting}:")


def test_mapping_errors_name_the_key_as_the_user_spelled_it() -> None:
    with pytest.raises(ConfigurationError, match=r"^settings\.DODO_INGEST_FLUSH_INTERVAL: is in seconds"):
        Config.load({}, {"DODO_INGEST_API_KEY": KEY, "DODO_INGEST_FLUSH_INTERVAL": 5000}, source="settings.")


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("sk_test_abc\u200bdef", "non-ASCII"),  # a zero-width space from a paste
        ("sk_test_€uro", "non-ASCII"),
        ("sk_test_abc\ndef", "whitespace"),
        ("sk_test abc", "whitespace"),
        ("sk_test_\x07bell", "control"),
    ],
)
def test_a_malformed_api_key_fails_at_start_up_without_showing_it(key: str, what: str) -> None:
    """Item 16: such a key passed configuration, then every event vanished while flush() returned True."""
    with pytest.raises(ConfigurationError, match=what) as info:
        load(api_key=key)
    message = str(info.value)
    assert "api_key" in message and "printable ASCII" in message
    assert "sk_test" not in message and "abc" not in message and "uro" not in message
    with pytest.raises(ConfigurationError, match="DODO_PAYMENTS_API_KEY"):
        Config.load({}, environ={"DODO_PAYMENTS_API_KEY": key})


def test_unknown_keyword_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting 'flush_intervall'.*flush_interval"):
        load(flush_intervall=1.0)


def test_dotted_paths_resolve_to_callables() -> None:
    config = load(customer_resolver="dodo_ingest.config.mask_key")
    assert config.request.customer_resolver is not None
    assert config.request.customer_resolver("x") == "<set, 1 chars>"
    assert load(customer_id="dodo_ingest.config.mask_key").request.customer_resolver is not None  # the old name


def test_path_patterns_regex_full_match_and_literal_prefix_at_segment_boundary() -> None:
    config = load(exclude_paths=[r"/admin/.*", "/healthz"])
    regex, literal = config.request.exclude_paths
    assert regex.matches("/admin/users") and not regex.matches("/x/admin/users")
    assert literal.matches("/healthz") and literal.matches("/healthz/live")
    assert not literal.matches("/healthzz")


def test_api_key_never_appears_in_repr_describe_or_errors() -> None:
    config = load()
    assert KEY not in repr(config)
    assert KEY not in str(config.describe())
    assert config.describe()["api_key"] == f"<set, {len(KEY)} chars>"
    with pytest.raises(ConfigurationError) as info:
        load(flush_interval=-1)
    assert KEY not in str(info.value)


def test_settings_table_lists_every_setting() -> None:
    table = settings_table()
    for setting in SETTINGS:
        assert f"`{setting.key}`" in table
