import subprocess
import sys

from typer.testing import CliRunner

from histo_bench.errors import EXIT_ERROR, EXIT_SKIPPED
from ingest.breakhis_names import relative_path
from ingest.cli import app
from tests.ingest.bad_files import write_truncated_png

runner = CliRunner()


def test_breakhis_command_prints_the_summary_table(tiny_tree, tmp_path):
    out = tmp_path / "s.zarr"
    res = runner.invoke(app, ["breakhis", str(tiny_tree), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "96 images, 24 patients, 70x46 px" in res.stdout
    assert "adenosis" in res.stdout and "train:" in res.stdout and "test:" in res.stdout
    assert "user-provided" in res.stdout
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "96 images" in res.stdout
    res = runner.invoke(app, ["info", str(out), "--patients"])
    assert res.exit_code == 0 and "24 patients" in res.stdout and "14-1000" in res.stdout


def test_skipped_files_exit_3_and_are_listed(tiny_tree, tmp_path):
    bad = tiny_tree / relative_path("adenosis", "14-1000", "40X", 99)
    write_truncated_png(bad)
    res = runner.invoke(app, ["breakhis", str(tiny_tree), "--out", str(tmp_path / "s.zarr"), "--workers", "1"])
    assert res.exit_code == EXIT_SKIPPED
    assert "SOB_B_A-14-1000-40-099.png: corrupt or truncated image" in res.output


def test_errors_are_one_line_with_exit_1(tmp_path):
    res = runner.invoke(app, ["breakhis", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == EXIT_ERROR and "no such directory" in res.output
    res = runner.invoke(app, ["breakhis", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--size", "big"])
    assert res.exit_code == EXIT_ERROR and "expected WIDTHxHEIGHT" in res.output
    res = runner.invoke(app, ["breakhis", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--split", "1,2"])
    assert res.exit_code == EXIT_ERROR and "split" in res.output
    res = runner.invoke(app, ["info", str(tmp_path)])
    assert res.exit_code == EXIT_ERROR and "not a zarr store" in res.output


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from typer.testing import CliRunner; import ingest.cli, benchmark.cli.app; "
            "r = CliRunner(); assert r.invoke(ingest.cli.app, ['--help']).exit_code == 0; "
            "assert r.invoke(benchmark.cli.app.app, ['--help']).exit_code == 0; "
            "heavy = [m for m in ('torch', 'zarr', 'nvidia.dali', 'cucim', 'cupy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tile_command_and_info(tmp_path):
    from ingest.synthetic.slide import write_corrupt_copies, write_synthetic_slide

    d = tmp_path / "slides"
    d.mkdir()
    good = write_synthetic_slide(d / "a.tiff", width=2048, height=1536, seed=2)
    out = tmp_path / "t.zarr"
    res = runner.invoke(app, ["tile", str(d), "--out", str(out), "--mag", "10", "--mag", "2.5", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "a" in res.stdout and "10x" in res.stdout and "2.5x" in res.stdout and "failed 0" in res.stdout
    assert (tmp_path / "t.zarr.overlays" / "a.png").exists()
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "1 slide(s)" in res.stdout and "0.25" in res.stdout
    write_corrupt_copies(good, d)
    res = runner.invoke(app, ["tile", str(d), "--out", str(out), "--mag", "10", "--workers", "1"])
    assert res.exit_code == EXIT_SKIPPED  # the good slide was already complete; three broken ones failed
    assert "already complete 1" in res.stdout and "failed 3" in res.stdout


def test_tile_command_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["tile", str(tmp_path / "empty"), "--out", str(tmp_path / "t.zarr")])
    assert res.exit_code == EXIT_ERROR and "no slide files found" in res.output
    res = runner.invoke(app, ["tile", str(tmp_path / "nope"), "--out", str(tmp_path / "t.zarr")])
    assert res.exit_code == EXIT_ERROR and "no such file or directory" in res.output
    res = runner.invoke(app, ["tile", str(tmp_path), "--out", str(tmp_path / "t.zarr"), "--reader", "magic"])
    assert res.exit_code == EXIT_ERROR and "use auto or one of" in res.output
