"""Saliency algorithms (Grad-CAM, attention rollout) and ``histo-bench explain`` end to end on a tiny store."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from ingest.breakhis import SYNTHETIC_MARKER, IngestConfig, ingest_breakhis
from ingest.breakhis_names import CLASSES, relative_path
from ingest.splits import SplitConfig
from models.registry import MODELS, build_model
from pipelines.explain.cam import (
    attention_rollout,
    cam_target_layer,
    capture_attentions,
    grad_cam,
    overlay,
    rollout_map,
    saliency,
    uses_rollout,
)
from pipelines.explain.run import ExplainConfig, ExplainError, explain
from pipelines.training.classifier import TrainConfig, train
from tests.pipelines import tiny_models  # noqa: F401  (registers tiny_cnn_test)

# -- Grad-CAM ------------------------------------------------------------------------------------------------------

def _region_batch(n: int, n_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 images of zero-mean clutter; the class is the colour of an 8x8 square placed at random inside the
    top-left 16x16 quadrant, the only place that carries any class signal."""
    x = torch.randn(n, 3, 32, 32, generator=gen) * 0.3
    y = torch.randint(0, n_classes, (n,), generator=gen)
    for i in range(n):
        r, c = torch.randint(0, 9, (2,), generator=gen).tolist()
        x[i, :, r:r + 8, c:c + 8] = -1.0
        x[i, int(y[i]), r:r + 8, c:c + 8] = 1.0
    return x, y


def test_grad_cam_highlights_the_region_that_decides():
    torch.manual_seed(0)
    # no biases: clutter cannot become a constant "default class" evidence, every class needs its square
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    untrained = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        x, y = _region_batch(32, 3, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    x, y = _region_batch(48, 3, torch.Generator().manual_seed(1))
    assert (model(x).argmax(1) == y).float().mean() > 0.95  # the model did learn the task
    target = cam_target_layer(model)
    assert target.layer is model[3]  # fallback: the last spatial activation (the ReLU after the second conv)
    cam = grad_cam(model, x, target, y)
    assert cam.shape == (48, 32, 32) and cam.min() >= 0 and cam.max() <= 1

    def share(maps: torch.Tensor) -> torch.Tensor:  # of the map's mass in the top-left quadrant (25% of the area)
        return maps[:, :16, :16].sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)

    trained = share(cam)
    assert trained.mean() > 0.75 and trained.min() > 0.5
    assert all(trained[y == k].mean() > 0.7 for k in range(3))
    # control: before training the same network's maps are not concentrated there (about 0.3)
    assert share(grad_cam(untrained, x, cam_target_layer(untrained), y)).mean() < 0.5
    peak_rows, peak_cols = np.unravel_index(cam.flatten(1).argmax(1).numpy(), (32, 32))
    assert np.mean((peak_rows < 16) & (peak_cols < 16)) > 0.9
    assert not target.layer._forward_hooks and all(p.grad is None for p in model.parameters())


def test_grad_cam_target_layer_for_every_registered_classifier():
    names = [n for n in MODELS.names() if MODELS.get(n).family == "classifier" and not n.endswith("_test")]
    assert {"resnet50", "densenet121", "convnextv2_tiny", "efficientnet_b0", "swin_tiny", "deit_small"} <= set(names)
    for name in names:
        torch.manual_seed(0)  # per model: each one's weights and input do not depend on the others
        model = build_model(name, 3).eval()
        size = 224 if name in ("swin_tiny", "deit_small") else 64
        x = torch.randn(1, 3, size, size)
        if uses_rollout(model):
            maps = saliency(model, x)
        else:
            target = cam_target_layer(model)
            assert type(model).__name__ in target.name, name
            maps = grad_cam(model, x, target)
        assert maps.shape == (1, size, size) and torch.isfinite(maps).all(), name
        # scaled by its peak: max 1 (these seeded nets have positive evidence for their predicted class, so an
        # all-zero map means a broken Grad-CAM / rollout)
        assert float(maps.min()) >= 0 and round(float(maps.max()), 5) == 1.0, name


# -- attention rollout ---------------------------------------------------------------------------------------------

def test_attention_rollout_rows_sum_to_one():
    gen = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(2, 3, 5, 5, generator=gen), -1) for _ in range(4)]
    for discard, fusion in ((0.0, "mean"), (0.5, "max"), (0.9, "min")):
        roll = attention_rollout(layers, discard_ratio=discard, head_fusion=fusion)
        assert roll.shape == (2, 5, 5)
        assert torch.allclose(roll.sum(-1), torch.ones(2, 5), atol=1e-5)
        assert (roll >= 0).all()
    eye = torch.eye(5).expand(1, 2, 5, 5)  # tokens attending only to themselves: nothing mixes
    assert torch.allclose(attention_rollout([eye, eye]), torch.eye(5).unsqueeze(0))
    one = attention_rollout(layers[:1])  # one layer: (mean over heads + I) / 2, already row-stochastic
    assert torch.allclose(one, (layers[0].mean(1) + torch.eye(5)) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(layers, head_fusion="sum")
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])


def test_rollout_on_a_tiny_deit():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_heads=2, embed_dim=32, num_classes=3).eval()
    assert uses_rollout(model)
    x = torch.randn(2, 3, 32, 32)
    fused_before = [b.attn.fused_attn for b in model.blocks]
    logits, maps = capture_attentions(model, x)
    assert [b.attn.fused_attn for b in model.blocks] == fused_before  # restored
    assert not any(b.attn.attn_drop._forward_hooks for b in model.blocks)
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)  # the explicit path computes what the fused one does
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)  # 16 patches + the class token
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 2, 17), atol=1e-5)
    roll = attention_rollout(maps)
    assert torch.allclose(roll.sum(-1), torch.ones(2, 17), atol=1e-5)
    heat = rollout_map(model, x)
    assert heat.shape == (2, 32, 32) and heat.min() >= 0 and heat.max() <= 1


def test_overlay():
    img = np.full((20, 30, 3), 100, np.uint8)
    cam = np.zeros((5, 5), np.float32)
    cam[0, 0] = 1.0
    out = overlay(img, cam)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(overlay(img, cam, alpha=0.0), img)
    assert out[0, 0, 0] > out[-1, -1, 0]  # hot (red) where the map is high, blue where it is low
    assert out[-1, -1, 2] > out[0, 0, 2]
    with pytest.raises(ValueError):
        overlay(img[..., 0], cam)


# -- explain end to end --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic-marked colour store (8 classes, 4 patients each, 100X and 400X) and a tiny CNN trained on it."""
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 220, (len(CLASSES), 3))
    tree = root / "tree"
    for c, cls in enumerate(CLASSES):
        for p in range(4):
            for mag in ("100X", "400X"):
                for k in range(1, 4):
                    path = tree / relative_path(cls, f"14-{100 + 10 * c + p}", mag, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img = np.clip(palette[c] + rng.normal(0, 25, (40, 60, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(path)
    (tree / SYNTHETIC_MARKER).write_text(json.dumps({"generator": "test"}))
    ingest_breakhis(IngestConfig(root=str(tree), out=str(root / "s.zarr"), workers=1,
                                 split=SplitConfig(fractions=(0.5, 0.25, 0.25))))
    result = train(TrainConfig(model="tiny_cnn_test", store=str(root / "s.zarr"), train_magnification="100X",
                               epochs=3, batch_size=8, lr=3e-2, warmup_epochs=0.5, image_size=32, load_size=40,
                               loader="device", device="cpu", out=str(root / "run")))
    return root / "s.zarr", result.run_dir / "best.pt"


def test_explain_writes_figures_and_json(tiny_run):
    store, ckpt = tiny_run
    seen = []
    result = explain(ExplainConfig(checkpoint=str(ckpt), device="cpu", n_examples=4, n_per_outcome=2),
                     progress=lambda done, total: seen.append((done, total)))
    out = ckpt.parent / "explain"
    assert result["path"] == str(out / "explain.json") and seen[-1][0] == seen[-1][1]
    saved = json.loads((out / "explain.json").read_text())
    files = [f["file"] for f in saved["figures"]]
    assert {"cam_100X.png", "cam_400X.png", "tsne.png"} <= set(files)
    assert any(f.startswith("errors_") for f in files)
    for f in saved["figures"]:
        assert f["caption"] and Image.open(out / f["file"]).size[0] > 100
    data = saved["data"]
    assert data["synthetic"] is True and "SYNTHETIC" in data["line"] and data["magnifications"] == ["100X", "400X"]
    assert data["n_images"] == sum(a["n_images"] for a in saved["accuracy"].values()) > 0
    assert data["n_patients"] >= 8 and f"{data['n_patients']} patients" in data["line"]
    assert saved["method"].startswith("Grad-CAM") and saved["model"] == "tiny_cnn_test"
    assert saved["tsne"]["n_points"] == data["n_images"] and saved["tsne"]["feature_dim"] == 8


def test_explain_errors(tiny_run, tmp_path):
    store, ckpt = tiny_run
    with pytest.raises(ExplainError, match="no such checkpoint"):
        explain(ExplainConfig(checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ExplainError, match="no such store"):
        explain(ExplainConfig(checkpoint=str(ckpt), store=str(tmp_path / "nope.zarr"), device="cpu"))
    with pytest.raises(ValueError, match="split"):
        ExplainConfig(checkpoint=str(ckpt), split="holdout")


def test_explain_cli(tiny_run, tmp_path):
    from benchmark.cli.app import app

    store, ckpt = tiny_run
    runner = CliRunner()
    res = runner.invoke(app, ["explain", "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 1 and "no such checkpoint" in res.output
    res = runner.invoke(app, ["explain", "--checkpoint", str(ckpt), "--data", str(store), "--mag", "400X",
                              "--examples", "2", "--per-outcome", "1", "--device", "cpu",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert "cam_400X.png" in res.output and "SYNTHETIC" in res.output
    assert (tmp_path / "x" / "explain.json").exists() and not (tmp_path / "x" / "cam_100X.png").exists()


def test_explain_mil_lists_the_attention_heatmaps(tmp_path):
    from ingest.synthetic.slide import write_synthetic_slide
    from ingest.tile_runner import run_tiling
    from ingest.tiling import TileConfig
    from pipelines.training.mil import MILConfig, infer_mil, train_mil

    slides = [write_synthetic_slide(tmp_path / f"s{i}.tiff", width=1024, height=768, seed=i) for i in range(3)]
    run_tiling(slides, tmp_path / "tiles.zarr", TileConfig(magnifications=(10,), tile_size=64, tissue_threshold=0.3))
    (tmp_path / "labels.csv").write_text("slide_id,label\ns0,normal\ns1,tumour\ns2,normal\n")
    run = tmp_path / "mil"
    train_mil(MILConfig(store=str(tmp_path / "tiles.zarr"), labels=str(tmp_path / "labels.csv"), scale="10x",
                        extractor="resnet34", epochs=1, max_patches=8, split=(0.34, 0.33, 0.33), out=str(run)))
    made = explain(ExplainConfig(checkpoint=str(run / "best.pt"), device="cpu"))  # no predict output yet
    assert made["kind"] == "mil" and sorted(f["slide"] for f in made["figures"]) == ["s0", "s1", "s2"]
    assert (run / "explain" / "mil-predictions" / "attention" / "s1.png").exists()
    assert "3 slides" in made["data"]["line"] and made["method"].startswith("attention-MIL")
    infer_mil([run / "best.pt"], tmp_path / "tiles.zarr", run / "predictions", scale="10x", extractor="resnet34")
    reused = explain(ExplainConfig(checkpoint=str(run / "best.pt"), out=str(tmp_path / "again"), device="cpu"))
    assert {f["file"] for f in reused["figures"]} == {os.path.relpath(run / "predictions" / "attention" / f"s{i}.png",
                                                                      tmp_path / "again") for i in range(3)}
    assert not (tmp_path / "again" / "mil-predictions").exists()  # the heatmaps of predict are reused, not redone
