"""``histo-ingest`` end to end through its typer app: every command (demo, breakhis, tile, info), the tables it prints
checked cell by cell against the store it wrote, the exit codes (0, 1 one-line error, 3 skipped inputs)."""

import json
import re
import subprocess
import sys
from collections import Counter

from typer.testing import CliRunner

from histo_bench.errors import EXIT_ERROR, EXIT_SKIPPED
from ingest.breakhis_names import CLASSES, relative_path
from ingest.cli import app
from tests.ingest.bad_files import write_truncated_png

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def _rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in ``text``, as stripped cells."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.lstrip().startswith("│")]


def _one_error(res, exit_code: int = EXIT_ERROR) -> str:
    assert res.exit_code == exit_code, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_breakhis_command_prints_the_summary_table(tiny_tree, tmp_path):
    from ingest.splits import SPLIT_CODES
    from ingest.store import ImageStore

    out = tmp_path / "s.zarr"
    res = runner.invoke(app, ["breakhis", str(tiny_tree), "--out", str(out), "--workers", "1"], env=WIDE)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert "96 images, 24 patients, 70x46 px" in lines
    assert f"data: user-provided, ingested from {tiny_tree}" in lines
    assert [line.strip() for line in lines if re.fullmatch(r"\w+: \d+ patients", line.strip())] == [
        "train: 8 patients", "val: 8 patients", "test: 8 patients"]
    # one table per split: 8 classes x (40X, 100X, 200X, 400X, all), 1 patient per class and split, then the total
    per_split = [[name, "2", "2", "0", "0", "4"] for name in CLASSES] + [["total", "16", "16", "0", "0", "32"]]
    assert _rows(res.stdout) == per_split * 3

    res = runner.invoke(app, ["info", str(out)], env=WIDE)
    assert res.exit_code == 0 and _rows(res.stdout) == per_split * 3
    res = runner.invoke(app, ["info", str(out), "--patients"], env=WIDE)
    assert res.exit_code == 0
    patients = _rows(res.stdout)[len(per_split) * 3:]
    store = ImageStore(out)
    name_of = {code: name for name, code in SPLIT_CODES.items()}
    split_of = {p: name_of[int(c)] for p, c in zip(store.patient.tolist(), store.split, strict=True)}
    assert [row[0] for row in patients] == sorted(split_of) and len(patients) == 24
    assert all(row[2] == split_of[row[0]] and row[3:] == ["2", "2", "0", "0", "4"] for row in patients)
    assert Counter(row[2] for row in patients) == {"train": 8, "val": 8, "test": 8}
    assert {row[1] for row in patients} == set(CLASSES)


def test_skipped_files_exit_3_and_are_listed(tiny_tree, tmp_path):
    bad = tiny_tree / relative_path("adenosis", "14-1000", "40X", 99)
    write_truncated_png(bad)
    res = runner.invoke(app, ["breakhis", str(tiny_tree), "--out", str(tmp_path / "s.zarr"), "--workers", "1"],
                        env=WIDE)
    assert res.exit_code == EXIT_SKIPPED
    assert "1 file(s) skipped:" in res.output
    assert "SOB_B_A-14-1000-40-099.png: corrupt or truncated image" in res.output
    assert "96 images, 24 patients" in res.stdout  # the good files were all written


def test_errors_are_one_line_with_exit_1(tmp_path):
    line = _one_error(runner.invoke(app, ["breakhis", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.zarr")]))
    assert line.endswith("nowhere: no such directory")
    line = _one_error(runner.invoke(app, ["breakhis", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--size",
                                          "big"]))
    assert line == "error: --size 'big': expected WIDTHxHEIGHT, e.g. 700x460 or 224x224"
    line = _one_error(runner.invoke(app, ["breakhis", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--split",
                                          "1,2"]))
    assert line.startswith("error: --split '1,2': ")
    line = _one_error(runner.invoke(app, ["breakhis", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--mag",
                                          "30X"]))  # the config's own check: a ConfigError
    assert line.startswith("error: unknown magnification '30X'")
    line = _one_error(runner.invoke(app, ["info", str(tmp_path)]))
    assert line == f"error: {tmp_path}: not a zarr store"


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from typer.testing import CliRunner; import ingest.cli, benchmark.cli.app; "
            "r = CliRunner(); assert r.invoke(ingest.cli.app, ['--help']).exit_code == 0; "
            "assert r.invoke(benchmark.cli.app.app, ['--help']).exit_code == 0; "
            "assert r.invoke(benchmark.cli.app.app, ['run', '--help']).exit_code == 0; "
            "heavy = [m for m in ('torch', 'zarr', 'nvidia.dali', 'cucim', 'cupy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tile_command_and_info(tmp_path):
    from ingest.slide_store import SlideStore
    from ingest.synthetic.slide import write_corrupt_copies, write_synthetic_slide

    d = tmp_path / "slides"
    d.mkdir()
    good = write_synthetic_slide(d / "a.tiff", width=2048, height=1536, seed=2)
    out = tmp_path / "t.zarr"
    res = runner.invoke(app, ["tile", str(d), "--out", str(out), "--mag", "10", "--mag", "2.5", "--workers", "1"],
                        env=WIDE)
    assert res.exit_code == 0, res.output
    store = SlideStore(out)
    tiles = [len(store.coords("a", scale)) for scale in ("10x", "2.5x")]
    assert tiles[0] > 0
    (row,) = _rows(res.stdout)  # slide, status, reader, mpp, mag, 10x, 2.5x, seconds
    assert row[:2] == ["a", "done"] and row[3:7] == ["0.25", "40", str(tiles[0]), str(tiles[1])]
    assert "done 1, no tissue 0, already complete 0, failed 0" in res.stdout
    assert (tmp_path / "t.zarr.overlays" / "a.png").exists()
    res = runner.invoke(app, ["info", str(out)], env=WIDE)
    assert res.exit_code == 0 and f"{out}: 1 slide(s)" in res.stdout
    (row,) = _rows(res.stdout)  # slide, reader, mpp, mag, size, 10x, 2.5x, tissue %, seconds
    assert row[0] == "a" and row[2:7] == ["0.25", "40", "2048x1536", str(tiles[0]), str(tiles[1])]
    write_corrupt_copies(good, d)
    res = runner.invoke(app, ["tile", str(d), "--out", str(out), "--mag", "10", "--workers", "1"], env=WIDE)
    assert res.exit_code == EXIT_SKIPPED  # the good slide was already complete; three broken ones failed
    assert "done 0, no tissue 0, already complete 1, failed 3" in res.stdout
    assert Counter(r[1] for r in _rows(res.stdout)) == {"skipped": 1, "failed": 3}  # skipped: already complete


def test_tile_command_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_error(runner.invoke(app, ["tile", str(tmp_path / "empty"), "--out", str(tmp_path / "t.zarr")]))
    assert line.startswith(f"error: {tmp_path / 'empty'}: no slide files found (looked for ")
    line = _one_error(runner.invoke(app, ["tile", str(tmp_path / "nope"), "--out", str(tmp_path / "t.zarr")]))
    assert line == f"error: {tmp_path / 'nope'}: no such file or directory"
    line = _one_error(runner.invoke(app, ["tile", str(tmp_path), "--out", str(tmp_path / "t.zarr"), "--reader",
                                          "magic"]))
    assert line.startswith("error: --reader 'magic': use auto or one of ")
    line = _one_error(runner.invoke(app, ["tile", str(tmp_path), "--out", str(tmp_path / "t.zarr"), "--tile-size",
                                          "8"]))
    assert line == "error: tile_size must be >= 16"


def test_demo_command_writes_the_tree_it_was_asked_for(tmp_path):
    out = tmp_path / "tree"
    args = ["demo", "--out", str(out), "--patients-per-class", "1", "--images", "1", "--workers", "1", "--seed", "3"]
    res = runner.invoke(app, args, env=WIDE)
    assert res.exit_code == 0, res.output
    images = sorted(out.rglob("*.png"))
    assert len(images) == len(CLASSES) * 4  # one patient per class, one image per magnification
    assert {p.parent.name for p in images} == {"40X", "100X", "200X", "400X"}
    marker = json.loads((out / "SYNTHETIC_DATA.json").read_text())
    assert (marker["images"], marker["config"]["patients_per_class"], marker["config"]["seed"]) == (32, 1, 3)
    again = runner.invoke(app, [*args[:-1], "4"])  # another seed into the same folder: refused, nothing rewritten
    assert "generated with other settings" in _one_error(again)
    assert "seed" in _one_error(again)
    assert _one_error(runner.invoke(app, ["demo", "--out", str(tmp_path / "x"), "--patients-per-class", "0"])) == (
        "error: patients_per_class must be in 1..999, got 0")


def test_the_forkserver_is_started_before_the_cli_only_for_a_breakhis_ingest_with_workers():
    from ingest.__main__ import uses_workers

    assert uses_workers(["breakhis", "tree", "--out", "s.zarr"])
    assert uses_workers(["-q", "-v", "breakhis", "tree", "--workers", "2"])
    assert uses_workers(["breakhis", "--workers=0"])
    assert not uses_workers(["breakhis", "tree", "--workers", "1"])
    assert not uses_workers(["-q", "breakhis", "--workers=1"])
    assert not uses_workers(["breakhis", "--help"])
    assert not uses_workers(["tile", "slides/"])
    assert not uses_workers(["info", "breakhis"])
    assert not uses_workers([])
    assert uses_workers(["-qv", "-vvvv", "breakhis", "tree"])
    assert uses_workers(["breakhis", "--workers", "1", "--workers", "4"])  # the last one counts, as for the CLI
    assert not uses_workers(["breakhis", "--workers", "4", "--workers=1"])


def test_quick_exit_runs_the_exit_handlers_keeps_the_code_and_waits_for_threads(tmp_path):
    import subprocess
    import sys

    def run(body: str) -> subprocess.CompletedProcess:
        script = ("import atexit, sys, threading, time\nfrom ingest.__main__ import quick_exit\n"
                  f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'a').write('x'))\n{body}")
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)

    done = run("print('output', end='')\nquick_exit(3)")
    assert done.returncode == 3 and done.stdout == "output" and (tmp_path / "ran").read_text() == "x"
    # a thread still at work: no quick exit (the interpreter waits for it), nor for a message as exit code
    busy = run("t = threading.Thread(target=time.sleep, args=(0.3,)); t.start()\nquick_exit(0)\nprint('normal')")
    assert busy.returncode == 0 and busy.stdout.strip() == "normal"
    message = run("quick_exit('failed')\nprint('normal')")
    assert message.stdout.strip() == "normal"
