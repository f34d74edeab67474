"""``dodo-ingest demo --serve``: the demo prints its dashboard's URL and keeps serving it after the traffic."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def run_demo_serving(port: int, cwd: Path) -> Iterator[tuple[str, int]]:
    """Run the demo with --serve on ``port``; yield (dashboard URL, metered requests) once it serves; stop it."""
    argv = ["demo", "--serve", "--port", str(port), "--requests", "150", "--customers", "3", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dodo_ingest.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "serving it and the sample API until Ctrl-C" in line:
                break
        output = "".join(lines)
        assert f"  dashboard          {url}/" in output, output  # printed before the traffic starts
        check = re.search(r"Check: OK: (\d+) metered requests", output)
        assert check is not None, output
        yield url, int(check.group(1))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_the_demo_keeps_serving_its_dashboard_until_ctrl_c(tmp_path: Path) -> None:
    with run_demo_serving(free_port(), tmp_path) as (url, metered):
        data = requests.get(f"{url}/_local/dashboard", timeout=10).json()
        assert data["totals"]["events"] == metered and data["totals"]["customers"] == 3
        names = ["API calls", "Items ordered", "Report exports", "Quota units", "Slowest call"]
        assert [m["name"] for m in data["meters"]] == names
        assert data["meters"][0]["total"] == metered
        usage = requests.get(f"{url}/_local/usage", timeout=10).json()["items"]
        assert sum(c["value"] for c in usage[0]["customers"]) == metered
        page = requests.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and "usage dashboard" in page.text
