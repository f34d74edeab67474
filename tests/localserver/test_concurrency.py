"""Hundreds of clients at once: Dodo's JS blueprint and the async Python SDK send one request per event, all in
parallel. The standard library's listen backlog of 5 lost 20-64 % of such connections; none may be lost."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from datetime import datetime, timezone

from dodopayments import AsyncDodoPayments

from dodo_ingest.localserver import LocalDodoServer

KEY = "sk_test_concurrency"
PARALLEL = 200


def event(i: int) -> dict[str, object]:
    return {
        "event_id": f"evt_{i}",
        "customer_id": f"cus_{i % 7}",
        "event_name": "api_call",
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "metadata": {"endpoint": "/v1/x", "status_code": 200},
    }


def test_200_parallel_connections_of_the_async_sdk_all_succeed() -> None:
    async def burst(url: str) -> list[object]:
        # max_retries=0: a lost connection must show up as a failure, not be hidden by a retry
        async with AsyncDodoPayments(bearer_token=KEY, base_url=url, max_retries=0, timeout=30) as client:

            async def one(i: int) -> object:
                try:
                    return (await client.usage_events.ingest(events=[event(i)])).ingested_count
                except Exception as exc:
                    return repr(exc)

            return list(await asyncio.gather(*(one(i) for i in range(PARALLEL))))

    with LocalDodoServer(api_key=KEY) as server:
        results = asyncio.run(burst(server.url))
        assert [r for r in results if r != 1] == []
        assert server.event_count() == PARALLEL


def test_200_connections_opened_at_the_same_instant_are_all_answered() -> None:
    with LocalDodoServer(api_key=KEY) as server:
        host, port = server.url.removeprefix("http://").split(":")
        start = threading.Barrier(PARALLEL)
        statuses: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            body = json.dumps({"events": [event(i)]}).encode()
            request = (
                f"POST /events/ingest HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            start.wait(timeout=30)
            try:
                with socket.create_connection((host, int(port)), timeout=30) as sock:
                    sock.sendall(request)
                    status = sock.makefile("rb").readline().decode().strip()
            except OSError as exc:
                status = repr(exc)
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(PARALLEL)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [s for s in statuses if s != "HTTP/1.1 200 OK"] == []
        assert len(statuses) == PARALLEL and server.event_count() == PARALLEL
