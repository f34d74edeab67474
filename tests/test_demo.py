"""``dodo-ingest demo``: runs offline, prints the usage tables, and checks exactly-once delivery."""

from __future__ import annotations

import random
import re

import pytest

from dodo_ingest import cli
from dodo_ingest.demo import main
from dodo_ingest.demo.report import percentile, usage_by_endpoint
from dodo_ingest.demo.runner import plan_traffic


def test_demo_runs_end_to_end_and_verifies_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "150", "--customers", "3", "--concurrency", "4", "--seed", "11"]) == 0
    out = capsys.readouterr().out
    assert "Usage by customer" in out and "Usage by endpoint" in out
    assert "cus_acme (Acme Corp)" in out
    assert "GET /api/v1/users/<int:user_id>" in out
    assert "p99 ms" in out
    assert "traffic [" in out  # progress was shown
    assert "Check: OK" in out
    planned = plan_traffic(150, ["cus_acme", "cus_globex", "cus_initech"], random.Random(11))
    metered = sum(1 for call in planned if call.metered)
    check = re.search(
        r"Check: OK: (\d+) metered requests, (\d+) events accepted by the SDK, (\d+) sent, (\d+) stored by the "
        r"server \(\d+ distinct ids\); (\d+) more rejected by the rate limiter \(429, not billed\)",
        out,
    )
    assert check is not None, out
    billed, accepted, sent, stored, rejected = map(int, check.groups())
    assert rejected > 0 and billed + rejected == metered and accepted == sent == stored == billed
    # The customer on the small plan ran out of its quota: 429s, not billed, and the quota is the bill.
    starter = next(line for line in out.splitlines() if " starter " in line)
    assert starter.startswith("cus_initech (Initech)")
    used, limit = starter.split()[4].split("/")
    assert used == limit == starter.split()[5] and int(starter.split()[6]) == rejected
    assert "quota used = billed units (the sum of the events' cost) for every customer: yes" in out


def test_cli_dispatches_to_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--requests", "40", "--customers", "2", "--no-progress", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "Check: OK" in out
    assert "traffic [" not in out


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_traffic_plan_is_deterministic_and_varied() -> None:
    customers = ["cus_a", "cus_b", "cus_c"]
    first = plan_traffic(500, customers, random.Random(5))
    assert first == plan_traffic(500, customers, random.Random(5))
    kinds = {call.kind for call in first}
    assert {"user", "orders", "order", "search", "export", "flaky", "anonymous", "unauthorized", "health"} <= kinds
    assert any(not call.metered for call in first) and any(call.metered for call in first)


def test_percentile_and_endpoint_table() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    events = [
        {
            "customer_id": "cus_a",
            "metadata": {"method": "GET", "endpoint": "/x", "status_code": s, "response_time_ms": 1.0},
        }
        for s in (200, 404, 500, 200)
    ]
    table = usage_by_endpoint(events)
    row = next(line for line in table.splitlines() if line.startswith("GET /x"))
    assert row.split()[2:6] == ["4", "1", "1", "50.0%"]
