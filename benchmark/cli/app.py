"""``histo-bench``: the app, and the commands that measure: ``run``, ``compare``, ``loader-bench``, ``tile-bench``,
``env``. Models, training and inference are in :mod:`benchmark.cli.train`; studies and reports in
:mod:`benchmark.cli.studies`. Thin typer commands over the library, in one grammar
(``tests/benchmark/test_cli_grammar.py``): ``--data`` names a store read, ``--out`` what is written, ``--checkpoint``
a ``best.pt``, ``--mag`` a magnification, and ``--device`` defaults to auto.

``--help`` imports nothing heavy: torch and friends are imported inside the commands that need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmark.cli.ingest_bench import ingest_bench_command
from benchmark.cli.studies import explain_command, report_command, suite_command
from benchmark.cli.train import evaluate_command, models_command, predict_command, train_command
from histo_bench.command_group import HandledGroup
from histo_bench.command_options import config_from, fail, field_help
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
app.command("suite")(suite_command)
app.command("report")(report_command)
app.command("explain")(explain_command)
app.command("ingest-bench")(ingest_bench_command)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Show the machine: Python, GPUs, and which optional libraries (torch, DALI, cuCIM, TensorRT...) are here."""
    from benchmark.environment import OPTIONAL_PACKAGES, describe
    from histo_bench.console import rich_table

    info = describe()
    if as_json:
        stdout.print_json(json.dumps(info))
        return
    stdout.print(f"Python {info['python']} on {info['platform']}; "
                 f"GPU: {', '.join(info['gpus']) or 'none found (nvidia-smi)'}", highlight=False)
    stdout.print(rich_table(("package", "version", "used for"),
                            ((name, version or "[dim]not installed[/]", OPTIONAL_PACKAGES.get(name, "core"))
                             for name, version in {**info["core"], **info["optional"]}.items())))


@app.command("tile-bench")
def tile_bench(
    slide: Annotated[str, typer.Option(help="synthetic (40x synthetic H&E), real (20x real tissue mirrored to --size), "
                                       "gigapixel (peak RSS of tiling + MIL features on a streamed slide), or a "
                                       "slide path.")] = "synthetic",
    size: Annotated[Optional[int], typer.Option(help="Slide side in pixels (synthetic 20000, real 24000, "
                                                "gigapixel 100000).")] = None,
    mag: Annotated[Optional[float], typer.Option("--mag", help="Target magnification (synthetic 40, real 20).")
                   ] = None,
    tile_size: Annotated[Optional[int], typer.Option(help="Tile side in pixels (synthetic 224, real 256).")] = None,
    reader: Annotated[Optional[list[str]], typer.Option(help="Readers to measure (repeatable; default all).")
                      ] = None,
    codec: Annotated[Optional[list[str]], typer.Option(
        help="Tile codecs to measure (repeatable): auto, blosc-zstd, blosc-lz4, jpeg; default auto.")] = None,
    repeat: Annotated[int, typer.Option(help="Alternating runs of each method; the fastest is reported.")] = 1,
    read_workers: Annotated[int, typer.Option(help="Reader threads per batch.")] = 2,
    feature_tiles: Annotated[int, typer.Option(help="gigapixel: tiles a resnet34 encodes (all tiles go through "
                                               "a cheap stand-in encoder).")] = 256,
    workdir: Annotated[Path, typer.Option(help="Where the slide and scratch stores go.")] = Path("data/tile-bench"),
    out: Annotated[Path, typer.Option(help="Where the JSON + Markdown results go.")] = Path("bench_results/tiling"),
) -> None:
    """Tiles/s of `histo-ingest tile` per reader and codec vs a naive OpenSlide read_region + PNG loop, same run."""
    if repeat < 1:
        fail(f"--repeat {repeat}: must be >= 1")
    if slide == "gigapixel":
        from benchmark.gigapixel import run_gigapixel_benchmark
        from benchmark.gigapixel import save as save_gigapixel

        result = run_gigapixel_benchmark(workdir, size=size or 100_000, feature_tiles=feature_tiles)
        stdout.print(f"saved to {save_gigapixel(result, out)}")
        return
    from benchmark.tiling import run_tiling_benchmark, save, to_markdown

    result = run_tiling_benchmark(workdir, slide=slide, size=size, magnification=mag, tile_size=tile_size,
                                  readers=tuple(reader) if reader else None, codecs=tuple(codec or ["auto"]),
                                  read_workers=read_workers, repeat=repeat)
    path = save(result, out, None if slide == "synthetic" and not codec else
                f"tiling_{slide if slide in ('real', 'synthetic') else 'file'}_{result['tile_size']}px_"
                f"{'-'.join(codec or ['auto'])}_{result['machine']['cpus']}cpu_"
                f"{'gpu' if result['machine']['gpus'] else 'nogpu'}")
    stdout.print(to_markdown(result), markup=False)
    stdout.print(f"saved to {path}")


@app.command("loader-bench")
def loader_bench(
    model: Annotated[str, typer.Option(help="Image classifier whose training step is fed.")] = "deit_small",
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the embedded demo store).")] = None,
    loader: Annotated[Optional[list[str]], typer.Option(
        "--loader", help="device, dali, torch (repeatable; default device).")] = None,
    mag: Annotated[str, typer.Option("--mag", help="Magnification of the images loaded: 100X, 400X, mixed, ...")
                   ] = "100X",
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    image_size: Annotated[int, typer.Option(help="Network input side.")] = 224,
    steps: Annotated[int, typer.Option(help="Timed training steps per measurement.")] = 20,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Where the JSON result goes.")] = Path("bench_results/loader"),
) -> None:
    """Input-pipeline efficiency: training images/s fed by a loader / images/s on tensors already on the device."""
    for name, value in (("--batch-size", batch_size), ("--steps", steps), ("--image-size", image_size)):
        if value < 1:
            fail(f"{name} {value}: must be >= 1")
    import json
    import time

    import torch

    from benchmark.environment import describe
    from histo_bench.device import autocast, autocast_dtype, resolve_device
    from ingest.store import ImageStore
    from models.registry import build_model
    from pipelines.data.base import DataConfig
    from pipelines.data.loaders import input_efficiency, make_loader
    from pipelines.training.classifier import default_store

    dev = resolve_device(device)
    amp = autocast_dtype(precision, dev)
    store = ImageStore(data or default_store())
    net = build_model(model, len(store.classes)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(x, y):
        with autocast(dev, amp):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = []
    for name in loader or ["device"]:
        config = DataConfig(image_size=image_size, load_size=round(image_size * 8 / 7), batch_size=batch_size,
                            loader=name)
        result = input_efficiency(make_loader(store, "train", mag, config, device=dev, train=True), step,
                                  n_batches=steps)
        rows.append({"loader": name, **{k: round(v, 3) for k, v in result.items()}})
        stdout.print(f"{name}: {result['loader_images_per_s']:.1f} images/s vs {result['synthetic_images_per_s']:.1f}"
                     f" on device-resident tensors: efficiency {result['efficiency']:.2f}", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    env = describe()
    path = out / f"{model}_{'gpu' if env['gpus'] else 'cpu'}.json"
    path.write_text(json.dumps({"model": model, "device": dev, "precision": str(amp), "batch_size": batch_size,
                                "image_size": image_size, "store": str(store.path),
                                "origin": store.attrs.get("origin", {}), "environment": env,
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=1))
    stdout.print(f"saved to {path}")


def _csv(option: str, value: str | None, cast=str) -> tuple:
    try:
        return tuple(cast(v.strip()) for v in value.split(",") if v.strip()) if value else ()
    except ValueError:
        fail(f"--{option.replace('_', '-')} {value!r}: expected a comma list of {cast.__name__} values")


#: ``run``'s options -> :class:`benchmark.run.BenchConfig` fields (their help is the field's; a test checks them).
RUN_FIELDS = {"model": "model", "checkpoint": "checkpoint", "data": "data", "backends": "backends",
              "precisions": "precisions", "batch_sizes": "batch_sizes", "device": "device", "image_size": "image_size",
              "mag": "magnifications", "max_eval_images": "max_eval_images", "task": "task",
              "train_epochs": "train_epochs", "min_time": "min_time_s", "max_time": "max_time_s", "out": "out"}
_BENCH = "benchmark.run:BenchConfig"


@app.command("run")
def run(
    model: Annotated[str, typer.Option(help=field_help(_BENCH, "model", "See `histo-bench models`."))] = "swin_tiny",
    checkpoint: Annotated[Optional[Path], typer.Option(help=field_help(_BENCH, "checkpoint"))] = None,
    data: Annotated[Optional[Path], typer.Option(help=field_help(_BENCH, "data"))] = None,
    backends: Annotated[Optional[str], typer.Option(help=field_help(_BENCH, "backends", "A comma list."))] = None,
    precisions: Annotated[Optional[str], typer.Option(help=field_help(_BENCH, "precisions", "A comma list of "
                                                                      "fp32, bf16, fp16."))] = None,
    batch_sizes: Annotated[Optional[str], typer.Option(help=field_help(_BENCH, "batch_sizes", "A comma list."))
                           ] = None,
    device: Annotated[str, typer.Option(help=field_help(_BENCH, "device"))] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help=field_help(_BENCH, "image_size"))] = None,
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help=field_help(_BENCH, "magnifications",
                                                                              "Repeatable."))] = None,
    max_eval_images: Annotated[Optional[int], typer.Option(help=field_help(_BENCH, "max_eval_images"))] = None,
    task: Annotated[str, typer.Option(help=field_help(_BENCH, "task"))] = "subtype",
    train_epochs: Annotated[int, typer.Option(help=field_help(_BENCH, "train_epochs"))] = 2,
    min_time: Annotated[Optional[float], typer.Option(help=field_help(_BENCH, "min_time_s", "Seconds to time each "
                                                                                            "point at least."))] = None,
    max_time: Annotated[Optional[float], typer.Option(help=field_help(_BENCH, "max_time_s", "Seconds to time each "
                                                                                            "point at most."))] = None,
    out: Annotated[Path, typer.Option(help=field_help(_BENCH, "out"))] = Path("bench_results"),
) -> None:
    """Compile a checkpoint with every backend, sweep batch sizes; latency p50/p90/p99, throughput, peak VRAM and
    macro-F1 per magnification through each backend -> JSONL, CSV, Markdown and plots."""
    given = dict(locals())  # first: the command line's options, nothing else
    from benchmark.run import BenchConfig, run_benchmark

    config = config_from(BenchConfig, RUN_FIELDS, given, backends=_csv("backends", backends),
                         precisions=_csv("precisions", precisions), batch_sizes=_csv("batch_sizes", batch_sizes, int))

    def progress(backend: str, precision: str, point) -> None:
        if point is None:  # skipped: the library's INFO line says so, with the reason
            return
        if point.status == "ok":
            t = point.timing
            console.print(f"{backend} {precision} batch {point.batch_size}: p50 {t['latency_p50_ms']:.2f} ms, "
                          f"{t['throughput_ips']:.1f} img/s", highlight=False)
        else:
            console.print(f"[yellow]{backend} {precision} batch {point.batch_size}: {point.status}: "
                          f"{point.reason}[/]", highlight=False)

    out_dir, _ = run_benchmark(config, progress)
    from histo_bench.console import print_markdown

    print_markdown((out_dir / "results.md").read_text())  # the file stays Markdown; its tables print as tables
    stdout.print(f"results: {out_dir}", highlight=False, soft_wrap=True)


@app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline results (a results folder or its results.jsonl).")],
    b: Annotated[Path, typer.Argument(help="Results to compare with A.")],
) -> None:
    """Two result sets side by side: throughput and p50 latency of each point measured in both, B/A ratios, F1
    changes."""
    from benchmark.results import compare_rows, load_rows
    from histo_bench.console import rich_table

    rows = compare_rows(load_rows(a), load_rows(b))
    if not rows:
        fail(f"{a} and {b} share no measured (model, backend, precision, batch size)")
    headers = ("model", "backend", "precision", "batch", "img/s A", "img/s B", "B/A", "p50 ms A", "p50 ms B", "B/A ",
               "macro-F1 B-A")
    stdout.print(rich_table(headers, ((r["model"], r["backend"], r["precision"], r["batch_size"],
                                       f"{r['throughput_a']:.1f}", f"{r['throughput_b']:.1f}",
                                       f"{r['throughput_ratio']:.2f}x", f"{r['p50_a']:.2f}", f"{r['p50_b']:.2f}",
                                       f"{r['latency_ratio']:.2f}x",
                                       ", ".join(f"{m} {d:+.3f}" for m, d in r["f1_delta"].items()) or "-")
                                      for r in rows),
                            ids=3, justify=["left"] * 3 + ["right"] * 8, title=f"A = {a}\nB = {b}"))


def main() -> None:
    from ingest.workers import run_app

    run_app(app)


if __name__ == "__main__":
    main()
