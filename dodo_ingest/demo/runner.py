"""The demo's driver: servers up, traffic, read-back, tables, the exactly-once check."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import requests
from werkzeug.serving import BaseWSGIServer, make_server

from dodo_ingest.demo.app import EXPORT_COST, MAX_USER_ID, create_app, customers, token_for
from dodo_ingest.demo.report import errors_seen, meter_table, table, usage_by_customer, usage_by_endpoint
from dodo_ingest.localserver import LocalDodoServer

PAGE_SIZE = 100


@dataclass(frozen=True)
class Call:
    """One planned request and whether it should be billed."""

    method: str
    path: str
    token: str | None
    metered: bool
    kind: str
    body: dict[str, Any] | None = None
    customer: str | None = None
    """The customer the call authenticates as (None: no valid token)."""

    @property
    def units(self) -> int:
        """Units the call consumes from its customer's quota when it is admitted (and bills)."""
        return EXPORT_COST if self.kind == "export" else 1


def plan_traffic(count: int, customer_ids: Sequence[str], rng: random.Random) -> list[Call]:
    """A deterministic, realistic mix of ``count`` requests (customers weighted like real tenants)."""
    weights = [1.0 / (rank + 1) for rank in range(len(customer_ids))]  # a few big tenants, a long tail
    calls: list[Call] = []
    for _ in range(count):
        customer = rng.choices(customer_ids, weights)[0]
        token = token_for(customer)
        roll = rng.random()
        user = rng.randint(1, MAX_USER_ID)
        if roll < 0.26:
            if rng.random() < 0.06:
                user = MAX_USER_ID + rng.randint(1, 99)  # a 404 on a matched route
            calls.append(Call("GET", f"/api/v1/users/{user}", token, True, "user", customer=customer))
        elif roll < 0.40:
            calls.append(Call("GET", f"/api/v1/users/{user}/orders", token, True, "orders", customer=customer))
        elif roll < 0.52:
            body: dict[str, Any] = {"sku": f"SKU-{rng.randint(100, 999)}", "quantity": rng.randint(1, 5)}
            if rng.random() < 0.1:
                body = {"sku": body["sku"]}  # 422: quantity missing
            calls.append(Call("POST", "/api/v1/orders", token, True, "order", body, customer))
        elif roll < 0.67:
            words = ["invoice", "refund", "usage", "meter", "plan", "seat", "token", "region"]
            calls.append(Call("GET", f"/api/v1/search?q={rng.choice(words)}", token, True, "search", customer=customer))
        elif roll < 0.72:
            report = f"rep_{rng.randint(10_000, 99_999)}"
            calls.append(Call("GET", f"/api/v1/reports/{report}/export", token, True, "export", customer=customer))
        elif roll < 0.78:
            fail = "1" if rng.random() < 0.35 else "0"
            calls.append(Call("GET", f"/api/v1/flaky?fail={fail}", token, True, "flaky", customer=customer))
        elif roll < 0.82:
            calls.append(Call("GET", "/api/v1/status", token, True, "status", customer=customer))
        elif roll < 0.88:
            calls.append(Call("GET", "/api/v1/status", None, False, "anonymous"))  # unidentified: skipped
        elif roll < 0.94:
            bad = None if rng.random() < 0.5 else "tok_revoked"
            calls.append(Call("GET", f"/api/v1/users/{user}", bad, False, "unauthorized"))  # 401, no customer
        else:
            calls.append(Call("GET", "/health", token, False, "health", customer=customer))  # exempt
    return calls


class Progress:
    """A one-line progress display (redrawn in place on a terminal, a few lines otherwise)."""

    def __init__(self, total: int, events: Callable[[], int], out: TextIO, enabled: bool) -> None:
        self.total = total
        self.events = events
        self.out = out
        self.enabled = enabled
        self.done = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.tty = out.isatty()
        self.thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._last_step = -1

    def tick(self) -> None:
        with self.lock:
            self.done += 1

    def _line(self) -> str:
        done = self.done
        width = 30
        filled = int(width * done / self.total) if self.total else width
        return (
            f"  traffic [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} requests, "
            f"{self.events()} events already at the server"
        )

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.draw()

    def draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.out.write("\r" + self._line() + ("\n" if final else ""))
            self.out.flush()
            return
        step = (4 * self.done) // max(self.total, 1)  # 25 %, 50 %, 75 %, 100 %
        if step != self._last_step and (step > 0 or final):
            self._last_step = step
            self.out.write(self._line() + "\n")
            self.out.flush()

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.draw(final=True)


def drive(
    base_url: str, calls: Sequence[Call], concurrency: int, progress: Progress
) -> tuple[Counter[str], Counter[str]]:
    """Send every call over real HTTP from ``concurrency`` threads; return the counts of status classes
    (``2xx``...) and the 429s each customer got."""
    work: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
    for call in calls:
        work.put(call)
    for _ in range(concurrency):
        work.put(None)
    outcome: Counter[str] = Counter()
    limited: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while (call := work.get()) is not None:
                headers = {"Authorization": f"Bearer {call.token}"} if call.token else {}
                try:
                    response = session.request(
                        call.method, base_url + call.path, json=call.body, headers=headers, timeout=10
                    )
                    response.content  # noqa: B018 - read the (possibly streamed) body to its end
                    key = f"{response.status_code // 100}xx"
                    if response.status_code == 429 and call.customer is not None:
                        with lock:
                            limited[call.customer] += 1
                except requests.RequestException as exc:
                    key = "failed"
                    with lock:
                        failures.append(f"{call.method} {call.path}: {exc}")
                with lock:
                    outcome[key] += 1
                progress.tick()

    threads = [threading.Thread(target=client, name=f"demo-client-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures[:5]:
        print(f"  request failed: {failure}", file=sys.stderr)
    return outcome, limited


def read_events(base_url: str, api_key: str) -> list[dict[str, Any]]:
    """Every event stored by the server, read over HTTP with ``GET /events`` page by page."""
    events: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {api_key}"
        page = 0
        while True:
            response = session.get(
                f"{base_url}/events", params={"page_size": PAGE_SIZE, "page_number": page}, timeout=10
            )
            response.raise_for_status()
            items = response.json()["items"]
            events.extend(items)
            if len(items) < PAGE_SIZE:
                return events
            page += 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dodo-ingest demo",
        description="Run a metered sample Flask API against the local Dodo server, drive traffic from "
        "several customers, and print the usage Dodo would bill.",
    )
    parser.add_argument("--requests", type=int, default=600, help="requests to send (default 600)")
    parser.add_argument("--customers", type=int, default=5, help="number of customers (default 5)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the traffic mix (default 7)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress while traffic runs")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep serving the dashboard (and the sample API) after the traffic, until Ctrl-C",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port of the local Dodo server and its dashboard (default: any free port)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when the server holds exactly one event per metered request."""
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.customers < 1 or args.concurrency < 1:
        print("dodo-ingest demo: --requests, --customers and --concurrency must be at least 1", file=sys.stderr)
        return 2
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the output
    rng = random.Random(args.seed)
    roster = customers(args.customers)
    names = dict(roster)
    customer_ids = [customer_id for customer_id, _ in roster]
    calls = plan_traffic(args.requests, customer_ids, rng)
    api_key = "sk_test_demo_" + os.urandom(8).hex()
    out = sys.stdout

    with LocalDodoServer(api_key=api_key, port=args.port) as dodo_server:
        meters = create_meters(dodo_server.url, api_key)
        plans = plan_for(calls, customer_ids)
        app, dodo = create_app(
            customer_ids,
            plans={customer: limits for customer, (_, limits) in plans.items()},
            api_key=api_key,
            base_url=dodo_server.url,
            flush_interval=0.25,
            max_batch_size=50,
        )
        http: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        serving = threading.Thread(target=http.serve_forever, name="demo-api", daemon=True)
        serving.start()
        api_url = f"http://127.0.0.1:{http.server_port}"
        print("dodo-ingest demo")
        print(f"  local Dodo server  {dodo_server.url}  (in-process, in-memory; {len(meters)} meters)")
        print(f"  dashboard          {dodo_server.url}/  (open it in a browser: it updates while traffic flows)")
        print(f"  sample Flask API   {api_url}  (metered with dodo_ingest_flask.DodoIngest)")
        print(
            f"  traffic            {len(calls)} requests from {len(roster)} customers, "
            f"{args.concurrency} client threads, seed {args.seed}\n",
            flush=True,
        )
        try:
            started = time.perf_counter()
            with Progress(len(calls), dodo_server.event_count, out, not args.no_progress) as progress:
                outcome, limited = drive(api_url, calls, args.concurrency, progress)
            elapsed = time.perf_counter() - started
            # A streamed response's event is recorded when the API server closes it, which can come just after
            # the client has read the body: wait until every metered request reached the SDK, then flush.
            metered = sum(1 for call in calls if call.metered)
            settle = time.monotonic() + 10.0
            while dodo.stats().accepted < metered and time.monotonic() < settle:
                time.sleep(0.01)
            flushed = dodo.flush(timeout=15.0)
            stats = dodo.stats()
            events = read_events(dodo_server.url, api_key)
            usage = read_usage(dodo_server.url)

            metered_calls = sum(1 for call in calls if call.metered)
            rejected = stats.skipped.get("rate_limited", 0)
            expected = metered_calls - rejected  # a request the rate limiter rejected is not billed
            kinds = Counter(call.kind for call in calls)
            statuses = ", ".join(f"{key} {outcome[key]}" for key in sorted(outcome))
            print(f"\n  {len(calls)} requests in {elapsed:.1f} s ({len(calls) / elapsed:.0f}/s): {statuses}")
            print(
                f"  billable: {expected}   not billed: {rejected} over their plan's limits (429), "
                f"{kinds['anonymous']} anonymous, {kinds['unauthorized']} unauthorized (401, no customer), "
                f"{kinds['health']} exempt health checks"
            )
            print(f"  events read back from {dodo_server.url}/events: {len(events)} (in pages of {PAGE_SIZE})\n")
            print("Usage by customer  (what Dodo bills: one event per API call)")
            print(usage_by_customer(events, names))
            print("\nUsage by endpoint  (route templates, never raw ids)")
            print(usage_by_endpoint(events))
            print(f"\nUnhandled exceptions: {errors_seen(events)}")
            print("\nMeters  (each meter's value per customer, as Dodo would aggregate it: GET /_local/usage)")
            print(meter_table(usage, names))
            print("\nRate limits and quotas  (checked before each view; a call over its plan gets 429, not billed)")
            quotas = quota_rows(dodo, plans, events, limited, names)
            print(table(["customer", "plan", "limits", "quota used", "billed units", "429s"], quotas, "<<<>>>"))
            agree = all(row[3].split("/")[0] == str(row[4]) for row in quotas)
            print(
                "  quota used = billed units (the sum of the events' cost) for every customer: "
                + ("yes" if agree else "NO")
            )
            print("\nSDK counters")
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "none"
            print(
                table(
                    ["accepted", "sent", "dropped", "retried", "queued", "skipped"],
                    [[stats.accepted, stats.sent, dropped, stats.retried, stats.queued, skipped]],
                    align="<<<<<<",
                )
            )
            ids = {event["event_id"] for event in events}
            ok = (
                flushed
                and agree
                and len(events) == expected == stats.accepted == stats.sent
                and len(ids) == len(events)
            )
            verdict = "OK" if ok else "MISMATCH"
            print(
                f"\nCheck: {verdict}: {expected} metered requests, {stats.accepted} events accepted by the SDK, "
                f"{stats.sent} sent, {len(events)} stored by the server ({len(ids)} distinct ids); "
                f"{rejected} more rejected by the rate limiter (429, not billed)"
            )
            if args.serve:
                token = token_for(customer_ids[0])
                print(
                    f"\nDashboard: {dodo_server.url}/  serving it and the sample API until Ctrl-C.\n"
                    f"More traffic shows up live, e.g.\n"
                    f"  curl -H 'Authorization: Bearer {token}' {api_url}/api/v1/users/7",
                    flush=True,
                )
                wait_for_stop()
            else:
                print("\nRun with --serve to keep the dashboard open after the traffic.")
        finally:
            http.shutdown()
            http.server_close()
            dodo.shutdown(timeout=5.0)
    return 0 if ok else 1


#: The plans of the demo's customers: (name, limits in ``limits`` notation).
PRO_PLAN = ("pro", "600/minute;100000/month")


def plan_for(calls: Sequence[Call], customer_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Each customer's plan: the last one (of several) on a small "starter" plan whose monthly quota is half
    the units its traffic will ask for, so that it runs out mid-run and gets 429s; the others on "pro"."""
    plans = dict.fromkeys(customer_ids, PRO_PLAN)
    if len(customer_ids) > 1:
        small = customer_ids[-1]
        wanted = sum(call.units for call in calls if call.metered and call.customer == small)
        plans[small] = ("starter", f"{max(2, wanted // 2)}/month")
    return plans


def quota_rows(
    dodo: Any,
    plans: dict[str, tuple[str, str]],
    events: Sequence[dict[str, Any]],
    limited: Counter[str],
    names: dict[str, str],
) -> list[list[Any]]:
    """Per customer: plan, limits, the monthly quota as the limiter counts it, the units the server bills."""
    billed: Counter[str] = Counter()
    for event in events:
        billed[event["customer_id"]] += int(event["metadata"].get("cost", 1))
    rows = []
    for customer, (plan, limits) in plans.items():
        month = next(state for state in dodo.usage(customer) if state.policy.endswith("/month"))
        label = f"{customer} ({names[customer]})" if customer in names else customer
        rows.append([label, plan, limits, f"{month.used}/{month.limit}", billed[customer], limited[customer]])
    return rows


#: The meters the demo creates (``POST /meters``): what a billing person would set up for this API.
DEMO_METERS: list[dict[str, Any]] = [
    {
        "name": "API calls",
        "event_name": "api_call",
        "measurement_unit": "calls",
        "aggregation": {"type": "count"},
        "description": "Every metered request: the API Gateway blueprint's meter",
    },
    {
        "name": "Items ordered",
        "event_name": "api_call",
        "measurement_unit": "items",
        "aggregation": {"type": "sum", "key": "quantity"},
        "filter": {
            "conjunction": "and",
            "clauses": [
                {"key": "endpoint", "operator": "equals", "value": "/api/v1/orders"},
                {"key": "status_code", "operator": "equals", "value": 201},
            ],
        },
    },
    {
        "name": "Report exports",
        "event_name": "api_call",
        "measurement_unit": "exports",
        "aggregation": {"type": "count"},
        "filter": {"conjunction": "and", "clauses": [{"key": "feature", "operator": "equals", "value": "export"}]},
    },
    {
        "name": "Quota units",
        "event_name": "api_call",
        "measurement_unit": "units",
        "aggregation": {"type": "sum", "key": "cost"},
        "description": "What the rate limiter counts against each plan's quota: an export costs 5 units",
    },
    {
        "name": "Slowest call",
        "event_name": "api_call",
        "measurement_unit": "ms",
        "aggregation": {"type": "max", "key": "response_time_ms"},
    },
]


def create_meters(base_url: str, api_key: str) -> list[dict[str, Any]]:
    """Create :data:`DEMO_METERS` on the server with Dodo's ``POST /meters``; return them as created."""
    headers = {"Authorization": f"Bearer {api_key}"}
    created = []
    with requests.Session() as session:
        for meter in DEMO_METERS:
            response = session.post(f"{base_url}/meters", json=meter, headers=headers, timeout=10)
            response.raise_for_status()
            created.append(response.json())
    return created


def read_usage(base_url: str) -> list[dict[str, Any]]:
    """Each meter's value per customer, from the local server's ``GET /_local/usage``."""
    response = requests.get(f"{base_url}/_local/usage", timeout=10)
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (signal handlers only when called from the main thread)."""
    stop = threading.Event()
    restore: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, on_signal)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in restore.items():
            signal.signal(sig, handler)
