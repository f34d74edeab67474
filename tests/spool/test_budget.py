"""The request budget without a spool: a paced batcher sends fewer, fuller requests, and backs off on 429."""

from __future__ import annotations

import threading
from collections.abc import Callable

from dodo_ingest import Batcher, Ingestion
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY


def test_when_the_budget_binds_batches_grow_instead_of_requests(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer
) -> None:
    batch = make_batch(max_size=100, flush_interval=0.05, max_requests_per_minute=12)  # one request per 5 s
    for i in range(100):
        batch.add("cus_budget", {"i": i})
    assert dodo_server.wait_for_events(100, timeout=10)  # the bucket's one token: at once
    for i in range(100, 1000):  # nine times max_batch_size while the bucket refills
        batch.add("cus_budget", {"i": i})
    assert dodo_server.wait_for_events(1000, timeout=30)
    assert [r.event_count for r in dodo_server.requests] == [100, 900]


def test_429s_slow_a_sender_down_and_every_event_still_arrives() -> None:
    with LocalDodoServer(api_key=TEST_KEY, rate_limit="4/second") as server:
        ingestion = Ingestion(api_key=TEST_KEY, base_url=server.url, max_requests_per_minute=3000)
        batch = ingestion.create_batch(max_size=5, flush_interval=0.01)
        pause = threading.Event()
        for i in range(400):  # about 200 events/s in batches of 5: 40 requests/s offered, 4/s allowed
            batch.add("cus_429", {"i": i})
            pause.wait(0.005)
        assert batch.flush(timeout=60)
        assert sorted(e["metadata"]["i"] for e in server.events()) == list(range(400))
        answers = server.response_counts()["POST /events/ingest"]
        batch.shutdown()
    accepted, refused = answers.get("200", 0), answers.get("429", 0)
    assert refused > 0, "the budget did bind"
    assert accepted < 80, "batches grew: far fewer requests than the 80 batches of 5 offered"
    assert refused < accepted, "the pace adapted: most requests were accepted"
