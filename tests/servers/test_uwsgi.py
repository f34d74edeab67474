"""uWSGI (from the ``pyuwsgi`` wheel): ``--master --processes 2 --enable-threads``, with and without
``--lazy-apps`` (issue 7, item 1).

Without ``--lazy-apps`` the master imports the app and forks its workers in C, without Python's at-fork
hooks: whatever per-process state the SDK renews only in such a hook (the event-id prefix, the queue, the
lock) is the parent's in every worker. Two workers minting the same ids lose events silently: Dodo (and
the local server) ignore an id they already hold. Stopped by SIGTERM with ``--die-on-term`` (what systemd,
Docker and Kubernetes send); every served request must be stored, once.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.harness import APPS, ROOT, BackgroundLoad, ServerProcess, app_env, check_store

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def uwsgi(app: str, *options: str) -> Callable[[int], list[str]]:
    """A uWSGI command line (the ``pyuwsgi`` module is the ``uwsgi`` binary) for ``app``."""

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-c", "import sys, pyuwsgi; sys.exit(pyuwsgi.run())",
            "--http-socket", f"127.0.0.1:{port}",
            "--master", "--processes", "2", "--enable-threads",
            "--module", app, "--chdir", str(ROOT), "--need-app",
            "--die-on-term", "--disable-logging",
            *options,
        ]  # fmt: skip

    return command


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["preforked-app", "lazy-apps"])
@pytest.mark.parametrize("app", ["wsgi", "flask"])
def test_one_event_per_request_under_uwsgi(
    dodo_server: LocalDodoServer, tmp_path: Path, app: str, lazy_apps: bool
) -> None:
    command = uwsgi(APPS[app], *(["--lazy-apps"] if lazy_apps else []))
    with ServerProcess(command, app_env(dodo_server), tmp_path, name="uwsgi") as server:
        with BackgroundLoad(server.url) as load:
            load.wait_for(lambda: load.count() >= 150 and len(load.pids()) >= 2, 120, "both workers to serve")
        served = load.stop()
        returncode = server.stop(signal.SIGTERM)
    assert returncode == 0, server.output()
    check_store(dodo_server, served, server.output())
    assert "Traceback" not in server.output(), server.output()
