"""``histo-bench ingest-bench``: ``histo-ingest breakhis`` against a Pillow-only decode of the same files with the
same number of processes, alternating, in one run (registered by ``benchmark.cli.app``; see
:mod:`benchmark.ingest_speed`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from histo_bench.command_options import config_from, fail, field_help
from histo_bench.console import console, stdout

_BENCH = "benchmark.ingest_speed:IngestBenchConfig"
FIELDS = {"root": "root", "workdir": "workdir", "workers": "workers", "repeats": "repeats"}


def ingest_bench_command(
    root: Annotated[Path, typer.Argument(help=field_help(_BENCH, "root"))],
    replicate: Annotated[int, typer.Option(help="First copy every image this many times into WORKDIR/tree under "
                                                "new patient ids (e.g. 36 makes 432 images of the 12-image "
                                                "sample); 0 measures ROOT as it is.")] = 0,
    workdir: Annotated[Path, typer.Option(help=field_help(_BENCH, "workdir"))] = Path("data/ingest-bench"),
    workers: Annotated[int, typer.Option(help=field_help(_BENCH, "workers"))] = 2,
    repeats: Annotated[int, typer.Option(help=field_help(_BENCH, "repeats"))] = 3,
    out: Annotated[Optional[Path], typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Measure BreakHis ingest wall time as a ratio of pure decoding (goal <= 1.2x)."""
    given = dict(locals())
    import shutil

    from benchmark.ingest_speed import IngestBenchConfig, measure, record, replicate_breakhis

    if not root.is_dir():
        fail(f"{root}: no such folder")
    if replicate > 0:
        tree = workdir / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        n = replicate_breakhis(root, tree, replicate)
        console.print(f"replicated into {tree}: {n} images")
        given["root"] = tree
    config = config_from(IngestBenchConfig, FIELDS, given)
    result = measure(config, progress=console.print)
    rec = record(result, root, replicate)
    data = f"{rec['data']['kind']} data from {root}" + (f", each image copied {replicate}x" if replicate else "")
    decodes = ", ".join(f"decode ({m}) min {min(r['wall']):.2f} s (max {max(r['wall']):.2f})"
                        for m, r in result.decode.items())
    stdout.print(f"{result.images} images ({data}), {result.workers} processes, {rec['cores']} cores, load "
                 f"{result.load_before} -> {result.load_after}: {decodes}, ingest min {min(result.ingest_wall):.2f} s "
                 f"(max {max(result.ingest_wall):.2f}); ingest/decode wall {result.ratio:.2f}x against the fastest "
                 f"baseline ({result.baseline}), CPU {result.cpu_ratio:.2f}x", highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=2))
