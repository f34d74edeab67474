"""The dashboard in a real headless browser (Debian's chromium + chromedriver, driven by Selenium).

Known traffic goes in through the project's own SDK, a meter through Dodo's official SDK; the test then reads
what the page renders: numbers per customer, the chart's bars, the meter's values, the filters of the latest
events, and a live update when more traffic arrives. It saves a screenshot under its temporary directory.
Skipped only when no browser is installed and CI is not set; with CI set it must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dodopayments import DodoPayments
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from dodo_ingest import Batcher
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1800",
]
# (customer, status, latency ms) of the known traffic
TRAFFIC = [("cus_acme", 200, 12.0)] * 6 + [("cus_acme", 500, 80.0)]
TRAFFIC += [("cus_globex", 200, 9.0)] * 2 + [("cus_globex", 404, 3.0)] * 2
TRAFFIC += [("cus_initech", 201, 30.0)] * 2
FAILED = {"key": "status_code", "operator": "greater_than_or_equals", "value": 400}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    found = find_browser()
    if found is None:
        if in_ci():
            pytest.fail("CI is set but chromium/chromedriver are missing: .ci/run installs them with apt-get")
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver)")
    chromium, chromedriver = found
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def send(batch: Batcher, traffic: list[tuple[str, int, float]], endpoint: str = "/api/v1/users/<int:user_id>") -> None:
    for customer, status, latency in traffic:
        metadata = {"endpoint": endpoint, "method": "GET", "status_code": status, "response_time_ms": latency}
        assert batch.add(customer_id=customer, metadata=metadata)
    assert batch.flush(timeout=10)


# The page redraws every second, so element handles go stale: read what is rendered in one script run (the page's
# own script cannot redraw in between), as plain values; lists where order matters (objects may come back sorted).
SNAPSHOT = """
const q = (css) => Array.from(document.querySelectorAll(css));
const text = (root, css) => { const n = root.querySelector(css); return n ? n.textContent : null; };
const chart = document.getElementById("chart");
return {
  kpi: Object.fromEntries(q(".kpi .value").map((n) => [n.id, n.textContent])),
  status: document.getElementById("status").textContent,
  customers: q("#customers tr[data-customer]").map((r) =>
    [r.dataset.customer, text(r, "[data-field=events]"), text(r, "[data-field=errors]")]),
  chart: {
    total: chart.getAttribute("data-total"),
    buckets: q("#chart g.bucket").map((g) => [Number(g.dataset.calls), Number(g.dataset.errors)]),
    bars: q("#chart rect.ok, #chart rect.err").map((r) => Number(r.getAttribute("height"))),
  },
  meters: {
    headers: q("#meters th[data-meter]").map((th) => [th.dataset.meter, th.innerText]),
    totals: q("#meters tr.total td[data-meter]").map((td) => [td.dataset.meter, td.textContent]),
    cells: q("#meters tr[data-customer] td[data-meter]").map((td) =>
      [td.parentElement.dataset.customer, td.dataset.meter, td.textContent]),
    definitions: Object.fromEntries(q("#meters li[data-meter]").map((li) => [li.dataset.meter, li.textContent])),
  },
  endpoints: Object.fromEntries(q("#endpoints tr[data-endpoint]").map((r) =>
    [r.dataset.endpoint, text(r, "[data-field=events]")])),
  latest: q("#latest tbody tr[data-customer]").map((r) => [r.dataset.customer, text(r, "[data-field=status]")]),
};
"""


def snapshot(driver: WebDriver) -> dict[str, Any]:
    page: dict[str, Any] = driver.execute_script(SNAPSHOT)
    return page


def wait_for(driver: WebDriver, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll the rendered page until ``predicate(snapshot)`` holds; return that snapshot."""
    seen: list[dict[str, Any]] = []

    def check(d: WebDriver) -> dict[str, Any] | None:
        page = snapshot(d)
        seen[:] = [page]
        return page if predicate(page) else None

    try:
        found: dict[str, Any] = WebDriverWait(driver, 20, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; last seen: {seen}") from None
    return found


def events_of(page: dict[str, Any], customer: str) -> str | None:
    return next((events for who, events, _ in page["customers"] if who == customer), None)


def test_the_dashboard_renders_known_traffic_and_updates_live(
    browser: WebDriver, dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    batch = make_batch(max_batch_size=100, flush_interval=0.2)
    send(batch, TRAFFIC)
    with DodoPayments(bearer_token=TEST_KEY, base_url=dodo_server.url, max_retries=0) as client:
        errors = client.meters.create(
            name="Failed calls",
            event_name="api_call",
            measurement_unit="errors",
            aggregation={"type": "count"},
            filter={"conjunction": "and", "clauses": [FAILED]},
        )

    browser.get(dodo_server.url + "/")
    page = wait_for(browser, lambda p: events_of(p, "cus_acme") == "7", "cus_acme's 7 events")
    assert (page["kpi"]["kpi-events"], page["kpi"]["kpi-customers"]) == ("13", "3")
    assert page["customers"] == [["cus_acme", "7", "1"], ["cus_globex", "4", "2"], ["cus_initech", "2", "0"]]

    assert page["chart"]["total"] == "13"
    assert sum(calls for calls, _ in page["chart"]["buckets"]) == 13
    assert sum(errs for _, errs in page["chart"]["buckets"]) == 3
    assert page["chart"]["bars"] and all(height > 0 for height in page["chart"]["bars"])

    meters = page["meters"]
    assert meters["headers"] == [[errors.id, "Failed calls\nerrors"]] and meters["totals"] == [[errors.id, "3"]]
    assert meters["cells"] == [  # in the usage table's order
        ["cus_acme", errors.id, "1"],
        ["cus_globex", errors.id, "2"],
        ["cus_initech", errors.id, "0"],
    ]
    assert "status_code ≥ 400" in meters["definitions"][errors.id]
    assert page["endpoints"] == {"GET /api/v1/users/<int:user_id>": "13"}

    filters = browser.find_element(By.ID, "filters")
    Select(filters.find_element(By.NAME, "customer_id")).select_by_value("cus_globex")
    wait_for(browser, lambda p: [c for c, _ in p["latest"]] == ["cus_globex"] * 4, "only cus_globex's 4 events")
    Select(filters.find_element(By.NAME, "status")).select_by_value("error")
    errors_only = wait_for(browser, lambda p: len(p["latest"]) == 2, "cus_globex's 2 errors")
    assert errors_only["latest"] == [["cus_globex", "404"], ["cus_globex", "404"]]
    filters.find_element(By.CSS_SELECTOR, "button[type=reset]").click()
    wait_for(browser, lambda p: len(p["latest"]) == 13, "every event again after clearing the filters")

    send(batch, [("cus_initech", 200, 5.0)] * 5, endpoint="/api/v1/search")  # traffic while the page is open
    page = wait_for(browser, lambda p: p["chart"]["total"] == "18", "the new traffic")
    assert events_of(page, "cus_initech") == "7" and page["kpi"]["kpi-events"] == "18"
    assert page["endpoints"]["GET /api/v1/search"] == "5" and page["status"].startswith("live")

    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(str(url).startswith(dodo_server.url + "/") for url in loaded), loaded  # no CDN
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_the_demos_dashboard_shows_its_customers_and_meters(browser: WebDriver, tmp_path: Path) -> None:
    from tests.helpers import free_port
    from tests.localserver.test_demo_serve import run_demo_serving

    with run_demo_serving(free_port(), tmp_path) as (url, metered):
        browser.get(url + "/")
        page = wait_for(browser, lambda p: p["kpi"]["kpi-events"] == f"{metered:,}", f"the demo's {metered} events")
        names = [header.split("\n")[0] for _, header in page["meters"]["headers"]]
        assert names == ["API calls", "Items ordered", "Report exports", "Quota units", "Slowest call"]
        assert page["meters"]["totals"][0][1] == f"{metered:,}"  # the "API calls" meter
        assert [c for c, _, _ in page["customers"]][:1] == ["cus_acme"] and len(page["customers"]) == 3
        assert len(page["endpoints"]) == 7 and int(page["chart"]["total"]) == metered
        screenshot = tmp_path / "demo-dashboard.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
