"""``histo-bench``: models, training and benchmarks. Thin typer commands over the library.

``--help`` imports nothing heavy: torch and friends are imported inside the commands that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmark.cli.studies import explain_command, report_command, suite_command
from benchmark.cli.train import (
    evaluate_command,
    fail,
    loader_bench_command,
    models_command,
    predict_command,
    train_command,
)
from histo_bench.command_group import HandledGroup
from histo_bench.console import console, setup_logging, stdout

app = typer.Typer(cls=HandledGroup, add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train, compile and benchmark histopathology classifiers on histo-bench stores.")


@app.callback()
def _main(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False) -> None:
    setup_logging(verbose, quiet)


app.command("models")(models_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("loader-bench")(loader_bench_command)
app.command("suite")(suite_command)
app.command("report")(report_command)
app.command("explain")(explain_command)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Show the machine: Python, GPUs, and which optional libraries (torch, DALI, cuCIM, TensorRT...) are here."""
    from rich.table import Table

    from benchmark.environment import OPTIONAL_PACKAGES, describe

    info = describe()
    if as_json:
        stdout.print_json(json.dumps(info))
        return
    stdout.print(f"Python {info['python']} on {info['platform']}; "
                 f"GPU: {', '.join(info['gpus']) or 'none found (nvidia-smi)'}", highlight=False)
    table = Table("package", "version", "used for")
    for name, version in {**info["core"], **info["optional"]}.items():
        table.add_row(name, version or "[dim]not installed[/]", OPTIONAL_PACKAGES.get(name, "core"))
    stdout.print(table)


@app.command("tile-bench")
def tile_bench(
    size: Annotated[int, typer.Option(help="Side of the synthetic slide (pixels).")] = 20000,
    mag: Annotated[float, typer.Option("--mag", help="Target magnification (the slide is 40x).")] = 40,
    tile_size: Annotated[int, typer.Option(help="Tile side in pixels.")] = 224,
    read_workers: Annotated[int, typer.Option(help="Reader threads per batch.")] = 2,
    workdir: Annotated[Path, typer.Option(help="Where the slide and scratch stores go.")] = Path("data/tile-bench"),
    out: Annotated[Path, typer.Option(help="Where the JSON + Markdown results go.")] = Path("bench_results/tiling"),
) -> None:
    """Tiles/s of `histo-ingest tile` per reader vs a naive OpenSlide read_region + PNG loop, same slide, same run."""
    from benchmark.tiling import run_tiling_benchmark, save, to_markdown

    result = run_tiling_benchmark(workdir, size=size, magnification=mag, tile_size=tile_size,
                                  read_workers=read_workers)
    path = save(result, out)
    stdout.print(to_markdown(result), markup=False)
    stdout.print(f"saved to {path}")


def _csv(value: str | None, cast=str) -> tuple:
    return tuple(cast(v.strip()) for v in value.split(",") if v.strip()) if value else ()


@app.command("run")
def run(
    model: Annotated[str, typer.Option(help="Registered classifier (`histo-bench models`).")] = "swin_tiny",
    checkpoint: Annotated[Optional[Path], typer.Option(help="best.pt from `histo-bench train` (default: train "
                                                            "one first, demo-sized on CPU).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image store for the accuracy columns (default: the "
                                                      "checkpoint's store / the embedded demo store).")] = None,
    backends: Annotated[Optional[str], typer.Option(help="Comma list (default: all; unavailable ones are "
                                                         "reported as skipped with the reason).")] = None,
    precisions: Annotated[Optional[str], typer.Option(help="Comma list of fp32,bf16,fp16 (default: each "
                                                           "backend's defaults for the device).")] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(help="Comma list (default 1,8,32,128,256 on CUDA, "
                                                            "1,8,32 on CPU).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Input side (default: the checkpoint's).")] = None,
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help="Test magnification(s) for accuracy "
                                                                   "(default: all in the store).")] = None,
    max_eval_images: Annotated[Optional[int], typer.Option(help="Cap on test images per magnification.")] = None,
    task: Annotated[str, typer.Option(help="subtype or binary, for a checkpoint trained first (a given "
                                           "checkpoint brings its own).")] = "subtype",
    train_epochs: Annotated[int, typer.Option(help="Epochs when a checkpoint is trained first.")] = 2,
    min_time: Annotated[Optional[float], typer.Option(help="Seconds to time each point at least.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Seconds to time each point at most.")] = None,
    out: Annotated[Path, typer.Option(help="Results root (<out>/<model>/<environment>/).")] = Path("bench_results"),
) -> None:
    """Compile a checkpoint with every backend, sweep batch sizes; latency p50/p90/p99, throughput, peak VRAM and
    macro-F1 per magnification through each backend -> JSONL, CSV, Markdown and plots."""
    from benchmark.run import BenchConfig, BenchError, run_benchmark
    from pipelines.training.classifier import TrainingError

    try:
        config = BenchConfig(model=model, checkpoint=str(checkpoint) if checkpoint else None,
                             data=str(data) if data else None, backends=_csv(backends), precisions=_csv(precisions),
                             batch_sizes=_csv(batch_sizes, int), device=device, image_size=image_size,
                             magnifications=tuple(mag or ()), max_eval_images=max_eval_images,
                             task=task, train_epochs=train_epochs, min_time_s=min_time,
                             max_time_s=max(max_time, min_time or 0) if max_time else None, out=str(out))
    except (ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))

    def progress(backend: str, precision: str, point) -> None:
        if point is None:
            console.print(f"[dim]{backend} {precision}: skipped[/]", highlight=False)
        elif point.status == "ok":
            t = point.timing
            console.print(f"{backend} {precision} batch {point.batch_size}: p50 {t['latency_p50_ms']:.2f} ms, "
                          f"{t['throughput_ips']:.1f} img/s", highlight=False)
        else:
            console.print(f"[yellow]{backend} {precision} batch {point.batch_size}: {point.status}: "
                          f"{point.reason}[/]", highlight=False)

    try:
        out_dir, _ = run_benchmark(config, progress)
    except (BenchError, TrainingError) as exc:
        fail(str(exc))
    stdout.print((out_dir / "results.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    stdout.print(f"results: {out_dir}")


@app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline results (a results folder or its results.jsonl).")],
    b: Annotated[Path, typer.Argument(help="Results to compare with A.")],
) -> None:
    """Two result sets side by side: throughput and p50 latency of each point measured in both, B/A ratios, F1
    changes."""
    from rich.table import Table

    from benchmark.results import compare_rows, load_rows

    try:
        rows = compare_rows(load_rows(a), load_rows(b))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if not rows:
        fail(f"{a} and {b} share no measured (model, backend, precision, batch size)")
    table = Table(title=f"A = {a}\nB = {b}", title_justify="left")
    for col in ("model", "backend", "precision", "batch", "img/s A", "img/s B", "B/A", "p50 ms A", "p50 ms B",
                "B/A ", "macro-F1 B-A"):
        table.add_column(col, justify="left" if col in ("model", "backend", "precision") else "right")
    for r in rows:
        f1 = ", ".join(f"{m} {d:+.3f}" for m, d in r["f1_delta"].items()) or "-"
        table.add_row(r["model"], r["backend"], r["precision"], str(r["batch_size"]), f"{r['throughput_a']:.1f}",
                      f"{r['throughput_b']:.1f}", f"{r['throughput_ratio']:.2f}x", f"{r['p50_a']:.2f}",
                      f"{r['p50_b']:.2f}", f"{r['latency_ratio']:.2f}x", f1)
    stdout.print(table)


def main() -> None:
    from ingest.workers import stop_helpers

    try:
        app()
    finally:
        stop_helpers()  # no forkserver or resource tracker outlives the command


if __name__ == "__main__":
    main()
