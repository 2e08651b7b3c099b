"""The README's command reference is the CLI's: every command of both apps, with its help's first line, and no
command that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from benchmark.cli.app import app as bench_app
from ingest.cli import app as ingest_app

ROOT = Path(__file__).resolve().parents[1]


def cli_rows() -> list[tuple[str, str]]:
    rows = []
    for prog, app in (("histo-ingest", ingest_app), ("histo-bench", bench_app)):
        for name, cmd in typer.main.get_command(app).commands.items():
            args = " ".join(f"[{p.name.upper()}]" if not p.required else p.name.upper()
                            for p in cmd.params if p.param_type_name == "argument")
            rows.append((f"{prog} {name}{' ' + args if args else ''}", cmd.get_short_help_str(limit=300)))
    return rows


def readme_rows(text: str) -> list[tuple[str, str]]:
    section = text[text.index("\n## Commands\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^\| `((?:histo-ingest|histo-bench) [^`]+)` \| (.*) \|$", section, re.M)


def test_readme_command_table_is_the_cli():
    assert readme_rows((ROOT / "README.md").read_text()) == cli_rows()


def test_the_table_check_sees_a_missing_or_stale_row():
    text = (ROOT / "README.md").read_text()
    first = cli_rows()[0]
    stale = text.replace(f"| `{first[0]}` | {first[1]} |", f"| `{first[0]}` | an old summary |")
    assert readme_rows(stale) != cli_rows()


def test_first_screen_is_the_two_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
