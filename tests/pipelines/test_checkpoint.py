"""The one checkpoint format: round trip, kind checks, one-line errors for bad files, atomic writes under faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pipelines.training.checkpoint import (
    FORMAT,
    KINDS,
    VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def _tiny(kind: str = "classifier", epoch: int = 0, size: int = 4) -> Checkpoint:
    return Checkpoint(kind=kind, model="resnet18", state={"model": {"w": torch.arange(size, dtype=torch.float32)}},
                      classes=["a", "b"], model_kwargs={"k": 1}, task="subtype", config={"lr": 3e-4, "epochs": 2},
                      epoch=epoch, extra={"best": {"macro_f1": 0.5}})


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_and_the_file_is_plain_weights_only_data(tmp_path, kind):
    path = save_checkpoint(tmp_path / "best.pt", _tiny(kind, epoch=3))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["kind"] == kind
    back = load_checkpoint(path)
    assert back.kind == kind and back.epoch == 3 and back.classes == ["a", "b"] and back.model_kwargs == {"k": 1}
    assert back.config == {"lr": 3e-4, "epochs": 2} and back.extra == {"best": {"macro_f1": 0.5}}
    assert torch.equal(back.state["model"]["w"], torch.arange(4, dtype=torch.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left


def test_a_consumer_names_the_kinds_it_takes(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _tiny("mil"))
    with pytest.raises(CheckpointError, match=r"best.pt: a mil checkpoint; evaluate takes classifier or fusion"):
        load_checkpoint(path, ("classifier", "fusion"), purpose="evaluate")


def _write_bad(path, what: str) -> None:
    if what in ("truncated", "random"):
        save_checkpoint(path, _tiny(size=4096))
        good = path.read_bytes()
    if what == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif what == "random":
        path.write_bytes(os.urandom(len(good)))
    elif what == "text":
        path.write_text("epoch 3, loss 0.25\n")
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "old format":
        torch.save({"model": {"w": torch.zeros(2)}, "config": "{}", "classes": ["a"], "epoch": 0}, path)
    elif what == "old mil":
        torch.save({"model": {"w": torch.zeros(2)}, "classes": ["a"], "in_dim": 512, "config": "{}"}, path)
    elif what == "foreign dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif what == "a tensor":
        torch.save(torch.zeros(3), path)
    elif what == "newer":
        torch.save({"format": FORMAT, "version": VERSION + 1, "kind": "classifier"}, path)


@pytest.mark.parametrize("what, reason", [
    ("truncated", "not a readable torch checkpoint"), ("random", "not a readable torch checkpoint"),
    ("text", "not a readable torch checkpoint"), ("empty", "empty file"),
    ("old format", "written before the versioned checkpoint format.*histo-bench train"),
    ("old mil", "written before the versioned checkpoint format.*train --model abmil_gated"),
    ("foreign dict", "not a histo-bench checkpoint"), ("a tensor", "not a histo-bench checkpoint"),
    ("newer", "newer than this histo-bench understands"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, what, reason):
    path = tmp_path / "best.pt"
    _write_bad(path, what)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_failing_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _tiny(epoch=1))

    def half_then_fail(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="(?i)no space left"):
        save_checkpoint(path, _tiny(epoch=2))
    monkeypatch.undo()
    assert load_checkpoint(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


WRITER = textwrap.dedent("""
    import sys, torch
    from pipelines.training.checkpoint import Checkpoint, save_checkpoint
    path = sys.argv[1]
    big = torch.randn(4_000_000)  # 16 MB: each write takes a while
    for epoch in range(10**6):
        save_checkpoint(path, Checkpoint(kind="classifier", model="m", state={"model": {"w": big}}, epoch=epoch))
        print(epoch, flush=True)
""")


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.29])
def test_sigkill_during_writes_always_leaves_a_whole_checkpoint(tmp_path, delay):
    """Killed at some moment of a stream of 16 MB writes, the file under the final name is always whole: the last
    finished epoch (or the one before), never a truncated file."""
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # one write finished
    assert first.strip() == "0"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    printed, _ = proc.communicate(timeout=30)
    finished = [int(x) for x in [first, *printed.split()] if str(x).strip()]
    back = load_checkpoint(path)
    assert back.epoch in (finished[-1], finished[-1] + 1)  # the kill may land between rename and print
    assert back.state["model"]["w"].numel() == 4_000_000
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt" and not p.name.endswith(".tmp")]


def test_weights_that_do_not_fit_the_model_are_a_one_line_checkpoint_error():
    import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
    from models.registry import build_model

    good = build_model("tiny_cnn_test", 2).state_dict()
    wrong_head = {k: (torch.zeros(5, *v.shape[1:]) if v.ndim and v.shape[0] == 2 else v) for k, v in good.items()}
    assert Checkpoint(kind="classifier", model="tiny_cnn_test", state={"model": good}, classes=["a", "b"]).build()
    ckpt = Checkpoint(kind="classifier", model="tiny_cnn_test", state={"model": wrong_head}, classes=["a", "b"])
    with pytest.raises(CheckpointError, match="do not fit 'tiny_cnn_test': size mismatch") as info:
        ckpt.build()
    assert "\n" not in str(info.value)
