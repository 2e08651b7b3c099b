"""What the CLIs print reads well piped or not: identifiers are never cut, and Markdown summaries print as tables."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from histo_bench.console import PIPE_WIDTH, markdown_to_table, print_markdown, rich_table, stdout

ROOT = Path(__file__).resolve().parents[2]

REPORT = """# Study

**Data:** synthetic, store `data/demo/a_very_long_store_name_that_is_an_identifier.zarr`.

| model \\ test | 100X | 400X |
| --- | ---: | ---: |
| mpcs_efficientnet_b0 | 0.127 ± n/a (n=1; 8 p / 48 i) | 0.193 ± n/a (n=1; 8 p / 48 i) |
| fusion_effnet_b0 | 0.350 ± 0.010 (n=3; 8 p / 48 i) | 0.393 ± 0.020 (n=3; 8 p / 48 i) |

- a list item with [brackets] that are not markup
"""


def _first_cells(text: str) -> list[str]:
    """The first cell of every body row of the box-drawn tables in ``text``."""
    return [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]


def test_models_piped_lists_every_name_whole():
    """`histo-bench models | grep NAME` finds every registered model, whole, on its own row (rich shortened tables to
    80 columns when stdout was not a terminal: ``fusion_effnet_…``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "benchmark.cli", "models"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _first_cells(res.stdout)
    # the names a fresh process registers (tests in this process may have registered tiny test models)
    names = subprocess.run([sys.executable, "-c", "from models.registry import MODELS; print(*MODELS.names())"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert len(names) >= 10, names
    for name in names:
        assert rows.count(name) == 1, f"{name!r} is not whole on one row: {rows}"
    assert "…" not in res.stdout


def test_stdout_is_wide_when_not_a_terminal():
    assert not stdout.is_terminal  # pytest captures it
    assert stdout.width == PIPE_WIDTH


def test_identifier_columns_stay_whole_in_a_narrow_terminal():
    out = io.StringIO()
    names = ["mpcs_efficientnet_b0", "fusion_effnet_b0"]
    Console(file=out, width=60).print(rich_table(("model", "description"),
                                                 [(n, "a long description " * 8) for n in names]))
    assert [c for c in _first_cells(out.getvalue()) if c] == names
    assert "…" not in out.getvalue()


def test_title_with_a_path_stays_on_one_line():
    out = io.StringIO()
    title = "A = runs/a/very/long/path/to/some/results/folder/that/goes/on"
    Console(file=out, width=PIPE_WIDTH).print(rich_table(("model", "n"), [("resnet18", "1")], title=title))
    assert title in out.getvalue()


def test_markdown_table_keeps_alignment_and_identifiers():
    lines = REPORT.splitlines()[4:8]
    table = markdown_to_table(lines)
    assert [c.header for c in table.columns] == ["model \\ test", "100X", "400X"]
    assert [c.justify for c in table.columns] == ["left", "right", "right"]
    assert table.columns[0].no_wrap and not table.columns[1].no_wrap
    assert table.row_count == 2


def test_print_markdown_renders_tables_and_keeps_text():
    out = io.StringIO()
    print_markdown(REPORT, Console(file=out, width=70))
    text = out.getvalue()
    assert "| --- |" not in text and "┃ model \\ test" in text
    assert [c for c in _first_cells(text) if c] == ["mpcs_efficientnet_b0", "fusion_effnet_b0"]
    assert "Data: synthetic" in text and "**" not in text and "`" not in text
    assert "[brackets]" in text  # not taken for rich markup
    assert "a_very_long_store_name_that_is_an_identifier.zarr" in text.replace("\n", "")


def test_print_markdown_piped_does_not_wrap_paragraphs():
    out = io.StringIO()
    paragraph = "word " * 60
    print_markdown(paragraph, Console(file=out, width=PIPE_WIDTH))
    assert out.getvalue().strip() == paragraph.strip()


def test_verbose_shows_the_projects_debug_lines_and_vv_every_librarys(capsys):
    import logging

    from histo_bench.console import setup_logging

    try:
        for verbose, shown in ((0, []), (1, ["pipelines.data.loaders"]), (2, ["pipelines.data.loaders", "zarr.core"])):
            setup_logging(verbose)
            for name in ("pipelines.data.loaders", "zarr.core"):
                logging.getLogger(name).debug("debug from %s", name)
            logging.getLogger("zarr.core").warning("a warning")
            err = capsys.readouterr().err
            assert [n for n in ("pipelines.data.loaders", "zarr.core") if f"debug from {n}" in err] == shown
            assert "WARNING a warning" in err
        setup_logging(quiet=True)
        logging.getLogger("pipelines.training.engine").info("epoch 0")
        assert "epoch 0" not in capsys.readouterr().err
    finally:
        setup_logging()
