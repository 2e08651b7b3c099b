"""The command lines the project shows people, against the CLI itself: the cluster examples in ``examples/cluster/``
(README "Running on a cluster": valid bash, well-formed SBATCH directives), ``make demo`` and the README's code
blocks. Every ``histo-bench`` / ``histo-ingest`` call names a command that exists, passes only options it has, and
no more positional arguments than it takes (a checkpoint is ``--checkpoint``, never positional)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from benchmark.cli.app import app as bench_app
from ingest.cli import app as ingest_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "cluster").glob("*.sbatch"))
SBATCH = re.compile(r"^#SBATCH --[a-z-]+=\S+$")
APPS = {"histo-bench": typer.main.get_command(bench_app), "histo-ingest": typer.main.get_command(ingest_app)}


def _calls(text: str) -> list[tuple[str, list[str]]]:
    """(program, [subcommand, arguments...]) of every line that calls histo-bench / histo-ingest (or ``-m
    benchmark.cli``), joined over continuation lines; ``<placeholder words>`` count as one word."""
    joined = re.sub(r"<[^>\n]*>", "X", text.replace("\\\n", " "))
    calls = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name in APPS:  # a command line, not a mention in a string
            calls.append((Path(words[0]).name, words[1:]))
        elif "benchmark.cli" in words and words[words.index("benchmark.cli") - 1] == "-m":  # torchrun -m ...
            calls.append(("histo-bench", words[words.index("benchmark.cli") + 1:]))
    return calls


def _check(prog: str, call: list[str], where: str) -> None:
    name, args = call[0], call[1:]
    commands = APPS[prog].commands
    assert name in commands, f"{where}: {prog} has no command {name!r}"
    options = {opt: param for param in commands[name].params if param.param_type_name == "option"
               for opt in param.opts}
    arguments = [p for p in commands[name].params if p.param_type_name == "argument"]
    positional, i = [], 0
    while i < len(args):
        word = args[i]
        if word.startswith("-"):
            flag = word.split("=")[0]
            assert flag in options, f"{where}: {prog} {name} has no {flag}"
            takes_value = not (options[flag].is_flag or options[flag].count) and "=" not in word
            i += 2 if takes_value else 1
        else:
            positional.append(word)
            i += 1
    if not any(p.nargs == -1 for p in arguments):
        assert len(positional) <= len(arguments), f"{where}: {prog} {name} takes no positional {positional}"


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"suite.sbatch", "train_multinode.sbatch"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_script_is_valid(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives and all(SBATCH.match(d) for d in directives), directives
    calls = _calls(text)
    assert calls, "no histo-bench call found"
    for prog, call in calls:
        _check(prog, call, script.name)


def test_make_demo_command_lines():
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile[makefile.index("\ndemo:"):makefile.index("\nlint:")]
    calls = _calls(demo)
    assert {call[0] for _, call in calls} >= {"demo", "breakhis", "tile", "train", "predict", "suite", "run",
                                              "explain", "report"}
    for prog, call in calls:
        _check(prog, call, "make demo")


def test_readme_command_lines():
    """The README's and docs/'s code blocks call only commands and options that exist."""
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S)
    calls = [c for block in blocks for c in _calls(block)]
    assert len(calls) > 20
    for prog, call in calls:
        _check(prog, call, f"README: {prog} {' '.join(call)}")


def test_the_check_catches_a_positional_checkpoint_and_an_unknown_option():
    with pytest.raises(AssertionError, match="takes no positional"):
        _check("histo-bench", ["evaluate", "runs/x/best.pt"], "here")
    with pytest.raises(AssertionError, match="has no --train-mag"):
        _check("histo-bench", ["train", "--train-mag", "100X"], "here")
    _check("histo-bench", ["predict", "--checkpoint", "a.pt", "--checkpoint", "b.pt", "--data", "s.zarr"], "here")
