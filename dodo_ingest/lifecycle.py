"""The process around the batchers: which process owns what, and how queued events leave it before it ends.

* **Every process is a fresh process until proven otherwise.** uWSGI (and a raw ``fork()`` through ctypes)
  fork in C without running Python's at-fork hooks, so ownership is decided by comparing ``os.getpid()``
  with the pid that built a piece of state, never by hooks alone. :func:`fork_guard` gives the code that
  rebuilds such state a lock that cannot have been inherited in a locked state.
* **Ordinary stops drain.** ``atexit`` covers a normal exit (after non-daemon threads have finished, so their
  events are in); multiprocessing children (which leave through ``os._exit``) get a finalizer. SIGTERM is the
  other ordinary stop, and servers treat it differently: gunicorn's workers exit normally (atexit runs),
  uvicorn re-raises it with the default handler once it has stopped gracefully, waitress and
  ``multiprocessing.Pool.terminate()`` leave the default handler in place.
  So a SIGTERM handler is installed that **chains** whatever was there:

  - the host had its own handler: it runs first, unchanged. If it later re-raises the signal with the
    default handler (uvicorn), that delivery is held back in the main thread until the exit drain has run,
    and then the process dies of SIGTERM as it would have;
  - the host had the default handler: every batcher is drained within its ``shutdown_timeout``, then the
    default handler is restored and the signal raised again, so the exit looks exactly as before;
  - the host ignores SIGTERM: so do we.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger("dodo_ingest.lifecycle")


class Drainable(Protocol):
    """What the exit paths need from a batcher."""

    @property
    def owner_pid(self) -> int:
        """The pid of the process whose events it holds."""
        ...  # pragma: no cover

    @property
    def shutdown_timeout(self) -> float:
        """Seconds its exit drain may take."""
        ...  # pragma: no cover

    def flush(self, timeout: float = 10.0) -> bool:
        """Send what is queued, waiting at most ``timeout``."""
        ...  # pragma: no cover

    def begin_shutdown(self, deadline: float) -> None:
        """Stop accepting events; deliver what is queued until ``deadline`` (``time.monotonic``)."""
        ...  # pragma: no cover

    def finish_shutdown(self) -> bool:
        """Wait for the drain begun by :meth:`begin_shutdown`; account for what is left."""
        ...  # pragma: no cover


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_guards: dict[int, threading.Lock] = {}


def fork_guard() -> threading.Lock:
    """A lock that belongs to the calling process: a forked child never finds it held by a thread that does
    not exist there (``dict.setdefault`` is atomic in CPython)."""
    pid = os.getpid()
    guard = _guards.get(pid)
    if guard is None:
        guard = _guards.setdefault(pid, threading.Lock())
    return guard


def register(batcher: Drainable) -> None:
    """Drain ``batcher`` at every ordinary stop of the process that owns it."""
    _live.add(batcher)
    if threading.current_thread() is threading.main_thread():
        install_signal_handler()


def process_started_thread() -> None:
    """Called when a flush thread starts: hooks that must be set up in the running process itself."""
    _hook_multiprocessing_exit()
    _warn_if_uwsgi_has_no_threads()
    if threading.current_thread() is threading.main_thread():
        install_signal_handler()


def drain_all(timeout: float | None = None) -> None:
    """Shut every batcher of this process down within its ``shutdown_timeout`` (all at once)."""
    batchers = [b for b in list(_live) if b.owner_pid == os.getpid()]
    now = time.monotonic()
    for batcher in batchers:
        seconds = batcher.shutdown_timeout if timeout is None else min(timeout, batcher.shutdown_timeout)
        batcher.begin_shutdown(now + seconds)
    for batcher in batchers:
        batcher.finish_shutdown()


def _drain_before_exit() -> None:
    _resolve_without_threads()
    drain_all()
    _release_held_signal()


def _resolve_without_threads() -> None:
    """At interpreter exit no thread can start (Python >= 3.12), but gevent (gunicorn's gevent workers) resolves
    host names in a thread pool: switch its hub to gevent's blocking resolver for the drain."""
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return
    try:
        from gevent.resolver.blocking import Resolver

        hub = gevent.get_hub()
        if not isinstance(hub.resolver, Resolver):
            hub.resolver = Resolver(hub=hub)
    except Exception:  # pragma: no cover - another gevent: the drain tries anyway
        logger.debug("dodo-ingest could not switch gevent to its blocking resolver", exc_info=True)


# --- SIGTERM -----------------------------------------------------------------------------------------------

_Handler = Callable[[int, FrameType | None], Any] | int | None
_previous: dict[int, _Handler] = {}
_installed_pid = 0
_held_pid = 0


def install_signal_handler() -> None:
    """Chain a SIGTERM handler in front of the current one (main thread only; once per process)."""
    global _installed_pid
    if _installed_pid == os.getpid() or not hasattr(signal, "SIGTERM"):
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm:
            _installed_pid = os.getpid()
            return
        if current is None:  # installed from C (uWSGI, an embedding host): leave it alone
            _installed_pid = os.getpid()
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread, or a platform without it
        return
    _previous[signal.SIGTERM] = current
    _installed_pid = os.getpid()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    if previous == signal.SIG_IGN:
        return
    if callable(previous):
        try:
            previous(signum, frame)
        finally:
            _hold_default_signal(signum)
        return
    # The default handler would kill the process now, skipping atexit: drain first, then die the same way.
    if _background_drain_pid != os.getpid() and _inside_the_sdk(frame):
        # The interrupted code may hold a lock the drain needs (inside add(), inside a drain that atexit or
        # multiprocessing's finalizer began): let it run on, drain beside it, and die of this signal after.
        _start_drain(signum)
        return
    if _background_drain_pid != os.getpid():
        _drain_in_thread()
    elif not _background_drain_done.is_set():
        return  # a second SIGTERM during the background drain: it kills the process when it is done
    signal.signal(signum, signal.SIG_DFL)
    _release_held_signal()
    signal.raise_signal(signum)


_background_drain_pid = 0
_background_drain_done = threading.Event()


def _inside_the_sdk(frame: FrameType | None) -> bool:
    """Whether the interrupted main thread is running dodo-ingest's code (maybe holding one of its locks)."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("dodo_ingest"):
            return True
        frame = frame.f_back
    return False


def _start_drain(signum: int) -> None:
    """Drain in a thread the handler does not wait for; then deliver ``signum`` again, to die of it."""
    global _background_drain_pid, _background_drain_done
    _background_drain_pid = os.getpid()
    done = _background_drain_done = threading.Event()

    def drain_then_die() -> None:
        try:
            _drain_in_thread()
        finally:
            done.set()
            os.kill(os.getpid(), signum)  # the main thread's handler now restores the default and re-raises

    try:
        threading.Thread(target=drain_then_die, name="dodo-ingest-sigterm-drain", daemon=True).start()
    except RuntimeError:  # at interpreter exit: the drain that atexit began goes on in the main thread
        done.set()


def _drain_in_thread() -> None:
    """Flush, then shut down, every batcher; from a helper thread joined with a deadline."""
    batchers = [b for b in list(_live) if b.owner_pid == os.getpid()]
    if not batchers:
        return
    timeout = max(b.shutdown_timeout for b in batchers)
    deadline = time.monotonic() + timeout

    def drain() -> None:
        for batcher in batchers:  # phase 1: what is queued, while requests still in flight may add more
            batcher.flush(max(0.0, (deadline - time.monotonic()) / 2))
        drain_all(max(0.0, deadline - time.monotonic()))

    thread = threading.Thread(target=drain, name="dodo-ingest-exit-drain", daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return
    thread.join(timeout + 1.0)


def _hold_default_signal(signum: int) -> None:
    """Hold back a later re-raise of ``signum`` in this (the main) thread until the exit drain has run."""
    global _held_pid
    if not hasattr(signal, "pthread_sigmask"):
        return
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    except (OSError, ValueError):
        return
    _held_pid = os.getpid()


def _release_held_signal() -> None:
    """Deliver what :func:`_hold_default_signal` held back (the process may end here, as the host intended)."""
    global _held_pid
    if _held_pid != os.getpid():
        return
    _held_pid = 0
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _unblock_in_child() -> None:
    """A child forked after SIGTERM was held must not inherit the held mask (gunicorn forks with os.fork)."""
    global _held_pid
    if _held_pid and hasattr(signal, "pthread_sigmask"):
        _held_pid = 0
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


# --- multiprocessing and uWSGI -------------------------------------------------------------------------------

_exit_hook_pid = 0


def _hook_multiprocessing_exit() -> None:
    """multiprocessing children leave through ``os._exit``, which skips atexit: drain in its finalizers.

    multiprocessing clears its finalizers when a child starts, so this must run in the child itself.
    """
    global _exit_hook_pid
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or _exit_hook_pid == os.getpid() or multiprocessing.parent_process() is None:
        return
    _exit_hook_pid = os.getpid()
    from multiprocessing import util

    util.Finalize(None, drain_all, exitpriority=100)


def _warn_if_uwsgi_has_no_threads() -> None:
    """uWSGI runs no Python threads unless told to: the flush thread would never run."""
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None) if uwsgi is not None else None
    if not isinstance(options, dict):
        return
    if not any(options.get(k) for k in ("enable-threads", b"enable-threads", "threads", b"threads")):
        logger.warning(
            "dodo-ingest: uWSGI is running without threads, so events would never be sent. "
            "Start uWSGI with --enable-threads, or use sync_mode=True."
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unblock_in_child)
atexit.register(_drain_before_exit)
