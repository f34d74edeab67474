"""The README stays true: its settings table is the schema's, and its quick-start commands exist."""

from __future__ import annotations

import configparser
from pathlib import Path

from dodo_ingest.cli import main
from dodo_ingest.config import settings_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_settings_table_is_generated_from_the_schema() -> None:
    assert settings_table() in README, "regenerate the table in README.md with `dodo-ingest settings`"


def test_the_quick_start_commands_exist() -> None:
    assert "dodo-ingest demo" in README and "tox" in README
    scripts = configparser.ConfigParser()
    scripts.read(ROOT / "setup.cfg")
    assert "dodo-ingest = dodo_ingest.cli:main" in scripts["options.entry_points"]["console_scripts"]
    assert "demo" in scripts["options.extras_require"]
    assert "tox" in (ROOT / ".ci" / "run").read_text()


def test_cli_lists_commands_and_rejects_unknown_ones(capsys: object) -> None:
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert main(["version"]) == 0
