"""The two shared pieces of report text: :func:`histo_bench.markdown.markdown_table` and
:func:`histo_bench.provenance.data_sentence`."""

from __future__ import annotations

import pytest

from histo_bench.markdown import markdown_table
from histo_bench.provenance import SYNTHETIC_NOTE, data_sentence, is_synthetic


def test_markdown_table_layout_and_alignment():
    assert markdown_table(["a", "b", "c"], [[1, "x", 2.5], ["y", None, "z"]], "lrc") == (
        "| a | b | c |\n| --- | ---: | :---: |\n| 1 | x | 2.5 |\n| y | None | z |")
    assert markdown_table(["a"], []) == "| a |\n| --- |"
    assert markdown_table(["k", "v"], [["p", 1]], ["left", "right"]).splitlines()[1] == "| --- | ---: |"


def test_markdown_table_keeps_every_row_on_one_line_and_checks_widths():
    from benchmark.reports.markdown_html import markdown_to_html

    table = markdown_table(["name", "n"], [["a|b\nc", 1]], "lr")
    assert table.splitlines()[2] == "| a\\|b c | 1 |"
    assert "<td>a|b c</td>" in markdown_to_html(table)
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a"], [], "x")


def test_data_sentence_synthetic_user_and_unrecorded():
    synthetic = {"kind": "synthetic", "generator": "histo-bench ingest.synthetic.breakhis_tree"}
    assert is_synthetic(synthetic) and not is_synthetic({"kind": "user-provided"}) and not is_synthetic(None)
    assert data_sentence(synthetic) == f"data: SYNTHETIC ({SYNTHETIC_NOTE})"
    assert data_sentence(synthetic, store="s.zarr", images=12, patients=4, markdown=True) == (
        f"**Data: SYNTHETIC** ({SYNTHETIC_NOTE}); store `s.zarr`, 12 images of 4 patients.")
    user = {"kind": "user-provided", "root": "/data/BreaKHis_v1"}
    assert data_sentence(user) == "data: user-provided, ingested from /data/BreaKHis_v1"
    assert data_sentence(user, store="b.zarr", images=7909, patients=82) == (
        "data: user-provided, ingested from /data/BreaKHis_v1; store b.zarr, 7909 images of 82 patients")
    assert data_sentence({}, store="x.zarr") == "data: origin not recorded; store x.zarr"
    assert data_sentence(None, markdown=True) == "**Data:** origin not recorded."


def test_data_sentence_on_slide_stores():
    slides = {"kind": "user", "root": "slides", "tissue": "automatic detection on 3 slide(s), user masks on 0",
              "synthetic_slides": ["s1"], "unknown_slides": ["s2", "s3"]}
    assert data_sentence(slides, store="slides", slides=3, patients=2, markdown=True) == (
        "**Data:** user-provided; store `slides`, 3 slides of 2 patients; tissue: automatic detection on 3 slide(s), "
        "user masks on 0; SYNTHETIC slides among them: s1; source not checkable (moved or not TIFF): 2 slide(s).")
