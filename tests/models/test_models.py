"""models/: every registered model trains a step on CPU, the MIL / MPCS / fusion maths, and offline weight loading.

Nothing here touches the network: pretrained weights are only ever asked of a monkeypatched, offline timm.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from models.mil import AttentionMIL, feature_extractor
from models.mpcs import FIXED_PAIR, MAGNIFICATIONS, classifier_from_mpcs, nt_xent, sample_pair
from models.registry import MODELS, build_model, model_table
from models.weights import WeightsError, load_weights

FIXED_224 = {"deit_small", "swin_tiny"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two OpenMP threads spin-wait on each other
    and small ops run ~100x slower (this file: ~25 s with one thread, ~90 s with two on a busy CI box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def example_input(name: str) -> torch.Tensor:
    """A batch of 2 for the model registered as ``name``: as small as its architecture allows."""
    spec = MODELS.get(name)
    side = 224 if name in FIXED_224 else 32
    if spec.input_kind == "image":
        return torch.randn(2, 3, side, side)
    if spec.input_kind == "multi_image":
        return torch.randn(2, 3, 3, side, side)
    return torch.randn(2, 5, 2048)


#: the project's models; test-only ``*_test`` models (tests/pipelines/tiny_models.py, registered when other test
#: modules are collected first) are exercised by the tests that use them
PROJECT_MODELS = [n for n in MODELS.names() if not n.endswith("_test")]


@pytest.mark.parametrize("name", PROJECT_MODELS)
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    spec = MODELS.get(name)
    model = build_model(name, num_classes=3).train()
    out = model(example_input(name))
    if spec.family == "mil":
        out, attention = out
        assert attention.shape == (2, 5)
    expected = (2, 128) if spec.family == "mpcs" else (2, 3)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:1] + grads[-1:])
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_model_table_lists_every_model() -> None:
    rows = model_table()
    assert [r["name"] for r in rows] == MODELS.names()
    assert all(r["params"] > 0 for r in rows)
    assert {r["family"] for r in rows} == {"classifier", "fusion", "mil", "mpcs"}
    by_name = {r["name"]: r["params"] for r in rows}
    assert 20e6 < by_name["resnet50"] < 26e6 and by_name["abmil_gated"] > by_name["abmil"]


def test_unknown_model_lists_names() -> None:
    with pytest.raises(KeyError, match="swin_tiny") as info:
        build_model("no_such_model", 2)
    assert "abmil" in str(info.value) and "no_such_model" in str(info.value)


# --- attention MIL ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abmil", "abmil_gated"])
def test_mil_attention_sums_to_one_and_ignores_padding(name: str) -> None:
    model = build_model(name, 2, feature_extractor="resnet34").eval()
    bags = torch.randn(3, 6, 512)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    logits, attention = model(bags, mask)
    assert logits.shape == (3, 2) and attention.shape == (3, 6)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))
    assert (attention[~mask] == 0).all() and attention[2, 0] == 1
    # padding must not change the prediction: bag 0 alone, without its padded tiles, gives the same output
    alone, alone_attention = model(bags[0, :4])
    torch.testing.assert_close(alone, logits[:1])
    torch.testing.assert_close(alone_attention[0], attention[0, :4])
    with pytest.raises(ValueError, match="unmasked"):
        model(bags, torch.zeros(3, 6, dtype=torch.bool))


def test_mil_feature_dims() -> None:
    assert build_model("abmil", 2, feature_extractor="vit_small").embed[0].in_features == 384
    assert build_model("abmil", 2).embed[0].in_features == 2048
    with pytest.raises(KeyError, match="resnet50"):
        build_model("abmil", 2, feature_extractor="vgg")
    extractor, dim = feature_extractor("resnet34")
    assert dim == 512 and extractor(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_mil_learns_a_single_signal_tile() -> None:
    """Positive bags hide one tile carrying a signal among noise tiles; the model must find it."""
    torch.manual_seed(0)
    n_bags, n_tiles, dim = 48, 10, 16
    bags = torch.randn(n_bags, n_tiles, dim)
    labels = torch.arange(n_bags) % 2
    where = torch.randint(0, n_tiles, (n_bags,))
    signal = torch.zeros(dim)
    signal[:4] = 3.0
    for i in range(n_bags):
        if labels[i]:
            bags[i, where[i]] += signal
    model = AttentionMIL(dim, 2, hidden_dim=32, attn_dim=16, dropout=0.0, gated=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        logits, _ = model(bags)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        logits, attention = model(bags)
    assert (logits.argmax(1) == labels).float().mean() >= 0.95
    positive = labels.bool()
    on_signal = attention[positive, :].gather(1, where[positive, None]).squeeze(1)
    assert on_signal.mean() > 0.5  # uniform attention would be 0.1


# --- fusion -------------------------------------------------------------------------------------------------------


def test_fusion_inputs_and_attention() -> None:
    model = build_model("fusion_effnet_b0", 4, n_inputs=4).eval()
    logits, weights = model(torch.randn(2, 2, 3, 64, 64), return_attention=True)
    assert logits.shape == (2, 4) and weights.shape == (2, 2, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2))
    assert model(torch.randn(1, 1, 3, 64, 64), mag_index=torch.tensor([3])).shape == (1, 4)
    with pytest.raises(ValueError, match="1..2"):
        build_model("fusion_effnet_b0", 4, n_inputs=2)(torch.randn(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="n_inputs"):
        build_model("fusion_effnet_b0", 4, n_inputs=5)


# --- MPCS ---------------------------------------------------------------------------------------------------------


def test_nt_xent_matches_hand_computation() -> None:
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    z = [v / v.norm() for v in torch.cat([z1, z2])]
    total = 0.0
    for i in range(4):
        positive = (i + 2) % 4
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(4) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / denominator)
    assert nt_xent(z1, z2, temperature=t).item() == pytest.approx(total / 4, rel=1e-5)


def test_nt_xent_lower_for_aligned_pairs() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(16, 128)
    aligned = nt_xent(z1, z1 + 0.05 * torch.randn(16, 128))
    unrelated = nt_xent(z1, torch.randn(16, 128))
    assert aligned < unrelated - 1.0
    assert aligned.item() >= 0


def test_sample_pair_strategies() -> None:
    rng = random.Random(0)
    ordered = {sample_pair(MAGNIFICATIONS, "ordered", rng) for _ in range(200)}
    assert ordered == {("40X", "100X"), ("100X", "200X"), ("200X", "400X")}
    assert {sample_pair(["400X", "40X", "200X"], "ordered", rng) for _ in range(100)} == {
        ("40X", "200X"), ("200X", "400X")}
    assert {sample_pair(MAGNIFICATIONS, "fixed", rng) for _ in range(20)} == {FIXED_PAIR} == {("200X", "400X")}
    generator = np.random.default_rng(0)
    randomly = [sample_pair(MAGNIFICATIONS, "random", generator) for _ in range(400)]
    assert all(a != b for a, b in randomly)
    assert len(set(randomly)) == 12  # every ordered pair of distinct magnifications occurs
    assert sample_pair(["100X", "40X"], "random") in {("40X", "100X"), ("100X", "40X")}  # default rng
    with pytest.raises(ValueError, match="fixed pair"):
        sample_pair(["40X", "100X"], "fixed", rng)
    with pytest.raises(ValueError, match="two distinct"):
        sample_pair(["40X"], "random", rng)
    with pytest.raises(ValueError, match="ordered, fixed, random"):
        sample_pair(MAGNIFICATIONS, "best", rng)


def test_classifier_from_mpcs_frozen_encoder() -> None:
    mpcs = build_model("mpcs_efficientnet_b0", 0)
    classifier = classifier_from_mpcs(mpcs, 3, freeze_encoder=True).train()
    assert classifier.encoder is mpcs.encoder and not classifier.encoder.training
    assert not any(p.requires_grad for p in classifier.encoder.parameters())
    out = classifier(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in classifier.head.parameters())
    trainable = classifier_from_mpcs(build_model("mpcs_efficientnet_b0", 0), 3).train()
    assert trainable.encoder.training and all(p.requires_grad for p in trainable.encoder.parameters())


# --- weights ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_weights_round_trip(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", 3).eval()
    state = model.state_dict()
    if fmt == "torch":
        path = tmp_path / "model.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(1)
    restored = build_model("efficientnet_b0", 3, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


def test_weights_head_mismatch_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = build_model("efficientnet_b0", 3)
    path = tmp_path / "three_classes.pt"
    torch.save({"model": source.state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="models.weights"):
        target = build_model("efficientnet_b0", 5, weights=path)
    assert "classifier.weight" in caplog.text and "classifier.bias" in caplog.text
    torch.testing.assert_close(target.conv_stem.weight, source.conv_stem.weight)
    assert target.classifier.weight.shape == (5, 1280)


def test_backbone_file_loads_into_wrapper_models(tmp_path: Path) -> None:
    encoder = build_model("efficientnet_b0", 3)
    path = tmp_path / "efficientnet_b0.pt"
    torch.save(encoder.state_dict(), path)
    fusion = build_model("fusion_effnet_b0", 2, weights=path)
    torch.testing.assert_close(fusion.encoder.conv_stem.weight, encoder.conv_stem.weight)
    # and a whole fusion model restores into a fresh one
    torch.save(fusion.state_dict(), tmp_path / "fusion.pt")
    fresh = load_weights(build_model("fusion_effnet_b0", 2), tmp_path / "fusion.pt")
    x = torch.randn(1, 2, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(x), fusion.eval()(x), rtol=0, atol=0)


def test_weights_errors_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="garbage.pt"):
        build_model("efficientnet_b0", 2, weights=garbage)
    bad_safetensors = tmp_path / "garbage.safetensors"
    bad_safetensors.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        build_model("efficientnet_b0", 2, weights=bad_safetensors)
    foreign = tmp_path / "foreign.pt"
    torch.save({"unrelated.weight": torch.zeros(7, 7)}, foreign)
    with pytest.raises(WeightsError, match="foreign.pt"):
        build_model("efficientnet_b0", 2, weights=foreign)
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("efficientnet_b0", 2, weights=tmp_path / "missing.safetensors")


def test_pretrained_offline_says_pass_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    real_create = timm.create_model

    def offline_create(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we "
                                          "cannot find the requested files in the local cache.")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm, "create_model", offline_create)
    for name in ("resnet50", "fusion_effnet_b0", "mpcs_efficientnet_b0"):
        with pytest.raises(WeightsError, match="--weights PATH") as info:
            build_model(name, 2, pretrained=True)
        assert "\n" not in str(info.value)
