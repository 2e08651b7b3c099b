"""MPCS pretraining: same-patient magnification pairs, a finite falling loss, encoder weights that fine-tune."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from models.registry import build_model
from pipelines.training.checkpoint import load_checkpoint
from pipelines.training.mpcs import PretrainConfig, pair_index, pretrain, sample_pairs
from pipelines.training.run_directory import FitError
from tests.pipelines.run_helpers import tb_scalars


def test_pairs_are_same_patient_at_the_strategy_magnifications():
    patients = np.array(["a", "a", "a", "a", "b", "b", "b"])
    mags = np.array(["40X", "100X", "200X", "400X", "100X", "400X", "400X"])
    index = pair_index(patients, mags)
    rng = random.Random(0)
    order = ["40X", "100X", "200X", "400X"]
    for strategy in ("ordered", "random"):
        first, second = sample_pairs(np.arange(7), patients, index, strategy, rng)
        for a, b in zip(first, second, strict=True):
            assert patients[a] == patients[b] and mags[a] != mags[b]
            if strategy == "ordered" and patients[a] == "a":
                assert order.index(mags[b]) - order.index(mags[a]) == 1  # adjacent, lower first
    first, second = sample_pairs(np.array([0, 1]), patients, index, "fixed", rng)
    assert [(mags[a], mags[b]) for a, b in zip(first, second, strict=True)] == [("200X", "400X")] * 2


def test_pretrain_writes_encoder_weights_that_load_into_the_backbone(colour_store, tmp_path):
    config = PretrainConfig(model="mpcs_efficientnet_b0", store=str(colour_store), pair="random", epochs=2,
                            batch_size=8, image_size=32, device="cpu", out=str(tmp_path / "mpcs"))
    weights = pretrain(config)
    assert load_checkpoint(tmp_path / "mpcs" / "best.pt", ("mpcs",)).model == "mpcs_efficientnet_b0"
    rows = [json.loads(line) for line in (tmp_path / "mpcs" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    curves = tb_scalars(tmp_path / "mpcs" / "tb")
    assert [s for s, _ in curves["epoch/train_loss"]] == [0, 1]
    assert {"epoch/lr", "epoch/items_per_s", "epoch/epoch_seconds", "step/train_loss"} <= set(curves)
    from safetensors.torch import load_file

    saved = load_file(str(weights))
    model = build_model("efficientnet_b0", 8, weights=weights)  # fine-tuning starts from the MPCS encoder
    state = model.state_dict()
    shared = [k for k in saved if k in state]
    assert len(shared) > 100 and all(np.array_equal(saved[k].numpy(), state[k].numpy()) for k in shared)


def test_config_errors():
    with pytest.raises(ValueError, match="pair must be one of"):
        PretrainConfig(pair="sideways")
    with pytest.raises(ValueError, match="mpcs_"):
        PretrainConfig(model="resnet50")


def test_pretrain_on_a_fold_sees_only_its_train_patients_and_is_not_redone(colour_store, tmp_path):
    from ingest.store import ImageStore
    from pipelines.training.cv import split_view

    config = PretrainConfig(model="mpcs_efficientnet_b0", store=str(colour_store), pair="ordered", epochs=1,
                            batch_size=4, image_size=32, device="cpu", folds=2, fold=1, task="binary",
                            max_steps_per_epoch=2, out=str(tmp_path / "fold"))
    weights = pretrain(config)
    saved = json.loads((tmp_path / "fold" / "config.json").read_text())
    view = split_view(ImageStore(colour_store), 2, 1, 0, "binary")
    assert saved["patients"] == sorted(set(view.patient[view.select(split="train")].tolist()))
    assert not set(saved["patients"]) & set(view.patient[view.select(split="test")].tolist())
    assert len((tmp_path / "fold" / "metrics.jsonl").read_text().splitlines()) == 1
    stamp = weights.stat().st_mtime_ns
    assert pretrain(config) == weights and weights.stat().st_mtime_ns == stamp  # finished: not redone
    # a finished run with other settings is refused, naming them; the old encoder stays
    changed = PretrainConfig(**{**config.__dict__, "lr": 1e-3})
    with pytest.raises(FitError, match=r"other settings \(lr 0.0003 != 0.001\)"):
        pretrain(changed)
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="fold in 0..folds-1"):
        PretrainConfig(folds=2, fold=2)
