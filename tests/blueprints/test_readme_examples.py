"""The README's "Other blueprints" section stays true: its first example runs, and its table names real functions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import dodo_ingest
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("## Other blueprints") :]


def test_the_first_example_runs_against_the_local_server(
    dodo_server: LocalDodoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", TEST_KEY)
    monkeypatch.setenv("DODO_PAYMENTS_BASE_URL", dodo_server.url)
    code = re.search(r"```python\n(.*?)```", SECTION, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)  # the README's own example
    ingestion = namespace["ingestion"]
    assert isinstance(ingestion, dodo_ingest.Ingestion)
    try:
        assert ingestion.flush()
        assert [(e["customer_id"], e["metadata"]) for e in dodo_server.events()] == [("cus_123", {"plan": "pro"})]
    finally:
        ingestion.shutdown()


def test_the_table_names_functions_that_exist() -> None:
    table = SECTION[SECTION.index("| JavaScript | Python |") :]
    python_column = [row.split(" | ")[1] for row in table.splitlines()[2:] if row.startswith("|")]
    names = {m for cell in python_column for m in re.findall(r"`([a-z_]+)\(", cell)}
    assert {"track_object_storage", "track_stream_bytes", "track_time_range", "create_llm_tracker"} <= names
    for name in names - {"get_environment", "get_client_info", "health_check"}:
        assert hasattr(dodo_ingest, name) or hasattr(dodo_ingest.blueprints, name), name
    for method in ("ingest_events", "ingest_event", "health_check", "get_environment", "get_client_info"):
        assert callable(getattr(dodo_ingest.DodoClient, method))
