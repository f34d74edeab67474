"""Interpreter exit drains the queue; forked children (os.fork, multiprocessing) deliver their own events."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dodo_ingest import Ingestion
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.conftest import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


def run_script(code: str, server: LocalDodoServer) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": server.url,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_interpreter_exit_drains_the_queue(dodo_server: LocalDodoServer) -> None:
    result = run_script(
        """
        from dodo_ingest import Ingestion, create_batch
        batch = create_batch(Ingestion(), max_size=1000, flush_interval=600)
        for i in range(250):
            batch.add("cus_exit", {"i": i})
        # no flush, no cleanup: the atexit drain must deliver
        """,
        dodo_server,
    )
    assert result.returncode == 0, result.stderr
    assert dodo_server.wait_for_events(250, timeout=10)
    assert len({e["event_id"] for e in dodo_server.events()}) == 250


def test_exit_is_bounded_by_the_shutdown_deadline_and_says_what_was_lost(dodo_server: LocalDodoServer) -> None:
    dodo_server.add_faults(Fault(status=503, retry_after="60", repeat=50))
    result = run_script(
        """
        from dodo_ingest import Ingestion, create_batch
        batch = create_batch(Ingestion(shutdown_timeout=1.0), max_size=1000, flush_interval=600)
        for i in range(20):
            batch.add("cus_exit", {"i": i})
        """,
        dodo_server,
    )
    assert result.returncode == 0
    assert "dropped 20 events (shutdown)" in result.stderr
    assert TEST_KEY not in result.stderr
    assert dodo_server.event_count() == 0


def test_exit_drain_works_when_the_thread_never_started(dodo_server: LocalDodoServer) -> None:
    """Events added from an atexit handler registered earlier (so it runs later): no new thread can start."""
    result = run_script(
        """
        import atexit
        from dodo_ingest import Ingestion, create_batch
        batch = create_batch(Ingestion(), max_size=1000, flush_interval=600)
        # Runs before dodo-ingest's own exit drain (atexit is LIFO); on Python >= 3.12 no thread can start
        # any more at this point, so the drain must send from the exiting thread itself.
        atexit.register(lambda: batch.add("cus_exit", {"i": 0}))
        """,
        dodo_server,
    )
    assert result.returncode == 0, result.stderr
    assert dodo_server.event_count() == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_delivers_its_own_events_and_never_the_parents(dodo_server: LocalDodoServer) -> None:
    ingestion = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url)
    batch = ingestion.create_batch(max_size=1000, flush_interval=600)
    try:
        for i in range(5):
            batch.add("cus_parent", {"i": i})  # started the parent's thread; still queued at fork time
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                for i in range(7):
                    batch.add("cus_child", {"i": i})
                code = 0 if batch.flush(timeout=10) and batch.stats().sent == 7 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert batch.flush(timeout=10)
        assert len(dodo_server.events(customer_id="cus_child")) == 7
        assert len(dodo_server.events(customer_id="cus_parent")) == 5
        assert len({e["event_id"] for e in dodo_server.events()}) == 12
    finally:
        batch.shutdown(timeout=5)


def _child_adds(batch: object, n: int) -> None:
    for i in range(n):
        batch.add("cus_mp", {"i": i})  # type: ignore[attr-defined]
    # no flush: multiprocessing children leave through os._exit; the finalizer must drain


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_multiprocessing_children_drain_at_exit(dodo_server: LocalDodoServer) -> None:
    ingestion = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url)
    batch = ingestion.create_batch(max_size=1000, flush_interval=600)
    batch.add("cus_parent", {"i": 0})
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_child_adds, args=(batch, 40)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert batch.flush(timeout=10)
    assert dodo_server.wait_for_events(81, timeout=10)
    assert len({e["event_id"] for e in dodo_server.events()}) == 81
    batch.shutdown(timeout=5)


def test_uwsgi_without_threads_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, dodo_server: LocalDodoServer
) -> None:
    fake_uwsgi = type(sys)("uwsgi")
    fake_uwsgi.opt = {"master": True}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake_uwsgi)
    batch = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url).create_batch(flush_interval=600)
    with caplog.at_level("WARNING", logger="dodo_ingest"):
        batch.add("cus_1", {})
    assert "--enable-threads" in caplog.text
    fake_uwsgi.opt = {"enable-threads": True}  # type: ignore[attr-defined]
    caplog.clear()
    other = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url).create_batch(flush_interval=600)
    with caplog.at_level("WARNING", logger="dodo_ingest"):
        other.add("cus_1", {})
    assert "--enable-threads" not in caplog.text
    batch.shutdown(timeout=5)
    other.shutdown(timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_track_api_call_in_a_forked_child_uses_its_own_connection(dodo_server: LocalDodoServer) -> None:
    from dodo_ingest import track_api_call

    ingestion = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url)
    track_api_call(ingestion, "cus_parent", {"i": 0})  # opens the parent's keep-alive connection
    [parent_transport] = ingestion._sync._idle
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            track_api_call(ingestion, "cus_child", {"i": 1})
            code = 0 if parent_transport not in ingestion._sync._idle else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    track_api_call(ingestion, "cus_parent", {"i": 2})  # the parent's connection still works
    assert ingestion._sync._idle == [parent_transport]
    assert sorted(e["customer_id"] for e in dodo_server.events()) == ["cus_child", "cus_parent", "cus_parent"]
    ingestion.shutdown()


# --- SIGTERM and Pool.terminate: ordinary stops lose nothing (item 14) -------------------------------------


def start_script(code: str, server: LocalDodoServer) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": server.url,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("host", ["default", "uvicorn-like"])
def test_sigterm_drains_and_the_process_still_dies_of_sigterm(host: str, dodo_server: LocalDodoServer) -> None:
    """``default``: no handler (waitress, a plain worker): SIGTERM killed the process at once, atexit never ran.
    ``uvicorn-like``: the host's handler stops gracefully, then restores the default handler and re-raises."""
    prologue = {
        "default": "stop = threading.Event()",
        "uvicorn-like": """
            stop = threading.Event()
            original = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
            """,
    }[host]
    epilogue = {
        "default": "stop.wait()",
        "uvicorn-like": """
            stop.wait()
            for i in range(100, 110):  # requests finishing during the graceful stop
                batch.add("cus_term", {"i": i})
            signal.signal(signal.SIGTERM, original)
            signal.raise_signal(signal.SIGTERM)
            """,
    }[host]
    code = (
        "import signal, sys, threading\n"
        + textwrap.dedent(prologue)
        + textwrap.dedent(
            """
            from dodo_ingest import Ingestion, create_batch
            batch = create_batch(Ingestion(), max_size=1000, flush_interval=600)
            for i in range(100):
                batch.add("cus_term", {"i": i})
            print("ready", flush=True)
            """
        )
        + textwrap.dedent(epilogue)
    )
    process = start_script(code, dodo_server)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=30)
    assert returncode == -signal.SIGTERM, process.stderr.read() if process.stderr else ""
    expected = 100 if host == "default" else 110
    assert dodo_server.wait_for_events(expected, timeout=10)
    events = dodo_server.events()
    assert len(events) == expected and len({e["event_id"] for e in events}) == expected


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_a_sigterm_that_interrupts_the_sdk_holding_a_lock_still_drains_and_dies_of_sigterm(
    dodo_server: LocalDodoServer,
) -> None:
    """The handler runs in the main thread between two bytecodes: there the main thread may hold a lock of the
    SDK's. Here SIGTERM arrives inside the ``Event.set()`` of a shutdown that had begun (as when
    ``Pool.terminate()`` hits a worker already draining in multiprocessing's finalizer), with the event's lock
    held: a drain that waited for that lock waited until its deadline, and the queue died with the process."""
    result = run_script(
        """
        import os, signal, sys
        from dodo_ingest import Ingestion, create_batch
        batch = create_batch(Ingestion(), max_size=1000, flush_interval=600)
        for i in range(50):
            batch.add("cus_lock", {"i": i})

        def kill_inside_the_lock(frame, event, arg):
            caller = frame.f_back.f_back if frame.f_back else None
            if event == "call" and frame.f_code.co_name == "notify_all" and caller and (
                caller.f_code.co_name == "begin_shutdown"
            ):
                sys.setprofile(None)
                os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: inside notify_all

        sys.setprofile(kill_inside_the_lock)
        batch.shutdown()
        signal.pause()  # SIGTERM ends the process once its drain is done
        """,
        dodo_server,
    )
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert dodo_server.wait_for_events(50, timeout=10)
    assert sorted(e["metadata"]["i"] for e in dodo_server.events()) == list(range(50))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork start method")
def test_a_pool_that_ends_in_terminate_delivers_its_workers_queues(dodo_server: LocalDodoServer) -> None:
    """``with multiprocessing.Pool()`` ends in ``terminate()``: SIGTERM to every worker."""
    result = run_script(
        """
        import multiprocessing, os
        from dodo_ingest import Ingestion, create_batch

        batch = None

        def work(i):
            global batch
            if batch is None:
                batch = create_batch(Ingestion(), max_size=1000, flush_interval=600)
            batch.add("cus_pool", {"i": i, "pid": os.getpid()})
            return i

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(2) as pool:
                assert sorted(pool.map(work, range(40))) == list(range(40))
        """,
        dodo_server,
    )
    assert result.returncode == 0, result.stderr
    assert dodo_server.wait_for_events(40, timeout=15)
    events = dodo_server.events()
    assert sorted(e["metadata"]["i"] for e in events) == list(range(40))
