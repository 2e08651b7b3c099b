"""``histo-bench``: models, training and benchmarks. Thin typer commands over the library.

``--help`` imports nothing heavy: torch and friends are imported inside the commands that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ingest.console import setup_logging, stdout
from pipelines.cli import (
    evaluate_command,
    fusion_slides_command,
    loader_bench_command,
    mil_infer_command,
    mil_train_command,
    models_command,
    pretrain_command,
    report_command,
    suite_command,
    train_command,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train, compile and benchmark histopathology classifiers on histo-bench stores.")


@app.callback()
def _main(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False) -> None:
    setup_logging(verbose, quiet)


app.command("models")(models_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("pretrain")(pretrain_command)
app.command("mil-train")(mil_train_command)
app.command("mil-infer")(mil_infer_command)
app.command("fusion-slides")(fusion_slides_command)
app.command("loader-bench")(loader_bench_command)
app.command("suite")(suite_command)
app.command("report")(report_command)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
