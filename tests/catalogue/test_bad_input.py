"""The bad-input catalogue: one table of wrong, broken, missing and hostile inputs, each fed to a real command of
``histo-bench`` or ``histo-ingest`` on real files (see :mod:`tests.catalogue.world`).

Every case must end with the documented exit code, exactly one ``error:`` line that names the thing (file, option,
store) and matches the case's reason, no traceback, and no output folder that looks complete. Cases needing a
read-only folder or a full disk mount a tmpfs and skip where this user may not mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli.app import app as bench_app
from histo_bench.errors import EXIT_ERROR, EXIT_SKIPPED
from ingest.cli import app as ingest_app
from tests.catalogue.world import World, build_world, mounted, train_mil

BAD_CHECKPOINTS = {"truncated": "truncated.pt", "random bytes": "random.pt", "text": "text.pt", "empty": "empty.pt",
                   "a PNG": "png.pt", "missing": "nope.pt"}
CHECKPOINT_REASON = r"(not a readable torch checkpoint|empty file|no such checkpoint)"
TRAIN = "train --model tiny_cnn_test --data {img.zarr} --epochs 1 --batch-size 4"
#: Each command that takes a checkpoint, with the rest of its arguments.
CHECKPOINT_COMMANDS = {
    "evaluate": "evaluate --checkpoint {ckpt} --data {img.zarr} --device cpu",
    "predict": "predict --checkpoint {ckpt} --data {img.zarr} --device cpu --out {out}",
    "explain": "explain --checkpoint {ckpt} --data {img.zarr} --device cpu --out {out}",
    "run": "run --model tiny_cnn_test --checkpoint {ckpt} --data {img.zarr} --device cpu --batch-sizes 1 --out {out}",
    "train --weights": "train --model resnet18 --data {img.zarr} --weights {ckpt} --epochs 1 --batch-size 4 "
                       "--image-size 32 --device cpu --out {out}",
}
#: Each command that takes --device, with the rest of its arguments.
DEVICE_COMMANDS = {
    "train": TRAIN + " --out {out}",
    "train mil": "train --model abmil --data {tiles.zarr} --labels {slides/labels.csv} --out {out}",
    "evaluate": "evaluate --checkpoint {cls/best.pt} --data {img.zarr}",
    "predict": "predict --checkpoint {cls/best.pt} --data {img.zarr} --out {out}",
    "explain": "explain --checkpoint {cls/best.pt} --data {img.zarr} --out {out}",
    "run": "run --model tiny_cnn_test --checkpoint {cls/best.pt} --data {img.zarr} --out {out}",
    "loader-bench": "loader-bench --model tiny_cnn_test --data {img.zarr} --out {out}",
    "suite": "suite --model tiny_cnn_test --data {img.zarr} --quick --out {out}",
}


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (``{name}`` = a path of the world, ``{out}`` = a fresh output path,
    ``{ro}`` = a read-only folder, ``{full}`` = a nearly full disk), the reason the error line must match, the
    exit code."""

    cli: str  # "bench" or "ingest"
    args: str
    reason: str
    code: int = EXIT_ERROR


def _ref(name: str) -> str:
    """``{name}``: a placeholder in a case's arguments."""
    return "{" + name + "}"


def _input_cases() -> dict[str, Case]:
    """Broken checkpoints for every command that takes one; impossible devices for every command."""
    cases: dict[str, Case] = {}
    for kind, name in BAD_CHECKPOINTS.items():
        for command, args in CHECKPOINT_COMMANDS.items():
            reason = CHECKPOINT_REASON
            if "weights" in command:
                reason = r"weight file .* does not exist" if kind == "missing" else r"(weights|not a|cannot|could not)"
            cases[f"{kind} checkpoint -> {command}"] = Case("bench", args.replace("{ckpt}", _ref(name)), reason)
    for device, reason in (("tpu", r"--device 'tpu': not a device"), ("cuda", r"--device cuda: no CUDA device"),
                           ("cuda:x", r"not a device")):
        for command, args in DEVICE_COMMANDS.items():
            cases[f"--device {device} -> {command}"] = Case("bench", f"{args} --device {device}", reason)
    return cases


def _store_cases() -> dict[str, Case]:
    """Stores of the wrong kind, missing, not stores, with other classes, with broken shards."""
    cases: dict[str, Case] = {}
    wrong_store = {
        "image classifier on a slide store -> train": "train --model tiny_cnn_test --data {tiles.zarr} --out {out}",
        "MIL on an image store -> train": "train --model abmil --data {img.zarr} --labels {slides/labels.csv} "
                                          "--out {out}",
        "slide store -> evaluate": "evaluate --checkpoint {cls/best.pt} --data {tiles.zarr} --device cpu",
        "slide store -> predict": "predict --checkpoint {cls/best.pt} --data {tiles.zarr} --out {out}",
        "slide store -> explain": "explain --checkpoint {cls/best.pt} --data {tiles.zarr} --out {out}",
        "slide store -> run": "run --model tiny_cnn_test --checkpoint {cls/best.pt} --data {tiles.zarr} --out {out}",
        "slide store -> loader-bench": "loader-bench --model tiny_cnn_test --data {tiles.zarr} --out {out}",
        "slide store -> suite": "suite --model tiny_cnn_test --data {tiles.zarr} --quick --out {out}",
        "image store -> MIL evaluate": "evaluate --checkpoint {mil} --data {img.zarr}",
        "image store -> MIL predict": "predict --checkpoint {mil} --data {img.zarr} --out {out}",
        "image store -> MIL explain": "explain --checkpoint {mil} --data {img.zarr} --out {out}",
    }
    for name, args in wrong_store.items():
        cases[name] = Case("bench", args, r"(slide store|image store|trains on)")
    for command in ("train", "evaluate", "predict", "run", "loader-bench", "suite"):
        base = DEVICE_COMMANDS[command] + " --device cpu"
        cases[f"nonexistent store -> {command}"] = Case("bench", base.replace("{img.zarr}", "{nope.zarr}"),
                                                        r"nope\.zarr: no such store")
        cases[f"a folder that is not a store -> {command}"] = Case(
            "bench", base.replace("{img.zarr}", "{tree}"), r"tree: not a (histo-bench|zarr) store")
    for command in ("evaluate", "predict", "explain", "run"):
        cases[f"store with other classes -> {command}"] = Case(
            "bench", DEVICE_COMMANDS[command].replace("{img.zarr}", "{other_classes.zarr}") + " --device cpu",
            r"other_classes\.zarr: its classes \['class_0'.* differ from the checkpoint's \['adenosis'")
    for name, store in (("missing", "missing_shard.zarr"), ("truncated", "truncated_shard.zarr")):
        shard = r"images/c/.*(shard|missing)"
        cases[f"{name} shard -> evaluate"] = Case("bench", f"evaluate --checkpoint {{cls/best.pt}} --data {_ref(store)}"
                                                           " --device cpu", shard)
        cases[f"{name} shard -> info"] = Case("ingest", "info " + _ref(store), shard)
    return cases


def _option_cases() -> dict[str, Case]:
    """Zero, negative and malformed numbers; unknown names; files of the wrong shape."""
    cases: dict[str, Case] = {}
    numbers = {
        "--epochs 0": ("train --model tiny_cnn_test --data {img.zarr} --epochs 0 --out {out}", r"epochs"),
        "--epochs -3": ("train --model tiny_cnn_test --data {img.zarr} --epochs -3 --out {out}", r"epochs"),
        "--batch-size 0": ("train --model tiny_cnn_test --data {img.zarr} --batch-size 0 --out {out}", r"batch"),
        "--lr -1": ("train --model tiny_cnn_test --data {img.zarr} --lr -1 --out {out}", r"lr"),
        "--image-size 0 (train)": ("train --model tiny_cnn_test --data {img.zarr} --image-size 0 --out {out}",
                                   r"image_size"),
        "--batch-sizes 1,,x": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --batch-sizes 1,,x --out {out}",
                               r"--batch-sizes '1,,x'"),
        "--batch-sizes 0": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --batch-sizes 0 --out {out}",
                            r"batch sizes must be >= 1"),
        "--min-time -1": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --min-time -1 --out {out}",
                          r"--min-time -1"),
        "--max-time below --min-time": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --min-time 2 "
                                        "--max-time 1 --out {out}", r"--min-time 2 is above --max-time 1"),
        "--image-size 0 (run)": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --image-size 0 --out {out}",
                                 r"--image-size 0"),
        "--max-images 0": ("explain --checkpoint {cls/best.pt} --data {img.zarr} --max-images 0 --out {out}",
                           r"max.images"),
        "--steps 0": ("loader-bench --model tiny_cnn_test --data {img.zarr} --steps 0 --device cpu --out {out}",
                      r"steps"),
        "--lr nan": ("train --model tiny_cnn_test --data {img.zarr} --lr nan --out {out}", r"--lr nan: not a finite"),
        "--max-time inf": ("run --model tiny_cnn_test --checkpoint {cls/best.pt} --max-time inf --out {out}",
                           r"--max-time inf: not a finite"),
        "unknown model": ("train --model resnet_nope --data {img.zarr} --out {out}", r"resnet_nope"),
        "unknown magnification": ("evaluate --checkpoint {cls/best.pt} --data {img.zarr} --mag 37X", r"37X"),
        "unknown split": ("evaluate --checkpoint {cls/best.pt} --data {img.zarr} --split nope", r"nope"),
        "unknown suite": ("suite nope_suite --data {img.zarr}", r"nope_suite"),
        "labels CSV without its columns": ("train --model abmil --data {tiles.zarr} --labels {labels_bad.csv} "
                                           "--out {out}", r"labels_bad\.csv"),
        "nonexistent labels CSV": ("train --model abmil --data {tiles.zarr} --labels {nope.csv} --out {out}",
                                   r"nope\.csv"),
        "ensemble of two kinds": ("predict --checkpoint {cls/best.pt} --checkpoint {mil} --data {img.zarr} "
                                  "--out {out}", r"differs|kind"),
        "compare two missing folders": ("compare {nope_a} {nope_b}", r"nope_a"),
        "report on a folder with nothing": ("report {empty_dir}", r"empty_dir"),
    }
    for name, (args, reason) in numbers.items():
        cases[name] = Case("bench", args, reason)
    return cases


def _ingest_cases() -> dict[str, Case]:
    """histo-ingest's inputs; read-only folders and full disks for every writer."""
    cases: dict[str, Case] = {}
    ingest = {
        "breakhis: nonexistent folder": ("breakhis {nope} --out {out}", r"nope"),
        "breakhis: empty folder": ("breakhis {empty_dir} --out {out}", r"no BreakHis images found under .*empty_dir"),
        "breakhis: PNGs not in BreakHis layout": ("breakhis {flat_pngs} --out {out}", r"flat_pngs"),
        "breakhis: a file, not a folder": ("breakhis {a_file.txt} --out {out}", r"a_file\.txt"),
        "breakhis: --out is a slide store": ("breakhis {tree} --out {tiles.zarr}", r"tiles\.zarr"),
        "breakhis: unknown magnification": ("breakhis {tree} --mag 37X --out {out}", r"37X"),
        "breakhis: --workers -1": ("breakhis {tree} --workers -1 --out {out}", r"workers"),
        "tile: nonexistent folder": ("tile {nope} --out {out}", r"nope: no such file or directory"),
        "tile: empty folder": ("tile {empty_dir} --out {out}", r"empty_dir"),
        "tile: --out is an image store": ("tile {slides} --out {img.zarr}", r"img\.zarr"),
        "tile: --tile-size 0": ("tile {slides} --tile-size 0 --out {out}", r"tile.size"),
        "tile: --mag -5": ("tile {slides} --mag -5 --out {out}", r"--mag -5: .* must be > 0"),
        "tile: --mpp 0": ("tile {slides} --mpp 0 --out {out}", r"--mpp 0: .* must be > 0"),
        "tile: --base-mag -1": ("tile {slides} --base-mag -1 --out {out}", r"--base-mag -1: must be > 0"),
        "tile: --tissue-threshold nan": ("tile {slides} --tissue-threshold nan --out {out}", r"not a finite"),
        "tile: --tissue-threshold 2": ("tile {slides} --tissue-threshold 2 --out {out}", r"tissue.threshold"),
        "demo: --patients-per-class 0": ("demo --patients-per-class 0 --out {out}", r"patients"),
        "demo: --images -1": ("demo --images -1 --out {out}", r"images"),
        "info: nonexistent store": ("info {nope.zarr}", r"nope\.zarr: no such store"),
        "info: a folder that is not a store": ("info {tree}", r"tree: not a zarr store"),
    }
    for name, (args, reason) in ingest.items():
        cases[name] = Case("ingest", args, reason)
    # some inputs fail alone: the rest of the run completes and the command exits EXIT_SKIPPED with one line each
    cases["tile: a text file, a half slide"] = Case("ingest", "tile {bad_slides} --out {out}", r"(half|notes)",
                                                    EXIT_SKIPPED)
    cases["breakhis: a decompression bomb and a truncated PNG"] = Case("ingest", "breakhis {bomb_tree} --out {out}",
                                                                       r"(bomb|truncated|skipped|failed)",
                                                                       EXIT_SKIPPED)
    cases["breakhis: the same file name in two folders"] = Case("ingest", "breakhis {dup_tree} --out {out}",
                                                                r"same BreakHis file name as", EXIT_SKIPPED)
    for command, args in (("train", TRAIN + " --out {ro}/run"),
                          ("run", "run --model tiny_cnn_test --checkpoint {cls/best.pt} --batch-sizes 1 "
                                  "--max-time 0.2 --min-time 0 --out {ro}/bench"),
                          ("predict", "predict --checkpoint {cls/best.pt} --data {img.zarr} --out {ro}/p"),
                          ("explain", "explain --checkpoint {cls/best.pt} --data {img.zarr} --out {ro}/e")):
        cases[f"read-only output folder -> {command}"] = Case("bench", args + " --device cpu",
                                                              r"Read-only file system")
    for command, args in (("breakhis", "breakhis {tree} --out {ro}/s.zarr"), ("tile", "tile {slides} --out {ro}/t"),
                          ("demo", "demo --patients-per-class 1 --images 1 --out {ro}/d")):
        cases[f"read-only output folder -> {command}"] = Case("ingest", args, r"Read-only file system")
    cases["full disk -> train"] = Case("bench", TRAIN + " --device cpu --out {full}/run", r"no space left on device")
    cases["full disk -> breakhis"] = Case("ingest", "breakhis {tree} --out {full}/s.zarr",
                                          r"(?i)no space left on device")
    cases["full disk -> tile"] = Case("ingest", "tile {slides} --out {full}/t.zarr", r"(?i)no space left on device")
    return cases


CASES = {**_input_cases(), **_store_cases(), **_option_cases(), **_ingest_cases()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


def _argv(case: Case, world: World, out: Path, special: dict[str, Path]) -> list[str]:
    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key == "out":
            return str(out)
        if key in special:
            return str(special[key])
        if key == "mil":
            return train_mil(world)
        return world[key]

    return [re.sub(r"\{([^{}]+)\}", fill, word) for word in case.args.split()]


def _looks_complete(folders: list[Path]) -> list[str]:
    """What a finished command leaves under ``folders``: a run's ``complete`` marker, a checkpoint, results, or a
    store whose attributes say it is complete."""
    finished = {"complete", "best.pt", "predictions.csv", "report.md", "results.jsonl", "explain.json"}
    found = []
    for folder in (f for f in folders if f.exists()):
        for path in folder.rglob("*"):
            if path.name in finished:
                found.append(str(path))
            elif path.name == "zarr.json" and json.loads(path.read_text()).get("attributes", {}).get("complete"):
                found.append(str(path.parent))
    return sorted(found)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_error(name, world, tmp_path):
    case = CASES[name]
    if "--device cuda" in case.args and "cuda:x" not in case.args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    special: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:
        for key, options in (("ro", "ro,size=1m"), ("full", "size=16k")):
            if _ref(key) in case.args:
                if not stack.enter_context(mounted(tmp_path / key, options)):
                    pytest.skip("mounting a tmpfs needs root (a read-only folder / a full disk)")
                special[key] = tmp_path / key
        out = tmp_path / "out"
        argv = _argv(case, world, out, special)
        result = CliRunner().invoke(bench_app if case.cli == "bench" else ingest_app, argv)
        left = _looks_complete([out, *special.values()])  # before the mounts go
    text = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{' '.join(argv)} raised {result.exception!r}\n{text}")
    assert "Traceback" not in text, text
    assert result.exit_code == case.code, f"{' '.join(argv)}: exit {result.exit_code}\n{text}"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if case.code == EXIT_ERROR:
        assert len(errors) == 1, f"{' '.join(argv)}: want one error line\n{text}"
        assert re.search(case.reason, errors[0]), f"{errors[0]!r} does not match {case.reason!r}"
        assert not left, left
    else:  # some inputs skipped: each reported on one line, the others done
        assert re.search(case.reason, text), text


def test_the_catalogue_covers_at_least_thirty_kinds():
    """Kinds = the distinct bad inputs (a case name up to its arrow), each fed to every command that takes it."""
    kinds = {name.split(" -> ")[0] for name in CASES}
    assert len(kinds) >= 30, sorted(kinds)


REAL_ENTRY_CASES = {  # through the installed console scripts: what main() prints on the way out is checked too
    "histo-bench: a truncated checkpoint": ("histo-bench", "evaluate --checkpoint {truncated.pt} --data {img.zarr}"),
    "histo-ingest: a missing shard": ("histo-ingest", "info {missing_shard.zarr}"),
    "histo-ingest: a bomb and a truncated PNG, the rest ingested": ("histo-ingest", "breakhis {bomb_tree} --out {out}"),
}


@pytest.mark.parametrize("name", list(REAL_ENTRY_CASES))
def test_the_real_entry_points_print_one_line_and_nothing_at_exit(name, world, tmp_path):
    script, args = REAL_ENTRY_CASES[name]
    argv = _argv(Case("bench", args, ""), world, tmp_path / "out", {})
    proc = subprocess.run([str(Path(sys.executable).parent / script), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    text = proc.stdout + proc.stderr
    assert proc.returncode in (EXIT_ERROR, EXIT_SKIPPED), text
    assert "Traceback" not in text and "leaked" not in text and "Exception ignored" not in text, text
    if proc.returncode == EXIT_ERROR:
        assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text
