"""``histo-bench`` commands for models, training and evaluation (registered by ``benchmark.cli``).

Thin: parse, build a config, call the library. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ingest.console import console, stdout

EXIT_ERROR = 1


def fail(message: str) -> None:
    """Print a one-line error and exit with status 1 (every histo-bench command fails this way)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def models_command(pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*") -> None:
    """List the registered models with parameter count and input spec."""
    from rich.table import Table

    from models.registry import model_table

    table = Table("model", "family", "parameters", "input", "description")
    for row in model_table():
        if not Path(row["name"]).match(pattern):
            continue
        table.add_row(row["name"], row["family"], f"{row['params'] / 1e6:.1f} M", row["input_spec"],
                      row.get("description", ""))
    stdout.print(table)


def train_command(
    model: Annotated[str, typer.Option(help="Registered model (see `histo-bench models`).")] = "deit_small",
    train_mag: Annotated[str, typer.Option("--train-mag", help="100X, 400X, mixed (100X+400X), or e.g. 40X.")
                         ] = "100X",
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the embedded demo store).")] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = 30,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 10,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    loader: Annotated[str, typer.Option(help="auto, device, dali or torch.")] = "auto",
    image_size: Annotated[int, typer.Option(help="Network input side.")] = 224,
    pretrained: Annotated[bool, typer.Option(help="Start from ImageNet weights (needs the timm hub).")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="Start from a local weights file.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Cap on steps per epoch (quick runs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for everything.")] = 0,
    task: Annotated[str, typer.Option(help="subtype (the store's classes) or binary (benign vs malignant).")
                    ] = "subtype",
    wandb: Annotated[bool, typer.Option(help="Also log the curves to Weights & Biases (pip install wandb).")] = False,
    folds: Annotated[int, typer.Option(help="Patient-level k-fold cross-validation (0 = the store's own split).")
                     ] = 0,
    fold: Annotated[int, typer.Option(help="The test fold (0..folds-1) under --folds.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    unfreeze: Annotated[str, typer.Option(help="Parameters that train: full, last_block or head.")] = "full",
    label_fraction: Annotated[float, typer.Option(
        help="Train on this fraction of the train patients (class-stratified, seeded; val/test untouched).")] = 1.0,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory (default runs/<model>-<mag>, runs/<model>-<mag>-binary for --task binary).")] = None,
) -> None:
    """Train a classifier with the paper protocol; resumes an interrupted run in the same --out. TensorBoard curves
    go to <run dir>/tb (tensorboard --logdir runs)."""
    from pipelines.train import TrainConfig, TrainingError, train

    try:
        config = TrainConfig(model=model, store=str(data) if data else None, train_magnification=train_mag,
                             epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                             patience=patience, precision=precision, device=device, loader=loader,
                             image_size=image_size, pretrained=pretrained, weights=str(weights) if weights else None,
                             max_steps_per_epoch=max_steps, seed=seed, task=task, wandb=wandb, folds=folds,
                             fold=fold, split_seed=split_seed, unfreeze=unfreeze, label_fraction=label_fraction,
                             out=str(out) if out else None)
    except ValueError as exc:
        fail(str(exc))
    from ingest.console import progress_bar

    with progress_bar(f"training {model}") as bar:
        def step(epoch: int, done: int, total: int, loss: float) -> None:
            bar(epoch * total + done, config.epochs * total)

        try:
            result = train(config, progress=step)
        except (TrainingError, KeyError, ValueError) as exc:  # CVError (too few patients per class) is a ValueError
            fail(str(exc).strip("'\""))
    best = result.best_val
    note = " (already complete)" if result.already_complete else (" (resumed)" if result.resumed else "")
    stdout.print(f"run {result.run_dir}{note}: best epoch {result.best_epoch}, val macro-F1 "
                 f"{best.get('macro_f1', 0):.3f}, accuracy {best.get('accuracy', 0):.3f}, patient accuracy "
                 f"{best.get('patient_accuracy') or 0:.3f} ({best.get('n_images', 0)} images, "
                 f"{best.get('n_patients', 0)} patients)", highlight=False)


def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="A best.pt written by `histo-bench train`.")],
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the checkpoint's store).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    mag: Annotated[Optional[list[str]], typer.Option("--mag", help="Magnification(s) to test (repeatable).")
                   ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    task: Annotated[Optional[str], typer.Option(
        help="subtype or binary (default: the checkpoint's task; a subtype model can be scored on binary).")] = None,
) -> None:
    """Macro-F1, accuracy and patient-level accuracy of a checkpoint on each magnification's split."""
    from rich.table import Table

    from ingest.report_tables import origin_line
    from pipelines.checkpoint import IMAGE_KINDS, CheckpointError, load_checkpoint
    from pipelines.cv import store_for_run
    from pipelines.data import DataConfig
    from pipelines.device import resolve_device
    from pipelines.train import evaluate_split

    dev = resolve_device(device)
    try:
        ckpt = load_checkpoint(checkpoint, IMAGE_KINDS, dev, "evaluate")
    except CheckpointError as exc:
        fail(str(exc))
    model, config = ckpt.build(dev), ckpt.config
    store = store_for_run(config, str(data) if data else None)  # the run's split (its fold under --folds)
    model_task = config.get("task", "subtype")  # checkpoints from before tasks are subtype models
    try:
        data_config = DataConfig(image_size=config["image_size"], load_size=config["load_size"],
                                 batch_size=config["batch_size"], loader=config["loader"], task=task or model_task)
    except ValueError as exc:
        fail(str(exc))
    table = Table(title=f"{config['model']} trained on {config['train_magnification']} ({model_task}), {split} "
                  f"split, {data_config.task} task", title_justify="left")
    for col in ("test magnification", "images", "patients", "macro-F1", "accuracy", "balanced acc", "patient acc"):
        table.add_column(col, justify="right")
    family = ckpt.kind
    # the fusion model's inputs are fixed at training time: it is tested on those magnifications together
    tests = [config["train_magnification"]] if family == "fusion" else (mag or ["100X", "400X", "mixed"])
    for m in tests:
        try:
            metrics = evaluate_split(model, store, split, m, data_config, dev, None, family, model_task)
        except ValueError as exc:
            fail(str(exc))
        table.add_row(m, str(metrics.n_images), str(metrics.n_patients), f"{metrics.macro_f1:.3f}",
                      f"{metrics.accuracy:.3f}", f"{metrics.balanced_accuracy:.3f}",
                      f"{metrics.patient_accuracy or 0:.3f}")
    stdout.print(table)
    stdout.print(origin_line(store), highlight=False)


def pretrain_command(
    model: Annotated[str, typer.Option(help="mpcs_resnet50 or mpcs_efficientnet_b0.")] = "mpcs_resnet50",
    pair: Annotated[str, typer.Option(help="Magnification pairs: ordered, fixed or random.")] = "ordered",
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the embedded demo store).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Positive pairs per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    image_size: Annotated[int, typer.Option(help="Network input side.")] = 224,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<model>-<pair>).")] = None,
) -> None:
    """MPCS self-supervised pretraining on same-patient magnification pairs; writes encoder weights."""
    from ingest.console import progress_bar
    from pipelines.pretrain import PretrainConfig, pretrain

    try:
        config = PretrainConfig(model=model, pair=pair, store=str(data) if data else None, epochs=epochs,
                                batch_size=batch_size, lr=lr, image_size=image_size, device=device,
                                precision=precision, seed=seed, out=str(out) if out else None)
    except ValueError as exc:
        fail(str(exc))
    with progress_bar(f"MPCS {pair}") as bar:
        try:
            weights = pretrain(config, progress=bar)
        except (ValueError, RuntimeError, KeyError) as exc:
            fail(str(exc).strip("'\""))
    backbone = model.removeprefix("mpcs_")
    stdout.print(f"encoder weights: {weights}\nfine-tune: histo-bench train --model {backbone} --weights {weights}",
                 highlight=False)


def mil_train_command(
    store: Annotated[Path, typer.Option(help="Slide store from `histo-ingest tile`.")],
    labels: Annotated[Path, typer.Option(help="CSV with slide_id,label (optional patient column).")],
    scale: Annotated[str, typer.Option(help="Tile scale in the store, e.g. 20x.")] = "20x",
    model: Annotated[str, typer.Option(help="abmil or abmil_gated.")] = "abmil_gated",
    extractor: Annotated[str, typer.Option(help="Tile features: resnet50, resnet34 or vit_small.")] = "resnet50",
    extractor_weights: Annotated[Optional[Path], typer.Option(help="Local weights for the extractor.")] = None,
    max_patches: Annotated[int, typer.Option(help="Random tiles per training bag.")] = 512,
    loss: Annotated[str, typer.Option(help="ce (cross-entropy) or focal.")] = "ce",
    focal_gamma: Annotated[float, typer.Option(help="Focal-loss gamma (with --loss focal).")] = 2.0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 50,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/mil"),
) -> None:
    """Attention MIL on slides: cache tile features in the store, train, report test metrics."""
    from pipelines.engine import FitError
    from pipelines.mil import MILConfig, MILError, train_mil

    try:
        config = MILConfig(store=str(store), labels=str(labels), scale=scale, model=model, extractor=extractor,
                           extractor_weights=str(extractor_weights) if extractor_weights else None,
                           max_patches=max_patches, loss=loss, focal_gamma=focal_gamma, epochs=epochs,
                           device=device, precision=precision, seed=seed, out=str(out))
        summary = train_mil(config)
    except (MILError, FitError, ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    test = summary["test"]
    stdout.print(f"{out}: slides {summary['n_slides']}, test macro-F1 {test['macro_f1']:.3f}, accuracy "
                 f"{test['accuracy']:.3f} ({test['n_images']} slides)", highlight=False)


def mil_infer_command(
    checkpoint: Annotated[list[Path], typer.Argument(help="One or more MIL best.pt (an ensemble averages them).")],
    store: Annotated[Path, typer.Option(help="Slide store from `histo-ingest tile`.")],
    scale: Annotated[Optional[str], typer.Option(help="Tile scale (default: the checkpoints').")] = None,
    extractor: Annotated[Optional[str], typer.Option(help="Tile features (default: the checkpoints').")] = None,
    extractor_weights: Annotated[Optional[Path], typer.Option(
        help="Local extractor weights (default: the checkpoints').")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="CSV slide_id,label: adds a label column.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/mil-predictions"),
) -> None:
    """Predictions CSV (class probabilities per slide; several checkpoints: their mean) and attention heatmaps
    (.npy + PNG over the thumbnail)."""
    from pipelines.mil import MILError, infer_mil

    try:
        path = infer_mil(checkpoint, store, out, scale=scale, extractor=extractor, device=device,
                         extractor_weights=str(extractor_weights) if extractor_weights else None,
                         labels=labels)
    except (MILError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    stdout.print(f"predictions: {path}\nattention heatmaps: {out / 'attention'}", highlight=False)


def loader_bench_command(
    model: Annotated[str, typer.Option(help="Image classifier whose training step is fed.")] = "deit_small",
    data: Annotated[Optional[Path], typer.Option(help="Image store (default: the embedded demo store).")] = None,
    loader: Annotated[Optional[list[str]], typer.Option(
        "--loader", help="device, dali, torch (repeatable; default device).")] = None,
    train_mag: Annotated[str, typer.Option("--train-mag", help="Images to load.")] = "100X",
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    image_size: Annotated[int, typer.Option(help="Network input side.")] = 224,
    steps: Annotated[int, typer.Option(help="Timed training steps per measurement.")] = 20,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Where the JSON result goes.")] = Path("bench_results/loader"),
) -> None:
    """Input-pipeline efficiency: training images/s fed by a loader / images/s on tensors already on the device."""
    import json
    import time

    import torch

    from benchmark.environment import describe
    from ingest.store import ImageStore
    from models.registry import build_model
    from pipelines.data import DataConfig, input_efficiency, make_loader
    from pipelines.device import autocast, autocast_dtype, resolve_device
    from pipelines.train import default_store

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
        result = input_efficiency(make_loader(store, "train", train_mag, config, device=dev, train=True), step,
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


def fusion_slides_command(
    store: Annotated[Path, typer.Option(help="Slide store tiled with --multiscale.")],
    labels: Annotated[Path, typer.Option(help="CSV with slide_id,label (optional patient column).")],
    scale: Annotated[str, typer.Option(help="Scale holding the concentric views (the first --mag).")] = "20x",
    max_tiles: Annotated[int, typer.Option(help="Tiles per slide (random subset).")] = 256,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Tiles per step.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/fusion-slides"),
) -> None:
    """The multi-magnification fusion model on slides: each tile's 1x/2x/4x/8x views are its inputs."""
    from pipelines.engine import FitError
    from pipelines.fusion_slides import SlideFusionConfig, train_slide_fusion
    from pipelines.mil import MILError

    try:
        config = SlideFusionConfig(store=str(store), labels=str(labels), scale=scale, max_tiles=max_tiles,
                                   epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                                   precision=precision, seed=seed, out=str(out))
        summary = train_slide_fusion(config)
    except (MILError, FitError, ValueError, KeyError) as exc:
        fail(str(exc).strip("'\""))
    test = summary.get("test_slide")
    result = (f"test slide macro-F1 {test['macro_f1']:.3f}, accuracy {test['accuracy']:.3f} ({test['n_images']} "
              f"slides)" if test else "no test slides")
    stdout.print(f"{out}: {summary['n_inputs']} views per tile, slides {summary['n_slides']}, {result}",
                 highlight=False)
