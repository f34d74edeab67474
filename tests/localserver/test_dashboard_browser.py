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


def text_of(driver: WebDriver, css: str) -> str:
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    return elements[0].text if elements else ""


def wait(driver: WebDriver, predicate: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, 20, poll_frequency=0.1).until(predicate, message=what)


def latest_customers(driver: WebDriver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#latest tbody tr[data-customer]")
    return [str(row.get_attribute("data-customer")) for row in rows]


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
    row = '#customers tr[data-customer="{}"] td[data-field="{}"]'
    wait(browser, lambda d: text_of(d, row.format("cus_acme", "events")) == "7", "cus_acme's 7 events")
    assert text_of(browser, "#kpi-events") == "13" and text_of(browser, "#kpi-customers") == "3"
    rendered = {
        customer: (text_of(browser, row.format(customer, "events")), text_of(browser, row.format(customer, "errors")))
        for customer in ("cus_acme", "cus_globex", "cus_initech")
    }
    assert rendered == {"cus_acme": ("7", "1"), "cus_globex": ("4", "2"), "cus_initech": ("2", "0")}
    rows = browser.find_elements(By.CSS_SELECTOR, "#customers tr[data-customer]")
    order = [r.get_attribute("data-customer") for r in rows]
    assert order == ["cus_acme", "cus_globex", "cus_initech"]

    chart = browser.find_element(By.ID, "chart")
    assert chart.get_attribute("data-total") == "13"
    buckets = browser.find_elements(By.CSS_SELECTOR, "#chart g.bucket")
    assert sum(int(b.get_attribute("data-calls") or 0) for b in buckets) == 13
    assert sum(int(b.get_attribute("data-errors") or 0) for b in buckets) == 3
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart rect.ok, #chart rect.err")
    assert bars and all(float(bar.get_attribute("height") or 0) > 0 for bar in bars)

    cell = f'td[data-meter="{errors.id}"]'
    assert text_of(browser, f'#meters th[data-meter="{errors.id}"]') == "Failed calls\nerrors"
    assert text_of(browser, f"#meters tr.total {cell}") == "3"
    values = {
        str(r.get_attribute("data-customer")): r.find_element(By.CSS_SELECTOR, cell).text
        for r in browser.find_elements(By.CSS_SELECTOR, "#meters tr[data-customer]")
    }
    assert values == {"cus_acme": "1", "cus_globex": "2", "cus_initech": "0"}  # in the usage table's order
    assert "status_code ≥ 400" in text_of(browser, f'#meters li[data-meter="{errors.id}"]')
    endpoint = '#endpoints tr[data-endpoint="GET /api/v1/users/<int:user_id>"] td[data-field=events]'
    assert text_of(browser, endpoint) == "13"

    filters = browser.find_element(By.ID, "filters")
    Select(filters.find_element(By.NAME, "customer_id")).select_by_value("cus_globex")
    wait(browser, lambda d: latest_customers(d) == ["cus_globex"] * 4, "only cus_globex's 4 events")
    Select(filters.find_element(By.NAME, "status")).select_by_value("error")
    wait(browser, lambda d: len(latest_customers(d)) == 2, "cus_globex's 2 errors")
    statuses = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#latest td[data-field=status]")]
    assert statuses == ["404", "404"]
    filters.find_element(By.CSS_SELECTOR, "button[type=reset]").click()
    wait(browser, lambda d: len(latest_customers(d)) == 13, "every event again after clearing the filters")

    send(batch, [("cus_initech", 200, 5.0)] * 5, endpoint="/api/v1/search")  # traffic while the page is open
    wait(browser, lambda d: text_of(d, row.format("cus_initech", "events")) == "7", "the page to update")
    wait(browser, lambda d: d.find_element(By.ID, "chart").get_attribute("data-total") == "18", "the chart to update")
    assert text_of(browser, "#kpi-events") == "18"
    assert text_of(browser, '#endpoints tr[data-endpoint="GET /api/v1/search"] td[data-field=events]') == "5"
    assert text_of(browser, "#status").startswith("live")

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
        wait(browser, lambda d: text_of(d, "#kpi-events") == f"{metered:,}", f"the demo's {metered} events")
        names = [h.text.split("\n")[0] for h in browser.find_elements(By.CSS_SELECTOR, "#meters th[data-meter]")]
        assert names == ["API calls", "Items ordered", "Report exports", "Slowest call"]
        assert text_of(browser, "#meters tr.total td[data-meter]") == f"{metered:,}"
        customers = browser.find_elements(By.CSS_SELECTOR, "#customers tr[data-customer]")
        assert [c.get_attribute("data-customer") for c in customers][:1] == ["cus_acme"] and len(customers) == 3
        assert len(browser.find_elements(By.CSS_SELECTOR, "#endpoints tr[data-endpoint]")) == 7
        assert int(browser.find_element(By.ID, "chart").get_attribute("data-total") or 0) == metered
        screenshot = tmp_path / "demo-dashboard.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
