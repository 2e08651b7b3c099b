"""Run by torchrun in test_ddp.py: one training process of a 2-process gloo job on the CPU."""

import sys

import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
from pipelines.training.classifier import TrainConfig, train

if __name__ == "__main__":
    store, out = sys.argv[1], sys.argv[2]
    train(TrainConfig(model="tiny_cnn_test", store=store, train_magnification="100X", epochs=3, batch_size=8,
                      lr=3e-2, warmup_epochs=0.5, image_size=32, load_size=40, loader="device", device="cpu",
                      out=out))
