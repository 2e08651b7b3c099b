"""A toy recipe for the engine tests: a linear classifier on two Gaussian blobs (learnable in a few steps).

Run as a script (``python -m tests.pipelines.toy_recipe RUN_DIR EPOCHS STEP_SLEEP``) it trains in a subprocess, so a
test can SIGKILL it in the middle of an epoch.
"""

from __future__ import annotations

import sys
import time

import torch

from pipelines.training.checkpoint import Checkpoint
from pipelines.training.engine import FitConfig, Recipe, fit


class ToyRecipe(Recipe):
    kind, unit = "classifier", "points"

    def __init__(self, seed: int = 0, step_sleep: float = 0.0, batch: int = 16, steps: int = 6,
                 nan_at: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.cat([torch.randn(96, 2, generator=gen) + 2, torch.randn(96, 2, generator=gen) - 2])
        self.y = torch.cat([torch.zeros(96, dtype=torch.long), torch.ones(96, dtype=torch.long)])
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(2, 2)
        self.step_sleep, self.batch, self.steps, self.nan_at, self.calls = step_sleep, batch, steps, nan_at, 0
        self.resolved = {"toy": True, "seed": seed}

    def steps_per_epoch(self) -> int:
        return self.steps

    def batches(self, epoch: int):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        for k in range(self.steps):
            yield order[k * self.batch:(k + 1) * self.batch]

    def step(self, model, idx):
        time.sleep(self.step_sleep)
        loss = torch.nn.functional.cross_entropy(model(self.x[idx]), self.y[idx])
        self.calls += 1
        return (loss * float("nan") if self.calls - 1 == self.nan_at else loss), len(idx)

    def evaluate(self, epoch: int):
        with torch.no_grad():
            acc = float((self.model(self.x).argmax(1) == self.y).float().mean())
        return {"val_accuracy": acc, "val_macro_f1": acc}

    def checkpoint(self, state, epoch, extra) -> Checkpoint:
        return Checkpoint(kind=self.kind, model="toy_linear", state=state, classes=["a", "b"],
                          config=self.resolved, epoch=epoch, extra=extra)


def run(run_dir: str, epochs: int = 3, step_sleep: float = 0.0, lr: float = 0.1, nan_at: int | None = None, **kw):
    recipe = ToyRecipe(step_sleep=step_sleep, nan_at=nan_at)
    config = FitConfig(epochs=epochs, lr=lr, warmup_epochs=0.5, log_every=2, **kw)
    return fit(recipe, config, run_dir, {**recipe.resolved, "epochs": epochs, "lr": lr, **kw}, device="cpu")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
