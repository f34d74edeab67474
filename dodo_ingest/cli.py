"""The ``dodo-ingest`` command line.

``dodo-ingest serve``     run the local Dodo-compatible server and its dashboard (``dodo-ingest serve --help``)
``dodo-ingest demo``      the end-to-end demo: local server, an instrumented Flask API, traffic, usage tables
                          (``--serve`` keeps its dashboard open afterwards)
``dodo-ingest forward``   forward the shared Redis buffer (``buffer_url``) to Dodo; ``--status`` prints its state
``dodo-ingest check``     validate the configuration from the environment and test the key against the host
``dodo-ingest settings``  print every setting as a table
``dodo-ingest version``   print the version
"""

from __future__ import annotations

import sys

from dodo_ingest._version import __version__

USAGE = __doc__.split("\n\n", 1)[1].rstrip() if __doc__ else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print("usage: dodo-ingest COMMAND [ARGS]\n\n" + USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from dodo_ingest.localserver import main as serve

        return int(serve(rest))
    if command == "demo":
        try:
            from dodo_ingest.demo import main as demo
        except ImportError as exc:  # Flask is an extra
            print(f"the demo needs Flask: pip install 'dodo-ingest[demo]' ({exc})", file=sys.stderr)
            return 1
        return int(demo(rest))
    if command == "forward":
        try:
            from dodo_ingest.fleet.forwarder import main as forward
        except ImportError as exc:  # redis is an extra
            print(f"forwarding needs redis: pip install 'dodo-ingest[fleet]' ({exc})", file=sys.stderr)
            return 1
        return int(forward(rest))
    if command == "check":
        return _check()
    if command == "settings":
        from dodo_ingest.config import settings_table

        print(settings_table())
        return 0
    if command in ("version", "--version"):
        print(__version__)
        return 0
    print(f"dodo-ingest: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _check() -> int:
    from dodo_ingest.config import Config
    from dodo_ingest.errors import ConfigurationError
    from dodo_ingest.transport import check_health

    try:
        config = Config.load()
    except ConfigurationError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return 1
    health = check_health(config)
    ok, verdict = health.healthy, health.message
    print(("OK: " if ok else "FAILED: ") + verdict)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
