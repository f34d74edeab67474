"""``python -m dodo_ingest.localserver``: the same as ``dodo-ingest serve``."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
