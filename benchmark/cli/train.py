"""``histo-bench`` commands for models, training, evaluation and inference: ``models``, ``train``, ``evaluate``,
``predict`` (registered by ``benchmark.cli.app``).

Thin: parse, build a config, call the library. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from histo_bench.command_options import check_finite, fail
from histo_bench.console import stdout


def models_command(pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*") -> None:
    """List the registered models with parameter count and input spec."""
    from histo_bench.console import rich_table
    from models.registry import model_table

    rows = [(row["name"], row["family"], f"{row['params'] / 1e6:.1f} M", row["input_spec"], row.get("description", ""))
            for row in model_table() if Path(row["name"]).match(pattern)]
    stdout.print(rich_table(("model", "family", "parameters", "input", "description"), rows))


def train_command(
    model: Annotated[str, typer.Option(help="Registered model (see `histo-bench models`): a classifier, "
                                            "fusion_effnet_b0, abmil / abmil_gated or mpcs_*.")] = "deit_small",
    data: Annotated[Optional[Path], typer.Option(help="Image store, or slide store for abmil* and slide fusion "
                                                      "(default: the embedded demo image store).")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Slide store: CSV with slide_id,label (optional patient "
                                                        "column).")] = None,
    scale: Annotated[Optional[str], typer.Option(help="Slide store: tile scale, e.g. 20x (default: its first).")
                     ] = None,
    mag: Annotated[Optional[str], typer.Option("--mag", help="Image store: the magnification trained on, 100X "
                                                             "(default), 400X, mixed (100X+400X), e.g. 40X, or a comma "
                                                             "list for fusion_effnet_b0.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Image store: subtype (the store's classes, default) or binary "
                                                     "(benign vs malignant).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping may end sooner; default: "
                                                       "the recipe's, 30 for classifiers).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images (tiles, pairs) per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate (default 3e-4; MIL 2e-4).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience (epochs).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Network input side (default 224).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto (default), fp32, bf16 or fp16.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    loader: Annotated[Optional[str], typer.Option(help="Image store: auto, device, dali or torch.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for everything (default 0).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Cap on steps per epoch (quick runs).")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Patient-level k-fold cross-validation (0 = the store's own "
                                                      "split, or a seeded split of the slides).")] = None,
    fold: Annotated[Optional[int], typer.Option(help="The test fold (0..folds-1) under --folds.")] = None,
    split_seed: Annotated[Optional[int], typer.Option(help="Seed of the fold assignment.")] = None,
    pretrained: Annotated[Optional[bool], typer.Option(help="Start from ImageNet weights (needs the timm hub).")
                          ] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Start from a local weights file.")] = None,
    unfreeze: Annotated[Optional[str], typer.Option(help="Parameters that train: full, last_block or head.")] = None,
    label_fraction: Annotated[Optional[float], typer.Option(
        help="Train on this fraction of the train patients (class-stratified, seeded; val/test untouched).")] = None,
    pair: Annotated[Optional[str], typer.Option(help="MPCS: magnification pairs, ordered (default), fixed or "
                                                     "random.")] = None,
    extractor: Annotated[Optional[str], typer.Option(help="MIL: tile features, resnet50 (default), resnet34 or "
                                                          "vit_small.")] = None,
    extractor_weights: Annotated[Optional[Path], typer.Option(help="MIL: local weights for the extractor.")] = None,
    max_tiles: Annotated[Optional[int], typer.Option(help="Slide store: random tiles per slide (MIL: per training "
                                                          "bag).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="MIL: ce (cross-entropy) or focal.")] = None,
    focal_gamma: Annotated[Optional[float], typer.Option(help="MIL: focal-loss gamma (with --loss focal).")] = None,
    wandb: Annotated[Optional[bool], typer.Option(help="Also log the curves to Weights & Biases (pip install "
                                                       "wandb).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<model>-...).")] = None,
) -> None:
    """Train any registered model (the model and the store pick the recipe); resumable.

    A classifier or fusion_effnet_b0 on an image store, abmil / abmil_gated or fusion_effnet_b0 on a slide store
    (--labels), mpcs_* pretraining on an image store. A rerun of a finished run is a no-op, an interrupted one
    resumes from last.pt, other settings in a finished --out are refused. TensorBoard curves go to <run dir>/tb;
    under torchrun every recipe trains with DDP."""
    arguments = dict(locals())  # first: the command line's options, nothing else
    from histo_bench.console import progress_bar
    from pipelines.training.launch import plan_training, run_training

    given = {name: str(value) if isinstance(value, Path) else value for name, value in arguments.items()
             if name != "model" and value is not None}
    check_finite(given)
    plan = plan_training(model, given)
    with progress_bar(f"training {model}") as bar:
        def step(epoch: int, done: int, total: int, loss: float) -> None:
            bar(epoch * total + done, plan.config.epochs * total)

        outcome = run_training(plan, progress=step)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports the run
    note = " (already complete)" if outcome.already_complete else (" (resumed)" if outcome.resumed else "")
    stdout.print(f"run {outcome.run_dir}{note}: {outcome.summary}", highlight=False, soft_wrap=True)


def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="A best.pt written by `histo-bench train` (any kind).")],
    data: Annotated[Optional[Path], typer.Option(help="Store (default: the checkpoint's).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test (slides: also all).")] = "test",
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help="Image store: magnification(s) to test "
                                                                   "(repeatable).")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Slide store: labels CSV (default: the run's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    task: Annotated[Optional[str], typer.Option(
        help="subtype or binary (default: the checkpoint's task; a subtype model can be scored on binary).")] = None,
) -> None:
    """Score any checkpoint, with the chance level beside each figure.

    Classifiers and image fusion per magnification (macro-F1, accuracy, patient accuracy), MIL and slide fusion per
    slide on the run's slide split, MPCS encoders by a linear probe."""
    from histo_bench.device import resolve_device
    from pipelines.training.checkpoint import load_checkpoint

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, None, dev, "evaluate")
    if data is not None and not data.exists():
        fail(f"{data}: no such store")
    slides = ckpt.kind in ("mil", "slide_fusion")
    foreign = [name for name, value, applies in (("--mag", mag, not slides), ("--task", task, not slides),
                                                 ("--labels", labels, slides)) if value and not applies]
    if foreign:
        fail(f"{', '.join(foreign)} does not apply to a {ckpt.kind} checkpoint")
    if slides:
        _evaluate_slides(ckpt, data, labels, split, dev)
    else:
        _evaluate_images(ckpt, data, split, mag, task, dev)


def _metrics_table(title: str, first: str):
    from histo_bench.console import rich_table

    return rich_table((first, "n", "macro-F1", "chance", "accuracy", "balanced acc", "patient acc"), (),
                      justify=["right"] * 7, title=title)


def _add_row(table, name: str, metrics, n_classes: int) -> None:
    patient = f"{metrics.patient_accuracy:.3f}" if metrics.patient_accuracy is not None else "-"
    table.add_row(name, f"{metrics.n_images}" + (f" ({metrics.n_patients} p)" if metrics.n_patients else ""),
                  f"{metrics.macro_f1:.3f}", f"{1 / n_classes:.3f}", f"{metrics.accuracy:.3f}",
                  f"{metrics.balanced_accuracy:.3f}", patient)


def _evaluate_slides(ckpt, data: Path | None, labels: Path | None, split: str, dev: str) -> None:
    from pipelines.evaluation.scoring import score_slides

    store = data or ckpt.config.get("store")
    metrics, missing = score_slides(ckpt, store, labels, split, dev)
    table = _metrics_table(f"{ckpt.model} ({ckpt.kind}) on {store}, {split} slides", "slides")
    _add_row(table, split, metrics, len(ckpt.classes))
    stdout.print(table)
    if missing:
        stdout.print(f"{missing} {split} slide(s) without tiles were left out", highlight=False)


def _evaluate_images(ckpt, data: Path | None, split: str, mag: list[str] | None, task: str | None, dev: str
                     ) -> None:
    from ingest.report_tables import origin_line
    from pipelines.training.cv import store_for_run

    config = ckpt.config
    store = store_for_run(config, str(data) if data else None)  # the run's split (its fold under --folds)
    if ckpt.kind == "mpcs":
        from pipelines.data.tasks import task_classes
        from pipelines.evaluation.scoring import linear_probe

        probe_task = task or config.get("task", "subtype")
        n_classes = len(task_classes(store, probe_task))
        table = _metrics_table(f"{ckpt.model} encoder: linear probe (logistic regression on frozen features, fitted "
                               f"on train) on the {split} split, {probe_task} task", "magnification")
        for m, metrics in linear_probe(ckpt, str(store.path), split, mag or ["100X", "400X", "mixed"], probe_task,
                                       dev):
            _add_row(table, m, metrics, n_classes)
        stdout.print(table)
        stdout.print(origin_line(store), highlight=False)
        return
    from pipelines.data.base import DataConfig
    from pipelines.data.tasks import align_classes
    from pipelines.training.classifier import evaluate_split

    model, model_task = ckpt.build(dev), config.get("task", "subtype")
    store = align_classes(store, ckpt.classes, model_task)
    data_config = DataConfig(image_size=config["image_size"], load_size=config["load_size"],
                             batch_size=config["batch_size"], loader=config["loader"], task=task or model_task)
    table = _metrics_table(f"{config['model']} trained on {config['train_magnification']} ({model_task}), {split} "
                           f"split, {data_config.task} task", "test magnification")
    # the fusion model's inputs are fixed at training time: it is tested on those magnifications together
    tests = [config["train_magnification"]] if ckpt.kind == "fusion" else (mag or ["100X", "400X", "mixed"])
    for m in tests:
        metrics = evaluate_split(model, store, split, m, data_config, dev, None, ckpt.kind, model_task)
        _add_row(table, m, metrics, len(metrics.per_class))
    stdout.print(table)
    stdout.print(origin_line(store), highlight=False)


def predict_command(
    checkpoint: Annotated[list[Path], typer.Option("--checkpoint", help="A best.pt; repeat it for an ensemble of one "
                                                                        "kind (it averages their class "
                                                                        "probabilities).")],
    data: Annotated[Optional[Path], typer.Option(help="Store (default: the checkpoint's).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/predictions"),
    split: Annotated[Optional[str], typer.Option(help="Image store: train, val or test (default: every image).")
                     ] = None,
    scale: Annotated[Optional[str], typer.Option(help="Slide store: tile scale (default: the checkpoint's).")
                     ] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Slide store: CSV slide_id,label, adds a label column.")
                      ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Class probabilities of any checkpoint (or an ensemble) on a store -> predictions.csv.

    Per image (classifiers, fusion) or per slide (MIL, slide fusion; MIL adds attention heatmaps); MPCS encoders
    write embeddings.npy + embeddings.csv."""
    from histo_bench.device import resolve_device
    from pipelines.evaluation.predict import run_predict

    if data is not None and not data.exists():
        fail(f"{data}: no such store")
    path = run_predict(checkpoint, data, out, split=split, scale=scale, labels=labels, device=resolve_device(device))
    attention = out / "attention"
    stdout.print(f"predictions: {path}" + (f"\nattention heatmaps: {attention}" if attention.is_dir() else ""),
                 highlight=False, soft_wrap=True)
