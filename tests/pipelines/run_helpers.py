"""What several training tests share: a TrainConfig for the tiny test CNN on a store, and the TensorBoard scalars a
run wrote."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
from pipelines.training.classifier import TrainConfig


def train_config(store, tmp_path, **kw):
    """The tiny test CNN on ``store`` for 4 epochs at 32 px on the CPU; ``kw`` overrides any field."""
    base = dict(model="tiny_cnn_test", store=str(store), train_magnification="100X", epochs=4, batch_size=8,
                lr=3e-2, warmup_epochs=0.5, image_size=32, load_size=40, loader="device", device="cpu",
                out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})



def tb_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under ``tb_dir`` -> [(step, value)], as ``tensorboard --logdir`` would see them."""
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
