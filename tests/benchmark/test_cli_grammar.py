"""One CLI grammar over both apps, read off the commands themselves (``typer.main.get_command``): at most 13
``histo-bench`` commands (the per-stage speed checks are one family, ``<stage>-bench``); ``--checkpoint`` for a
checkpoint (never positional), ``--data`` for a store read, ``--mag`` for a magnification, ``--device`` defaulting to
auto; options built from a config dataclass have its fields' defaults and help; and the one error handler: an expected
error is one ``error:`` line and exit 1, a bug shows its traceback."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path, PurePath

import pytest
import typer
from typer.testing import CliRunner

from benchmark.cli import app as bench_cli
from benchmark.cli import studies
from histo_bench.command_options import field_help
from histo_bench.errors import EXIT_ERROR, ConfigError
from ingest import cli as ingest_cli

ROOT = Path(__file__).resolve().parents[2]
APPS = {"histo-bench": bench_cli.app, "histo-ingest": ingest_cli.app}
COMMANDS = {f"{prog} {name}": command for prog, app in APPS.items()
            for name, command in typer.main.get_command(app).commands.items()}
runner = CliRunner()


def _reads_a_store(param) -> bool:
    """An option whose value is a store to read: its help says so first ("Image store ...", "Store (default ...)");
    "Slide store: ..." introduces an option that applies with a slide store, "... to write" is an output."""
    text = (param.help or "").lower()
    return bool(re.match(r"(the )?((image|slide) )?store\b(?!:)", text)) and "to write" not in text


def test_histo_bench_has_at_most_13_commands_and_help_lists_them():
    group = typer.main.get_command(bench_cli.app)
    assert 0 < len(group.commands) <= 13, sorted(group.commands)
    benches = sorted(name for name in group.commands if name.endswith("bench"))
    assert benches == ["ingest-bench", "loader-bench", "tile-bench"]  # one family: <stage>-bench
    res = runner.invoke(bench_cli.app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    listed = re.findall(r"^│ ([a-z][a-z-]*) ", res.output, re.M)
    assert listed == list(group.commands)


def test_the_grammar_sees_what_it_checks():
    """The rules below would pass vacuously if they matched nothing."""
    def having(rule) -> set[str]:
        return {name.split()[1] for name, command in COMMANDS.items() if any(map(rule, command.params))}

    assert having(lambda p: p.name == "checkpoint") == {"evaluate", "predict", "explain", "run"}
    assert having(_reads_a_store) == {"train", "evaluate", "predict", "suite", "explain", "loader-bench", "run"}
    assert having(lambda p: "--device" in p.opts) == having(_reads_a_store)
    assert having(lambda p: "--mag" in p.opts) == {"train", "evaluate", "explain", "tile-bench", "loader-bench",
                                                   "run", "breakhis", "tile"}


@pytest.mark.parametrize("name", COMMANDS)
def test_one_name_per_concept(name):
    for param in COMMANDS[name].params:
        where = f"{name} {param.name}"
        if param.param_type_name == "argument":
            assert "checkpoint" not in param.name and "best.pt" not in (param.help or ""), f"{where}: positional"
            continue
        if "checkpoint" in param.name or any("checkpoint" in o for o in param.opts):
            assert param.opts == ["--checkpoint"], where
        if _reads_a_store(param) or param.name in ("data", "store"):
            assert param.opts == ["--data"] and _reads_a_store(param), where
        if param.name == "device" or "--device" in param.opts:
            assert param.opts == ["--device"] and param.default == "auto", where
        if any(re.search(r"-mag", o) for o in param.opts):  # --mag, --train-mag, --magnification...
            assert param.opts in (["--mag"], ["--base-mag"]), where
        assert param.help, f"{where}: no help"


def test_predict_takes_an_ensemble_as_repeated_checkpoints():
    (param,) = [p for p in COMMANDS["histo-bench predict"].params if p.name == "checkpoint"]
    assert param.multiple and param.required


def _default(cls_or_instance, name: str):
    if not isinstance(cls_or_instance, type):
        return getattr(cls_or_instance, name)
    f = {f.name: f for f in dataclasses.fields(cls_or_instance)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default  # MISSING for a required field


def _plain(value):
    return str(value) if isinstance(value, PurePath) else tuple(value) if isinstance(value, list) else value


def _config_commands():
    from benchmark.run import BenchConfig
    from benchmark.suites import StudyConfig
    from ingest.breakhis import IngestConfig
    from ingest.synthetic.demo import demo_config
    from ingest.tiling import TileConfig
    from pipelines.explain.run import ExplainConfig

    # command, the dataclass its help comes from, its defaults, option -> field, options of the command's own
    return [
        ("histo-bench run", "benchmark.run:BenchConfig", BenchConfig, bench_cli.RUN_FIELDS, set()),
        ("histo-bench suite", "benchmark.suites:StudyConfig", StudyConfig, studies.SUITE_FIELDS, {"list_suites"}),
        ("histo-bench explain", "pipelines.explain.run:ExplainConfig", ExplainConfig, studies.EXPLAIN_FIELDS, set()),
        ("histo-ingest tile", "ingest.tiling:TileConfig", TileConfig, ingest_cli.TILE_FIELDS,
         {"slides", "out", "workers", "scheduler"}),
        ("histo-ingest breakhis", "ingest.breakhis:IngestConfig", IngestConfig, ingest_cli.BREAKHIS_FIELDS,
         {"split", "seed"}),  # parsed into the config's SplitConfig
        ("histo-ingest demo", "ingest.synthetic.breakhis_tree:SyntheticConfig", demo_config(),
         ingest_cli.DEMO_FIELDS, {"out", "workers", "grid", "slides"}),
    ]


@pytest.mark.parametrize("case", _config_commands(), ids=lambda case: case[0])
def test_options_built_from_a_config_have_its_defaults_and_help(case):
    name, where, defaults, fields, own = case
    params = {p.name: p for p in COMMANDS[name].params}
    assert set(params) == set(fields) | own, "an option is neither a config field nor the command's own"
    for option, field in fields.items():
        param, default = params[option], _default(defaults, field)
        assert param.help.startswith(field_help(where, field)), f"{name} {option}: help is not {field}'s"
        if param.default is not None and default is not dataclasses.MISSING:  # None: the config's default
            assert _plain(param.default) == _plain(default), f"{name} {option}: default differs from {field}'s"


def test_train_options_are_each_recipes_config_fields():
    """``train`` spans recipes (pipelines.training.launch.OPTIONS): every option is a field of the config of each
    recipe that takes it, None (that config's default) or the same default in all of them, and has help."""
    from pipelines.training.classifier import TrainConfig
    from pipelines.training.launch import OPTIONS
    from pipelines.training.mil import MILConfig
    from pipelines.training.mpcs import PretrainConfig
    from pipelines.training.slide_fusion import SlideFusionConfig

    configs = {"classifier": TrainConfig, "fusion": TrainConfig, "mil": MILConfig, "slide_fusion": SlideFusionConfig,
               "mpcs": PretrainConfig}
    params = {p.name: p for p in COMMANDS["histo-bench train"].params}
    assert set(params) == {"model"}.union(*OPTIONS.values())
    assert set(configs) == set(OPTIONS)
    for kind, options in OPTIONS.items():
        names = {f.name for f in dataclasses.fields(configs[kind])}
        for option, field in options.items():
            assert field in names, f"{kind}: {option} -> {field} is no {configs[kind].__name__} field"
            param = params[option]
            assert param.help, option
            assert param.default is None or _plain(param.default) == _default(configs[kind], field), (kind, option)


# the one error handler ------------------------------------------------------------------------------------------

def _broken(exc):
    def raise_it(*args, **kwargs):
        raise exc

    return raise_it


@pytest.mark.parametrize("app, args, target", [
    (bench_cli.app, ["compare", "a", "b"], "benchmark.results.load_rows"),
    (ingest_cli.app, ["info", "some.zarr"], "ingest.output_guard.store_format"),
])
def test_an_expected_error_is_one_line_and_exit_1(app, args, target, monkeypatch):
    monkeypatch.setattr(target, _broken(ConfigError("some.zarr: not what it should be")))
    res = runner.invoke(app, args)
    assert res.exit_code == EXIT_ERROR
    assert res.output.strip().splitlines() == ["error: some.zarr: not what it should be"]


@pytest.mark.parametrize("module, args", [
    ("benchmark.cli.app", ["histo-bench", "compare", "nowhere-a", "nowhere-b"]),
    ("ingest.cli", ["histo-ingest", "info", "nowhere.zarr"]),
])
def test_through_the_real_entry_point_an_expected_error_is_one_line_and_exit_1(module, args, tmp_path):
    """As a user runs it (typer's own exception handling, which CliRunner bypasses): one line, no traceback."""
    code = f"import sys; sys.argv = {args!r}; from {module} import main; main()"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == EXIT_ERROR, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: nowhere") and res.stdout == ""


def test_an_unknown_name_is_one_line_listing_the_valid_names():
    res = runner.invoke(bench_cli.app, ["suite", "nope"])
    assert res.exit_code == EXIT_ERROR
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: unknown suite 'nope'; valid names: ") and "magnification-transfer" in line


def test_an_unexpected_exception_is_not_shortened_to_a_line(monkeypatch):
    monkeypatch.setattr("benchmark.results.load_rows", _broken(RuntimeError("boom")))
    res = runner.invoke(bench_cli.app, ["compare", "a", "b"])
    assert isinstance(res.exception, RuntimeError) and str(res.exception) == "boom"
    assert "error:" not in res.output


def test_an_unexpected_exception_shows_its_traceback():
    code = ("import sys, benchmark.results as r\n"
            "def boom(*a, **k):\n    raise RuntimeError('boom')\n"
            "r.load_rows = boom\nsys.argv = ['histo-bench', 'compare', 'a', 'b']\n"
            "from benchmark.cli.app import main\nmain()\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "RuntimeError: boom" in res.stderr, res.stderr[-2000:]
    assert "error: boom" not in res.stderr


def test_a_suites_recorded_command_reproduces_its_study(monkeypatch, tmp_path):
    """``StudyConfig.command()`` (written into every suite's results) parses with ``histo-bench suite`` back into the
    same study, so the flags it writes by name cannot drift from the CLI's."""
    import shlex
    from dataclasses import replace

    import benchmark.suites as suites
    from benchmark.suites import StudyConfig

    study = StudyConfig(suite="transfer", store="s.zarr", tasks=("binary",), models=("resnet18", "resnet50"), folds=3,
                        seeds=2, seed=5, split_seed=7, epochs=4, batch_size=8, image_size=64, lr=0.002,
                        max_steps_per_epoch=3, pretrained=True, weights_dir=str(tmp_path), quick=True)
    seen = {}
    monkeypatch.setattr(suites, "run_suite", lambda s, on_run=None: seen.setdefault("study", s) and 1 / 0)
    words = shlex.split(study.command())
    assert words[:2] == ["histo-bench", "suite"]
    CliRunner().invoke(bench_cli.app, words[1:])
    recorded = {f: getattr(study, f) for f in ("device", "out", "precision", "loader", "keep_last")}
    assert seen["study"] == replace(study, **{f: getattr(seen["study"], f) for f in recorded})
    assert seen["study"] != replace(study, seeds=1)  # the comparison sees a lost flag
