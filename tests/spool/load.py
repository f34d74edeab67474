"""Load for the real-server tests: threads that call an app until told to stop, each request with its own
``X-Request-Id``, recording when each answer arrived."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests


class Load:
    """``threads`` callers of ``url``, each on its own keep-alive connection, at most ``rate`` requests per
    second in all (None: as fast as they can)."""

    def __init__(self, url: str, threads: int = 4, rate: float | None = None, prefix: str = "req") -> None:
        self.url = url
        self.prefix = prefix  # of the request ids: distinct per Load when several run at once
        self.answered: dict[str, float] = {}  # request id -> when its 200 arrived
        self.latency: dict[str, float] = {}  # request id -> seconds from sending it to its answer
        self.failed = 0
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._interval = None if rate is None else threads / rate
        self._pool = ThreadPoolExecutor(threads)
        self._futures = [self._pool.submit(self._call, n) for n in range(threads)]

    def _call(self, caller: int) -> None:
        session = requests.Session()
        pause = threading.Event()
        next_at = time.monotonic()
        while not self._stop.is_set():
            request_id = f"{self.prefix}-{caller}-{next(self._ids)}"
            sent = time.monotonic()
            try:
                response = session.get(self.url, headers={"X-Request-Id": request_id}, timeout=10)
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
                session = requests.Session()  # the worker behind this connection may be dead
            with self._lock:
                if ok:
                    self.answered[request_id] = time.time()
                    self.latency[request_id] = time.monotonic() - sent
                else:
                    self.failed += 1
            if self._interval is not None:
                next_at += self._interval
                pause.wait(max(0.0, next_at - time.monotonic()))

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def stop(self) -> dict[str, float]:
        """Stop calling; the answered requests."""
        self._stop.set()
        for future in self._futures:
            future.result(timeout=30)
        self._pool.shutdown()
        with self._lock:
            return dict(self.answered)
