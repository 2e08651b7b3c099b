"""``histo-bench`` commands that run studies and turn results into reports: ``suite``, ``report``, ``explain``
(registered by ``benchmark.cli.app``). Thin, like :mod:`benchmark.cli.train`: nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmark.cli.train import fail
from histo_bench.console import console, stdout


def suite_command(
    name: Annotated[Optional[str], typer.Argument(
        help="Suite to run (see --list): magnification-transfer (the default), fusion-inputs, transfer, ...")] = None,
    list_suites: Annotated[bool, typer.Option("--list", help="List the registered suites and exit.")] = False,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Model(s) to run (repeatable; default: the "
                                                                       "suite's).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the embedded demo store).")] = None,
    task: Annotated[Optional[list[str]], typer.Option(
        "--task", help="subtype and/or binary (repeatable; default: the suite's, transfer runs both).")] = None,
    folds: Annotated[int, typer.Option(help="Patient-level k-fold cross-validation (0 = the store's own split; "
                                            "the papers use 5).")] = 0,
    seeds: Annotated[int, typer.Option(help="Training seeds per fold (seed, seed+1, ...).")] = 1,
    quick: Annotated[bool, typer.Option(help="CPU-sized runs (64 px, 1 epoch, 3 steps): checks the study end to "
                                             "end.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs per run (default 30; --quick 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default 32; --quick 8).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Cap on steps per epoch (quick runs).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate (default: the suite's).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Network input side (default 224; --quick 64).")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="First training seed.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    pretrained: Annotated[bool, typer.Option(help="Start from ImageNet weights (needs the timm hub).")] = False,
    weights_dir: Annotated[Optional[Path], typer.Option(
        help="Folder of local weights named after the models (resnet50.safetensors, ...).")] = None,
    keep_last: Annotated[bool, typer.Option(help="Keep each finished run's last.pt (optimizer state).")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Suite directory (default runs/suites/NAME; without NAME: runs/suite, runs/suite-binary).")] = None,
) -> None:
    """Seed-study suites: train over folds x seeds, write report.md + report.html with mean ± std tables and figures.
    Without NAME: the cross-magnification suite (100X / 400X / mixed x test each)."""
    from benchmark.suites import SUITES, StudyConfig, run_suite

    if list_suites:
        for suite_name in SUITES.names():
            spec = SUITES.get(suite_name)
            defaults = f"; models: {', '.join(spec.models)}" if spec.models else ""
            stdout.print(f"{suite_name}: {spec.description} (tasks: {', '.join(spec.tasks)}{defaults})",
                         markup=False, highlight=False, soft_wrap=True)
        return
    if name is None and out is None:  # the pre-suites command line and its directories
        first = (task or ["subtype"])[0]
        out = Path("runs/suite" if first == "subtype" else f"runs/suite-{first}")
    from pipelines.training.classifier import TrainingError

    try:
        study = StudyConfig(suite=name or "magnification-transfer", store=str(data) if data else None,
                            tasks=tuple(task or ()), models=tuple(model or ()), folds=folds, seeds=seeds, seed=seed,
                            split_seed=split_seed, quick=quick, device=device, out=str(out) if out else None,
                            epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
                            max_steps_per_epoch=max_steps, precision=precision, pretrained=pretrained,
                            weights_dir=str(weights_dir) if weights_dir else None, keep_last=keep_last)
        SUITES.get(study.suite)
    except (ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    try:
        outcome = run_suite(study, on_run=lambda message: console.print(f"[bold]{study.suite}[/] {message}",
                                                                        highlight=False))
    except (TrainingError, ValueError, KeyError) as exc:  # CVError / SplitError are ValueErrors
        fail(str(exc).strip("'\""))
    stdout.print(outcome.report_md.read_text(), markup=False, highlight=False)
    stdout.print(f"report: {outcome.report_md}\nhtml report: {outcome.report_html}", highlight=False,
                 soft_wrap=True)


def report_command(run_dir: Annotated[Path, typer.Argument(
        help="A run directory: suite, training run, explain output, benchmark results, MIL predictions, or a "
             "folder holding several.")]) -> None:
    """Rebuild a run's reports: the suite's report.md + figures (where results.json is) and a self-contained
    report.html gathering every curve, table and figure under RUN_DIR."""
    from benchmark.reports.html import ReportError, write_html
    from pipelines.report import write_report

    if not run_dir.is_dir():
        fail(f"{run_dir}: no such directory")
    if (run_dir / "results.json").exists():
        from benchmark.suites import is_suite_results, rebuild_report

        if is_suite_results(run_dir):  # rebuilds report.html too
            stdout.print(f"report: {rebuild_report(run_dir)}\nhtml report: {run_dir / 'report.html'}",
                         highlight=False, soft_wrap=True)
            return
        stdout.print(f"report: {write_report(run_dir)}")
    try:
        stdout.print(f"html report: {write_html(run_dir)}", highlight=False, soft_wrap=True)
    except ReportError as exc:
        fail(str(exc))


def explain_command(
    checkpoint: Annotated[Path, typer.Option(help="A best.pt from train / suite (image classifier or MIL).")],
    data: Annotated[Optional[Path], typer.Option(help="Image store (slide store for MIL); default: the "
                                                      "checkpoint's.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <checkpoint folder>/explain).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help="Magnification(s) to explain (repeatable; "
                                                                   "default: all in the split).")] = None,
    examples: Annotated[int, typer.Option(help="Images per saliency grid (one grid per magnification).")] = 8,
    per_outcome: Annotated[int, typer.Option(help="Images per TP / FP / FN row of each class's grid.")] = 4,
    max_images: Annotated[int, typer.Option(help="At most this many images per magnification (t-SNE).")] = 400,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    scale: Annotated[Optional[str], typer.Option(help="MIL: tile scale (default: the checkpoint's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Picks the examples; seeds t-SNE.")] = 0,
) -> None:
    """Grad-CAM / attention-rollout overlays, TP/FP/FN grids per class, t-SNE by class and magnification (MIL:
    attention heatmaps); figures + explain.json."""
    from pipelines.explain.run import ExplainConfig, explain

    if not checkpoint.is_file():
        fail(f"{checkpoint}: no such checkpoint")
    if data is not None and not data.exists():
        fail(f"{data}: no such store")
    try:
        config = ExplainConfig(checkpoint=str(checkpoint), store=str(data) if data else None,
                               out=str(out) if out else None, split=split, magnifications=tuple(mag or ()),
                               n_examples=examples, n_per_outcome=per_outcome, max_images=max_images,
                               batch_size=batch_size, scale=scale, device=device, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    from histo_bench.console import progress_bar

    with progress_bar("explaining") as bar:
        try:
            result = explain(config, progress=bar)
        except (ValueError, KeyError) as exc:  # ExplainError is a ValueError
            fail(str(exc).strip("'\""))
    out_dir = Path(result["path"]).parent
    for fig in result["figures"]:
        stdout.print(f"figure: {(out_dir / fig['file']).resolve()}", highlight=False, soft_wrap=True)
    stdout.print(f"{result['data']['line']}\nmethod: {result['method']}\nexplain: {result['path']}", highlight=False,
                 soft_wrap=True)
