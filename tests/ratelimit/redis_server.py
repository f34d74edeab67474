"""A real ``redis-server`` on a free loopback port, started and stopped by the tests themselves."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from types import TracebackType

import pytest

from tests.helpers import free_port, wait_until


def redis_binary() -> str:
    """The ``redis-server`` binary; skip without it, but fail under CI (where .ci/run installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs the Debian package redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


class RedisServer:
    """One ``redis-server`` process without persistence (``aof``: with an append-only file fsynced on every
    write, kept across a restart); :meth:`stop` and :meth:`start` keep the port."""

    def __init__(self, port: int | None = None, *, aof: bool = False) -> None:
        self.binary = redis_binary()
        self.aof = aof
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="dodo-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + (["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]),
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(self.ping, timeout=10.0):
            self.stop()
            raise AssertionError(f"redis-server on port {self.port} did not answer PING")
        return self

    def ping(self) -> bool:
        """Whether the server answers ``PING`` with ``+PONG``."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it and wait for the process to exit (the port is then refused)."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
