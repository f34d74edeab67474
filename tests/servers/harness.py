"""The real-server harness: start a server process on a free port, drive it with real HTTP, stop it with a
signal, and check the local Dodo server's store.

    with ServerProcess(gunicorn(APPS["flask"], "--workers", "2"), app_env(dodo_server), tmp_path) as server:
        served = drive(server.url, range(100))
        server.stop()                         # SIGTERM, then wait for the exit
    check_store(dodo_server, served, server.output())

The check reads what the server *stored* (never the SDK's counters): exactly one event per served request
(matched by the driver's request number ``seq``), the customer the app's authentication resolved, and the
server's request log to explain a loss (an id sent by two processes is stored once: Dodo ignores the
"duplicate").

Every wait is a poll with a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_until
from tests.servers.apps.common import TOKENS

ROOT = Path(__file__).resolve().parents[2]

#: The test apps, as ``module:callable`` (WSGI) for each server.
APPS = {
    "wsgi": "tests.servers.apps.wsgi_app:application",
    "flask": "tests.servers.apps.flask_app:app",
    "django": "tests.servers.apps.django_site.wsgi:application",
}
DJANGO_ASGI = "tests.servers.apps.django_site.asgi:application"
DJANGO_SETTINGS = "tests.servers.apps.django_site.settings"

#: Tokens in the order the driver cycles through them, and the customer each one bills.
TOKEN_CYCLE = sorted(TOKENS)


def app_env(dodo_server: LocalDodoServer, **settings: str) -> dict[str, str]:
    """The environment of an app process: the local server's URL and key, ``DODO_INGEST_<NAME>`` settings.

    ``flush_interval`` defaults to 30 s, so nothing is sent by time during a short run: what a process still
    holds when it stops must be delivered by its exit drain.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DODO_INGEST_", "DODO_PAYMENTS_"))}
    env.update(
        {
            "DODO_PAYMENTS_API_KEY": TEST_KEY,
            "DODO_PAYMENTS_BASE_URL": dodo_server.url,
            "DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS,  # pytest-django exported the suite's own
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    settings.setdefault("flush_interval", "30")
    env.update({"DODO_INGEST_" + name.upper(): value for name, value in settings.items()})
    return env


def run_job(dodo_server: LocalDodoServer, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` (a job under ``tests/servers/apps``) to its end, in :func:`app_env`; assert
    that it exited 0."""
    job = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=app_env(dodo_server),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert job.returncode == 0, job.stderr
    return job


def gunicorn(app: str, *options: str) -> Callable[[int], list[str]]:
    """A gunicorn command line for ``app`` (``options`` after the defaults, so they win).

    ``--log-level info``: the tests read gunicorn's account of worker exits ("Worker exiting (pid: N)").
    """
    import gunicorn as package

    # gunicorn 25.1+ opens a control socket at one fixed path per user: runs side by side would share it.
    own = ["--no-control-socket"] if tuple(package.version_info) >= (25, 1) else []

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "2",
            "--graceful-timeout", "30",
            "--log-level", "info",
            "--chdir", str(ROOT),
            *own,
            *options,
            app,
        ]  # fmt: skip

    return command


class ServerProcess:
    """A server process started on a free loopback port, its output in a log file.

    It runs in a session of its own, so that whatever it leaves behind (workers of a master that died) can be
    ended by that session's id on the way out; :meth:`stop` is the graceful way.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        name: str = "server",
        health: str = "/health",
        start_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = list(command(self.port))
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.health = health
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._session_gone = False

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        """The pid of the process started (the master, for a pre-fork server)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        """Start the process and wait until ``health`` answers 200 (fails with the log if it never does)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        def answering() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the server exited early with {process.returncode}:\n{self.output()}")
            try:
                return requests.get(self.url + self.health, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        if not wait_until(answering, self.start_timeout, interval=0.05):
            raise AssertionError(f"{self.url}{self.health} did not answer in time:\n{self.output()}")
        return self

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process started (not to its workers: the server passes it on as it does)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 90.0) -> int:
        """Send ``sig`` and wait for the process to exit; return its exit code (negative: killed by a signal).

        Fails, with the log, if it does not exit within ``timeout``: a stop that hangs is a bug too.
        """
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the server did not exit within {timeout} s of {sig.name}:\n{self.output()}"
            ) from None
        # Workers of a pre-fork server may outlive their master for a moment: wait for the whole session.
        self._wait_session_gone(timeout)
        return self.returncode

    def kill(self) -> None:
        """End the process and anything left in its session (SIGKILL); a no-op once they are gone."""
        if self.process is None or self._session_gone:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _wait_session_gone(self, timeout: float) -> None:
        assert self.process is not None
        sid = self.process.pid

        def gone() -> bool:
            try:
                os.killpg(sid, 0)
            except ProcessLookupError:
                return True
            return False

        if not wait_until(gone, timeout, interval=0.05):
            self.kill()
            raise AssertionError(f"workers of the server were still running {timeout} s after it exited")
        self._session_gone = True

    def output(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- driving a server with real HTTP -----------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One request the server answered: its number, the customer billed and the process that served it."""

    seq: int
    customer: str
    pid: int


def token_for(seq: int) -> str:
    """The bearer token the driver sends with request ``seq``."""
    return TOKEN_CYCLE[seq % len(TOKEN_CYCLE)]


def call(url: str, seq: int, path: str = "/api/work", *, timeout: float = 60.0) -> Served:
    """One authenticated request on a fresh connection (so that every worker gets a share)."""
    headers = {"Authorization": f"Bearer {token_for(seq)}", "X-Test-Seq": str(seq), "Connection": "close"}
    response = requests.get(url + path, headers=headers, timeout=timeout)
    assert response.status_code == 200, (seq, path, response.status_code, response.text[:500])
    data = _last_json_line(response.text) if "stream" in path else response.json()
    assert data["seq"] == seq and data["customer"] == TOKENS[token_for(seq)], (seq, data)
    return Served(seq, data["customer"], data["pid"])


def _last_json_line(text: str) -> Any:
    return json.loads(text.rsplit("\n", 1)[-1])


def default_paths(seq: int) -> str:
    """Mostly plain responses, every fifth one streamed."""
    return "/api/stream" if seq % 5 == 4 else "/api/work"


def drive(
    url: str,
    seqs: Iterable[int],
    *,
    threads: int = 4,
    paths: Callable[[int], str] = default_paths,
) -> dict[int, Served]:
    """Send one request per number in ``seqs`` from ``threads`` client threads; every one must succeed."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda seq: call(url, seq, paths(seq)), seqs))
    return {r.seq: r for r in results}


class BackgroundLoad:
    """Requests numbered from ``start`` on, sent continuously from ``threads`` threads until :meth:`stop`.

    ``served`` fills as answers arrive; the first failed request stops the load and is re-raised by
    :meth:`stop`. A bound on the number of requests keeps a run that goes wrong from running forever.
    """

    def __init__(self, url: str, *, start: int = 0, threads: int = 4, limit: int = 5000) -> None:
        self.url = url
        self.served: dict[int, Served] = {}
        self._next = start
        self._end = start + limit
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                seq = self._next
                if seq >= self._end:
                    return
                self._next += 1
            try:
                result = call(self.url, seq, default_paths(seq))
            except BaseException as exc:
                self._errors.append(exc)
                self._stopping.set()
                return
            with self._lock:
                self.served[seq] = result

    def count(self) -> int:
        """How many requests have been answered so far."""
        with self._lock:
            return len(self.served)

    def pids(self) -> Counter[int]:
        """How many requests each serving process answered so far."""
        with self._lock:
            return Counter(r.pid for r in self.served.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` while the load runs; fail (naming ``what``) on a request error or the timeout."""

        def done() -> bool:
            if self._errors:
                raise AssertionError(f"a request failed while waiting for {what}") from self._errors[0]
            if not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"the load ran out of requests before {what}")
            return predicate()

        assert wait_until(done, timeout, interval=0.02), f"timed out waiting for {what}"

    def stop(self) -> dict[int, Served]:
        """Stop sending (requests in flight complete) and return every answered request."""
        self.__exit__(None, None, None)
        if self._errors:
            raise self._errors[0]
        with self._lock:
            return dict(self.served)


# --- what the local Dodo server stored ---------------------------------------------------------------------


def check_store(dodo_server: LocalDodoServer, served: Mapping[int, Served], output: str, *, settle: float = 5) -> None:
    """The store holds exactly one event per served request: nothing lost, nothing duplicated.

    Called once the app processes are gone (or, with a longer ``settle``, while they still deliver): the local
    server stores a batch before it answers, so whatever was delivered is already there.

    Each event's ``seq`` names its request, its customer is the one the app billed, ids are distinct. On a
    failure the message says which requests are missing or doubled, what the server's request log shows
    (ids posted more than once by *accepted* requests: two processes minting the same id), and the tail of
    the app's output.
    """
    expected = len(served)
    dodo_server.wait_for_events(expected, timeout=settle)
    stored = dodo_server.events()
    seqs = Counter(e["metadata"].get("seq") for e in stored)
    missing = sorted(set(served) - set(seqs))
    doubled = sorted(s for s, n in seqs.items() if n > 1)
    unknown = sorted(set(seqs) - set(served), key=str)
    wrong_customer = [
        (e["metadata"].get("seq"), e["customer_id"])
        for e in stored
        if e["metadata"].get("seq") in served and e["customer_id"] != served[e["metadata"]["seq"]].customer
    ]
    if missing or doubled or unknown or wrong_customer or len(stored) != expected:
        raise AssertionError(
            f"{len(stored)} events stored for {expected} served requests: "
            f"{len(missing)} missing {_sample(missing)}, {len(doubled)} doubled {_sample(doubled)}, "
            f"{len(unknown)} not from a served request {_sample(unknown)}, "
            f"{len(wrong_customer)} billed to the wrong customer {_sample(wrong_customer)}.\n"
            f"{describe_requests(dodo_server)}\n--- app output (tail) ---\n{output[-6000:]}"
        )
    ids = [e["event_id"] for e in stored]
    assert len(set(ids)) == len(ids)


def describe_requests(dodo_server: LocalDodoServer) -> str:
    """The server's request log in one line: POSTs by status, event ids sent, ids accepted more than once."""
    records = dodo_server.requests
    statuses = Counter(r.status for r in records)
    accepted = Counter(i for r in records if 200 <= r.status < 300 for i in r.event_ids)
    twice = sum(1 for n in accepted.values() if n > 1)
    return (
        f"server log: {len(records)} ingest POSTs {dict(statuses)}; "
        f"{sum(accepted.values())} event ids in accepted POSTs, {len(accepted)} distinct, "
        f"{twice} accepted more than once (an id minted by two processes is stored once)"
    )


def _sample(items: Sequence[Any], n: int = 10) -> str:
    shown = ", ".join(map(str, items[:n]))
    return f"[{shown}{', ...' if len(items) > n else ''}]"
