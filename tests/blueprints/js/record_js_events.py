"""Record what Dodo's JavaScript package sends, as the reference for tests/blueprints/test_js_parity.py.

    python tests/blueprints/js/record_js_events.py [--version 0.6.1]

Needs ``node`` and ``npm`` (and the npm registry): installs ``@dodopayments/ingestion-blueprints`` into a
temporary directory, runs ``record_js_events.mjs`` against a local Dodo server and writes every stored event to
``tests/blueprints/data/js_events.json``, keyed by case name (the customer id is ``cus_js_<case>``). Cases the
script ran that sent nothing are listed under ``"not_sent"``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from dodo_ingest.localserver import LocalDodoServer  # noqa: E402

PACKAGE = "@dodopayments/ingestion-blueprints"
DATA = HERE.parent / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.6.1")
    parser.add_argument("--out", type=Path, default=DATA / "js_events.json")
    args = parser.parse_args()
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as work, LocalDodoServer() as server:
        subprocess.run(["npm", "init", "-y"], cwd=work, check=True, capture_output=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"{PACKAGE}@{args.version}"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        script = Path(work) / "record.mjs"
        shutil.copy(HERE / "record_js_events.mjs", script)
        env = {**os.environ, "DODO_LOCAL_URL": server.url, "LLM_RESPONSES": str(DATA / "llm_responses.json")}
        run = subprocess.run(["node", str(script)], cwd=work, env=env, check=True, capture_output=True, text=True)
        ran = json.loads(run.stdout.strip().splitlines()[-1])
        stored = {e["customer_id"].removeprefix("cus_js_"): e for e in server.events()}
    cases = {
        name: {k: stored[name][k] for k in ("event_name", "event_id", "metadata")} for name in ran if name in stored
    }
    out = {
        "_comment": f"Recorded from {PACKAGE}@{args.version} by tests/blueprints/js/record_js_events.py; do not edit.",
        "package": f"{PACKAGE}@{args.version}",
        "cases": cases,
        "not_sent": [name for name in ran if name not in stored],
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(cases)} events recorded, {len(out['not_sent'])} cases sent nothing -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
