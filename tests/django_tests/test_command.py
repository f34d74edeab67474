"""``manage.py dodo_ingest_check``: configuration, connectivity and credentials, with a clear verdict."""

from __future__ import annotations

import io
import socket

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pytest_django import Settings

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("dodo_ingest_check", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def pointed(settings: Settings, dodo_server: LocalDodoServer) -> Settings:
    settings.DODO_INGEST_BASE_URL = dodo_server.url
    settings.DODO_INGEST_API_KEY = TEST_KEY
    return settings


def test_ok_against_the_local_server(pointed: Settings, dodo_server: LocalDodoServer) -> None:
    output = run()
    assert "OK: connected to" in output
    assert dodo_server.url in output
    assert TEST_KEY not in output
    assert dodo_server.event_count() == 0  # nothing was sent
    assert dodo_server.requests == []  # not even an empty ingest request


def test_rejected_key(pointed: Settings) -> None:
    pointed.DODO_INGEST_API_KEY = "sk_test_wrong_key"
    with pytest.raises(CommandError, match="rejected the API key") as info:
        run()
    assert info.value.returncode == 1
    assert "sk_test_wrong_key" not in str(info.value)


def test_unreachable_host(settings: Settings) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.DODO_INGEST_BASE_URL = f"http://127.0.0.1:{port}"
    with pytest.raises(CommandError, match="cannot reach") as info:
        run()
    assert info.value.returncode == 1


def test_invalid_configuration(settings: Settings) -> None:
    settings.DODO_INGEST_ENVIRONMENT = "production"
    with pytest.raises(CommandError, match="DODO_INGEST_ENVIRONMENT") as info:
        run("--skip-connection")
    assert info.value.returncode == 2


def test_missing_key(settings: Settings) -> None:
    del settings.DODO_INGEST_API_KEY
    out = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("dodo_ingest_check", stdout=out)
    assert info.value.returncode == 2
    assert "dodo_ingest.E001" in out.getvalue()


def test_skip_connection(settings: Settings) -> None:
    output = run("--skip-connection")
    assert "configuration: OK" in output
    assert "connection not checked" in output


def test_disabled_without_key(settings: Settings) -> None:
    settings.DODO_INGEST_ENABLED = False
    del settings.DODO_INGEST_API_KEY
    assert "metering is disabled" in run()
