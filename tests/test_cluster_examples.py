"""The cluster examples in ``examples/cluster/`` (README "Running on a cluster"): valid bash, well-formed SBATCH
directives, and every histo-bench option they pass exists on the command they call."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from benchmark.cli.app import app

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "cluster").glob("*.sbatch"))
SBATCH = re.compile(r"^#SBATCH --[a-z-]+=\S+$")


def _commands(text: str) -> list[list[str]]:
    """(subcommand, options...) of every histo-bench call, joined over continuation lines."""
    joined = text.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word == "histo-bench" or (word == "benchmark.cli" and words[i - 1] == "-m"):
                calls.append(words[i + 1:])
    return calls


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"suite.sbatch", "train_multinode.sbatch"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_script_is_valid(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives and all(SBATCH.match(d) for d in directives), directives
    commands = typer.main.get_command(app).commands
    calls = _commands(text)
    assert calls, "no histo-bench call found"
    for call in calls:
        name, args = call[0], call[1:]
        assert name in commands, f"{script.name}: no command {name!r}"
        known = {opt for param in commands[name].params for opt in param.opts}
        used = {a for a in args if a.startswith("--")}
        assert used <= known, f"{script.name}: {name} has no {sorted(used - known)}"
