"""``histo-bench`` commands that run studies and turn results into reports: ``suite``, ``report``, ``explain``
(registered by ``benchmark.cli.app``). Thin, like :mod:`benchmark.cli.train`: nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from histo_bench.command_options import config_from, fail, field_help
from histo_bench.console import console, stdout

#: ``suite``'s options -> :class:`benchmark.suites.StudyConfig` fields (their help is the field's).
SUITE_FIELDS = {"name": "suite", "data": "store", "task": "tasks", "model": "models", "folds": "folds",
                "seeds": "seeds", "seed": "seed", "split_seed": "split_seed", "quick": "quick", "device": "device",
                "out": "out",
                "epochs": "epochs", "batch_size": "batch_size", "image_size": "image_size", "lr": "lr",
                "max_steps": "max_steps_per_epoch", "precision": "precision", "loader": "loader",
                "pretrained": "pretrained", "weights_dir": "weights_dir", "keep_last": "keep_last"}
_STUDY = "benchmark.suites:StudyConfig"


def suite_command(
    name: Annotated[str, typer.Argument(help=field_help(_STUDY, "suite", "magnification-transfer (the default) "
                                                        "trains each model on 100X / 400X / mixed and tests each."))
                    ] = "magnification-transfer",
    list_suites: Annotated[bool, typer.Option("--list", help="List the registered suites and exit.")] = False,
    model: Annotated[Optional[list[str]], typer.Option("--model", help=field_help(_STUDY, "models", "Repeatable."))
                     ] = None,
    data: Annotated[Optional[Path], typer.Option(help=field_help(_STUDY, "store"))] = None,
    task: Annotated[Optional[list[str]], typer.Option("--task", help=field_help(_STUDY, "tasks", "Repeatable."))
                    ] = None,
    folds: Annotated[int, typer.Option(help=field_help(_STUDY, "folds"))] = 0,
    seeds: Annotated[int, typer.Option(help=field_help(_STUDY, "seeds"))] = 1,
    quick: Annotated[bool, typer.Option(help=field_help(_STUDY, "quick", "64 px, 1 epoch, 3 steps."))] = False,
    epochs: Annotated[Optional[int], typer.Option(help=field_help(_STUDY, "epochs", "Maximum epochs per run "
                                                                                     "(default 30; --quick 1)."))
                      ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=field_help(_STUDY, "batch_size", "Images per step "
                                                                                             "(default 32; --quick "
                                                                                             "8)."))] = None,
    max_steps: Annotated[Optional[int], typer.Option(help=field_help(_STUDY, "max_steps_per_epoch", "Cap on steps "
                                                                                                    "per epoch."))
                         ] = None,
    lr: Annotated[Optional[float], typer.Option(help=field_help(_STUDY, "lr", "Peak AdamW learning rate."))] = None,
    image_size: Annotated[Optional[int], typer.Option(help=field_help(_STUDY, "image_size", "Network input side "
                                                                                             "(default 224; --quick "
                                                                                             "64)."))] = None,
    precision: Annotated[str, typer.Option(help=field_help(_STUDY, "precision"))] = "auto",
    loader: Annotated[str, typer.Option(help=field_help(_STUDY, "loader"))] = "auto",
    device: Annotated[str, typer.Option(help=field_help(_STUDY, "device"))] = "auto",
    seed: Annotated[int, typer.Option(help=field_help(_STUDY, "seed"))] = 0,
    split_seed: Annotated[int, typer.Option(help=field_help(_STUDY, "split_seed"))] = 0,
    pretrained: Annotated[bool, typer.Option(help=field_help(_STUDY, "pretrained"))] = False,
    weights_dir: Annotated[Optional[Path], typer.Option(help=field_help(_STUDY, "weights_dir"))] = None,
    keep_last: Annotated[bool, typer.Option(help=field_help(_STUDY, "keep_last"))] = False,
    out: Annotated[Optional[Path], typer.Option(help=field_help(_STUDY, "out"))] = None,
) -> None:
    """Seed-study suite NAME: train over folds x seeds, write report.md + report.html with mean ± std tables and
    figures (`--list` names the suites)."""
    given = dict(locals())  # first: the command line's options, nothing else
    from benchmark.suites import SUITES, StudyConfig, run_suite

    if list_suites:
        for suite_name in SUITES.names():
            spec = SUITES.get(suite_name)
            defaults = f"; models: {', '.join(spec.models)}" if spec.models else ""
            stdout.print(f"{suite_name}: {spec.description} (tasks: {', '.join(spec.tasks)}{defaults})",
                         markup=False, highlight=False, soft_wrap=True)
        return
    SUITES.get(name)  # an unknown NAME: one line listing the suites
    study = config_from(StudyConfig, SUITE_FIELDS, given)
    outcome = run_suite(study, on_run=lambda message: console.print(f"[bold]{study.suite}[/] {message}",
                                                                    highlight=False))
    from histo_bench.console import print_markdown

    print_markdown(outcome.report_md.read_text())  # the file stays Markdown; its tables print as tables
    stdout.print(f"report: {outcome.report_md}\nhtml report: {outcome.report_html}", highlight=False,
                 soft_wrap=True)


def report_command(run_dir: Annotated[Path, typer.Argument(
        help="A run directory: suite, training run, explain output, benchmark results, MIL predictions, or a "
             "folder holding several.")]) -> None:
    """Rebuild a run's reports: the suite's report.md + figures (where results.json is) and a self-contained
    report.html gathering every curve, table and figure under RUN_DIR."""
    from benchmark.reports.html import LegacySuiteError, write_html

    if not run_dir.is_dir():
        fail(f"{run_dir}: no such directory")
    if (run_dir / "results.json").exists():
        from benchmark.suites import is_suite_results, rebuild_report

        if is_suite_results(run_dir):  # rebuilds report.html too
            stdout.print(f"report: {rebuild_report(run_dir)}\nhtml report: {run_dir / 'report.html'}",
                         highlight=False, soft_wrap=True)
            return
        raise LegacySuiteError(run_dir)
    stdout.print(f"html report: {write_html(run_dir)}", highlight=False, soft_wrap=True)


#: ``explain``'s options -> :class:`pipelines.explain.run.ExplainConfig` fields (their help is the field's).
EXPLAIN_FIELDS = {"checkpoint": "checkpoint", "data": "store", "out": "out", "split": "split", "mag": "magnifications",
                  "examples": "n_examples", "per_outcome": "n_per_outcome", "max_images": "max_images",
                  "batch_size": "batch_size", "scale": "scale", "device": "device", "seed": "seed"}
_EXPLAIN = "pipelines.explain.run:ExplainConfig"


def explain_command(
    checkpoint: Annotated[Path, typer.Option(help=field_help(_EXPLAIN, "checkpoint", "From train or suite."))],
    data: Annotated[Optional[Path], typer.Option(help=field_help(_EXPLAIN, "store"))] = None,
    out: Annotated[Optional[Path], typer.Option(help=field_help(_EXPLAIN, "out"))] = None,
    split: Annotated[str, typer.Option(help=field_help(_EXPLAIN, "split"))] = "test",
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help=field_help(_EXPLAIN, "magnifications",
                                                                              "Repeatable."))] = None,
    examples: Annotated[int, typer.Option(help=field_help(_EXPLAIN, "n_examples"))] = 8,
    per_outcome: Annotated[int, typer.Option(help=field_help(_EXPLAIN, "n_per_outcome"))] = 4,
    max_images: Annotated[int, typer.Option(help=field_help(_EXPLAIN, "max_images"))] = 400,
    batch_size: Annotated[int, typer.Option(help=field_help(_EXPLAIN, "batch_size"))] = 32,
    scale: Annotated[Optional[str], typer.Option(help=field_help(_EXPLAIN, "scale"))] = None,
    device: Annotated[str, typer.Option(help=field_help(_EXPLAIN, "device"))] = "auto",
    seed: Annotated[int, typer.Option(help=field_help(_EXPLAIN, "seed"))] = 0,
) -> None:
    """Grad-CAM / attention-rollout overlays, TP/FP/FN grids per class, t-SNE by class and magnification (MIL:
    attention heatmaps); figures + explain.json."""
    given = dict(locals())  # first: the command line's options, nothing else
    from histo_bench.console import progress_bar
    from pipelines.explain.run import ExplainConfig, explain

    if not checkpoint.is_file():
        fail(f"{checkpoint}: no such checkpoint")
    if data is not None and not data.exists():
        fail(f"{data}: no such store")
    config = config_from(ExplainConfig, EXPLAIN_FIELDS, given)
    with progress_bar("explaining") as bar:
        result = explain(config, progress=bar)
    out_dir = Path(result["path"]).parent
    for fig in result["figures"]:
        stdout.print(f"figure: {(out_dir / fig['file']).resolve()}", highlight=False, soft_wrap=True)
    stdout.print(f"{result['data']['line']}\nmethod: {result['method']}\nexplain: {result['path']}", highlight=False,
                 soft_wrap=True)
