"""Small helpers shared by the test modules: free ports, and waiting with a deadline (never a bare sleep)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable

import requests


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for state that has no event to wait on)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(interval)
    return True


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float, describe: Callable[[], str]) -> None:
    """Wait until ``url`` answers 200 while ``process`` (the server) is alive; fail with ``describe()`` if not."""

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited early with {process.returncode}: {describe()}")
        try:
            return requests.get(url, timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading the app
            return False

    if not wait_until(answering, timeout, interval=0.05):
        raise AssertionError(f"{url} did not answer in time: {describe()}")
