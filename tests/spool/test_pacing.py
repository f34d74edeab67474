"""The request pacer: a token bucket per sender, additive increase and multiplicative decrease on 429."""

from __future__ import annotations

from dodo_ingest.pacing import BURST, DECREASE_HOLDOFF, PacedTransport, RequestPacer
from dodo_ingest.transport import Answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    clock = Clock()
    pacer = RequestPacer(60, clock=clock)  # one request per second
    clock.now += 60  # a quiet minute fills the bucket
    for _ in range(int(BURST)):
        assert pacer.delay() == 0.0
        pacer.spend()
    assert pacer.delay() == 1.0
    clock.now += 0.5
    assert pacer.delay() == 0.5
    clock.now += 0.5
    assert pacer.delay() == 0.0


def test_retries_go_into_debt_and_the_next_batch_waits_for_them() -> None:
    clock = Clock()
    pacer = RequestPacer(60, clock=clock)
    pacer.spend()  # the batch
    pacer.spend()  # its retry, made without waiting
    pacer.spend()  # and another
    assert pacer.delay() == 3.0


def test_a_429_halves_the_rate_once_per_holdoff_and_accepted_requests_raise_it_again() -> None:
    clock = Clock()
    pacer = RequestPacer(90, clock=clock)
    pacer.observe(429)
    pacer.observe(429)  # the same burst: one signal
    assert pacer.rate == 45.0
    assert pacer.delay() > 0, "a 429 empties the bucket"
    clock.now += DECREASE_HOLDOFF
    pacer.observe(429)
    assert pacer.rate == 22.5
    for _ in range(10):
        pacer.observe(200)
    assert pacer.rate == 32.5
    for _ in range(100):
        pacer.observe(200)
    assert pacer.rate == 90.0, "never above the configured budget"
    pacer.observe(503)
    pacer.observe(None)
    assert pacer.rate == 90.0, "only 429 means: too many requests"


def test_the_rate_never_falls_to_zero() -> None:
    clock = Clock()
    pacer = RequestPacer(4, clock=clock)
    for _ in range(20):
        clock.now += DECREASE_HOLDOFF
        pacer.observe(429)
    assert pacer.rate == 1.0
    assert pacer.delay() <= 60.0


class Recording:
    def __init__(self, status: int) -> None:
        self.status = status
        self.bodies: list[bytes] = []
        self.closed = False

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        self.bodies.append(body)
        return Answer(self.status)

    def close(self) -> None:
        self.closed = True


def test_the_paced_transport_spends_a_token_per_request_and_learns_from_each_answer() -> None:
    clock = Clock()
    pacer = RequestPacer(60, clock=clock)
    inner = Recording(429)
    transport = PacedTransport(inner, pacer)
    assert transport.post(b"{}").status == 429
    assert inner.bodies == [b"{}"]
    assert pacer.rate == 30.0
    assert pacer.delay() == 2.0  # the bucket is empty and refills at the halved rate
    transport.close()
    assert inner.closed
