"""``dodo-ingest demo --serve``: the demo prints its dashboard's URL and keeps serving it after the traffic."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port
from tests.localserver.conftest import run_cli


@contextlib.contextmanager
def run_demo_serving(port: int, cwd: Path) -> Iterator[tuple[str, int]]:
    """Run the demo with --serve on ``port``; yield (dashboard URL, metered requests) once it serves; stop it."""
    argv = ["demo", "--serve", "--port", str(port), "--requests", "150", "--customers", "3", "--no-progress"]
    proc = run_cli(cwd, *argv, key=None, module="dodo_ingest.cli")
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
