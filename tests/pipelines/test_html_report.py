"""``report.html``: discovery of a run directory's outputs, self-containment, escaping, the Markdown converter, the
``histo-bench report`` command (and its one-line error on the pre-suites layout), and a render in headless Chromium
(where Debian's chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmark.reports.html import LegacySuiteError, ReportError, build_html, discover, write_html
from benchmark.reports.markdown_html import markdown_to_html
from benchmark.suites import rebuild_report

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = ["benign_a", "malignant_b"]


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    img[: size[1] // 2, : size[0] // 2] = 255 - np.array(colour, np.uint8)
    Image.fromarray(img).save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A folder with one of every output the report gathers, plus a zarr store it must not walk into."""
    root = tmp_path_factory.mktemp("run")
    origin = {"kind": "synthetic", "generator": "test"}
    cells = [{"task": "subtype", "model": "tiny", "train": t, "test": s, "fold": 0, "seed": 0,
              "macro_f1": 0.5 + 0.1 * (t == s), "accuracy": 0.6, "balanced_accuracy": 0.6, "patient_accuracy": 0.5,
              "n_images": 12, "n_patients": 4, "best_epoch": 1, "run_dir": f"suite/tiny/{t}"}
             for t in ("100X", "400X", "mixed") for s in ("100X", "400X", "mixed")]
    suite = root / "suite"
    suite.mkdir()
    (suite / "results.json").write_text(json.dumps({
        "format": "histo-bench/suite", "suite": "magnification-transfer", "store": "data/s.zarr", "origin": origin,
        "store_counts": {"images": 12, "patients": 4}, "tasks": ["subtype"], "classes": {"subtype": CLASSES},
        "study": {"folds": 0, "seeds": 1}, "protocol": "the store's own split", "command": "histo-bench suite",
        "cells": cells}))
    rebuild_report(suite)
    for mag in ("100X", "400X"):
        rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_macro_f1": 0.2 * e, "val_accuracy": 0.25 * e,
                 "epoch_seconds": 2.0, "items_per_s": 10.0} for e in range(3)]
        _jsonl(suite / "tiny" / mag / "metrics.jsonl", rows)
        (suite / "tiny" / mag / "splits.json").write_text(json.dumps({
            "store": "data/s.zarr", "origin": origin,
            **{s: {"indices": list(range(6)), "patients": ["p1", "p2"]} for s in ("train", "val", "test")}}))
    _jsonl(root / "mil" / "metrics.jsonl", [{"epoch": 0, "train_loss": 0.7, "val_macro_f1": 0.3,
                                            "val_accuracy": 0.5}])
    bench = root / "bench"
    (bench).mkdir()
    (bench / "results.md").write_text("# Benchmark\n\n| backend | batch | images/s |\n| --- | ---: | ---: |\n"
                                      "| eager | 8 | 12.5 |\n| compile | 8 | 20.1 |\n\n![throughput](throughput.png)\n")
    _png(bench / "throughput.png", (30, 120, 200))
    _png(bench / "latency.png", (200, 120, 30))
    pred = root / "mil" / "predictions"
    pred.mkdir(parents=True)
    (pred / "predictions.csv").write_text("slide_id,predicted,p_a,p_b\ns0,a<b>&,0.4,0.6\n")
    _png(pred / "attention" / "s0.png", (180, 40, 40), size=(900, 700))
    explain = suite / "tiny" / "100X" / "explain"
    _png(explain / "cam_100X.png", (90, 160, 90))
    (explain / "explain.json").write_text(json.dumps({
        "format": "histo-bench/explain", "kind": "classifier", "model": "tiny", "train_magnification": "100X",
        "checkpoint": "suite/tiny/100X/best.pt", "method": "Grad-CAM on <layer4>",
        "data": {"store": "data/s.zarr", "synthetic": True, "line": "data: SYNTHETIC; 12 images of 4 patients"},
        "accuracy": {"100X": {"accuracy": 0.5, "n_images": 12, "n_patients": 4}},
        "figures": [{"file": "cam_100X.png", "kind": "saliency", "caption": "saliency <of> the predicted class"},
                    {"file": "../../../../mil/predictions/attention/s0.png", "kind": "mil_attention",
                     "caption": "slide s0"}]}))
    _jsonl(root / "store.zarr" / "metrics.jsonl", [{"epoch": 0, "train_loss": 9.9}])  # must not be walked into
    return root


def test_discovers_every_output_but_not_inside_stores(run_dir):
    found = discover(run_dir)
    assert sorted(p.parent.name for p in found.metrics) == ["100X", "400X", "mil"]
    assert found.suites == [run_dir / "suite"]
    assert [p.name for p in found.bench] == ["results.md"]
    assert len(found.explains) == 1 and len(found.predictions) == 1


def test_report_is_self_contained_and_complete(run_dir):
    text = write_html(run_dir).read_text()
    assert (run_dir / "report.html").exists()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)""", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # the curves, the suite's figures, 2 bench PNGs, the cam grid and the MIL heatmap, each once
    expected = 1 + len(list((run_dir / "suite").glob("*.png"))) + 2 + 1 + 1
    assert len(srcs) == expected and len(set(srcs)) == expected
    assert "SYNTHETIC DATA" in text and "histo-bench report:" in text
    positions = [text.index(f"<section id='{a}'>") for a in ("data", "training", "cross-magnification",
                                                             "benchmark", "explanations", "mil")]
    assert positions == sorted(positions)
    assert "a&lt;b&gt;&amp;" in text and "a<b>&" not in text  # CSV text escaped
    assert "Grad-CAM on &lt;layer4&gt;" in text and "saliency &lt;of&gt; the predicted class" in text
    assert "<td class='right'>20.1</td>" in text or '<td class="right">20.1</td>' in text  # Markdown table, aligned
    assert "train x test macro-F1" in text  # the suite's report.md
    assert "attention heatmap(s): see" in text  # the explain figure pointing at the MIL heatmap defers to MIL
    assert "9.9" not in text.split("<section id='training'>")[1].split("</section>")[0]


def test_large_heatmaps_are_embedded_shrunk(run_dir):
    import base64
    import io

    text = build_html(run_dir)
    mil = text.split("<section id='mil'>")[1]
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', mil).group(1)
    assert max(Image.open(io.BytesIO(base64.b64decode(uri))).size) <= 560


def test_nothing_to_report_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="nothing to report"):
        write_html(tmp_path)
    with pytest.raises(ReportError, match="no such directory"):
        write_html(tmp_path / "missing")


def test_report_command(run_dir, tmp_path):
    from benchmark.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(run_dir / "suite")])
    assert res.exit_code == 0, res.output
    assert f"report: {run_dir / 'suite' / 'report.md'}" in res.output
    assert "html report:" in res.output and (run_dir / "suite" / "report.html").exists()
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "nothing to report" in res.output


def _legacy_suite(path: Path) -> Path:
    """A suite folder as written before ``benchmark.suites``: results.json without ``format``, no report.md."""
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"config": {"train": {}}, "store": "data/s.zarr", "classes": CLASSES,
                                                   "cells": [{"model": "tiny", "train": "100X", "test": "100X"}]}))
    return path


def test_pre_suites_layout_is_a_one_line_error(tmp_path):
    from benchmark.cli.app import app

    legacy = _legacy_suite(tmp_path / "old" / "suite")
    res = CliRunner().invoke(app, ["report", str(legacy)])
    assert res.exit_code == 1 and not isinstance(res.exception, ReportError), res.output  # handled: one line
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "no longer renders" in res.output and "Traceback" not in res.output
    assert not (legacy / "report.md").exists()
    with pytest.raises(LegacySuiteError, match="no longer renders"):  # also when found under a parent folder
        write_html(tmp_path / "old")
    assert issubclass(LegacySuiteError, ReportError)


def test_markdown_to_html():
    md = ("# Title\n\nSome **bold** and `co<de>` with a_b_c and *em*.\n\n| a | b |\n| --- | ---: |\n"
          "| x\\|y | 1 |\n\n- one\n- two\n\n```\n<raw>\n```\n\n[site](https://example.org) and [local](x.md)\n\n"
          "![fig](f.png)\n")
    out = markdown_to_html(md, image=lambda src, alt: f"<img alt='{alt}' src='data:{src}'>", heading_offset=1)
    assert "<h2>Title</h2>" in out
    assert "<strong>bold</strong>" in out and "<code>co&lt;de&gt;</code>" in out and "a_b_c" in out
    assert "<em>em</em>" in out
    assert "<th>a</th><th class=\"right\">b</th>" in out and "<td>x|y</td>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out and "<pre><code>&lt;raw&gt;</code></pre>" in out
    assert "href" not in out and "site (<code>https://example.org</code>)" in out and "local" in out
    assert "<img alt='fig' src='data:f.png'>" in out
    assert "[image: fig]" in markdown_to_html("![fig](f.png)")  # no resolver: the alt text shows


def _chromium(page: Path, shot: Path, profile: Path) -> tuple[str, str]:
    """Render ``page`` headless: (DOM, stderr with the console log)."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom",
           "--window-size=1280,2000", "--enable-logging=stderr", "--v=0", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                  "(apt-get install chromium where available)")
def test_chromium_renders_the_report_without_errors(run_dir, tmp_path):
    # the check itself: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    _, log = _chromium(bad, tmp_path / "bad.png", tmp_path / "profile-bad")
    assert "boom" in log and ":CONSOLE" in log

    page = write_html(run_dir, tmp_path / "report.html")
    dom, log = _chromium(page, tmp_path / "shot.png", tmp_path / "profile")
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert "SYNTHETIC DATA" in dom and dom.count("<section") == 6
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(np.int16)
    assert shot.shape[:2] == (2000, 1280)
    assert (shot.min(-1) < 200).mean() > 0.02 and shot.std() > 20  # text, banner and figures, not a blank page
    banner = (shot[..., 0] > 180) & (shot[..., 1] < 80) & (shot[..., 2] < 80)  # the red SYNTHETIC banner
    assert banner[:400].sum() > 5000
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
