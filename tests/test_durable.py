"""Every writer publishes through mullama.durable: content flushed before the rename that makes it
visible, the folder flushed after, so a crash or power cut never leaves a half file under a final name.
The final adapter of a training run is written like the checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mullama import durable
from mullama.encoder_identity import EncoderIdentity
from mullama.model.checkpoint import read_manifest
from mullama.model.music_llama import MusicLlama
from mullama.train.state import Position, save_checkpoint

ENCODER = EncoderIdentity("tiny-mert", "c" * 64, "w" * 64, 24000, hidden_states=4, hidden_size=32)


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, str]]:
    """('fsync', path) and ('rename', final path) in the order they happen."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace = durable.flush, os.replace

    def fsync(path):
        log.append(("fsync", os.path.abspath(path)))
        real_fsync(path)

    def replace(source, target):
        log.append(("rename", os.path.abspath(target)))
        real_replace(source, target)

    monkeypatch.setattr(durable, "flush", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def assert_published(log: list[tuple[str, str]], final: Path) -> None:
    """`final` appeared by one rename, after its content was flushed and before its folder was."""
    final = final.resolve()
    position = log.index(("rename", str(final)))
    flushed_before = [path for kind, path in log[:position] if kind == "fsync"]
    assert any(Path(path).name.startswith(f".{final.name}") or final.name in Path(path).name
               for path in flushed_before), (final, log[:position])
    assert ("fsync", str(final.parent)) in log[position + 1:], (final, log[position:])


def test_the_final_adapter_is_published_durably(tmp_path, tiny_llama, events):
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu")
    folder = model.save(tmp_path / "run" / "adapter")
    assert_published(events, folder / "adapter.safetensors")
    assert_published(events, folder / "adapter.json")
    renames = [path for kind, path in events if kind == "rename"]
    assert renames == [str((folder / "adapter.safetensors").resolve()), str((folder / "adapter.json").resolve())]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]  # no temp left


def test_a_crash_while_saving_leaves_the_previous_adapter_whole(tmp_path, tiny_llama, monkeypatch):
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu")
    folder = model.save(tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mullama.model.checkpoint.save_file", crash)
    with torch.no_grad():
        model.model.music_adapter.gates.add_(1.0)
    with pytest.raises(OSError):
        model.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == before
    assert read_manifest(folder).config == model.config


def test_checkpoints_are_published_durably(tmp_path, events):
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    final = save_checkpoint(tmp_path, Position(step=3), {"w": parameter}, optimizer, scheduler, scaler, {}, keep=2)
    position = events.index(("rename", str(final.resolve())))
    flushed = {Path(path).name for kind, path in events[:position] if kind == "fsync"}
    assert {"trainable.safetensors", "optimizer.safetensors", "state.json"} <= flushed
    assert ("fsync", str(final.parent.resolve())) in events[position + 1:]


def test_write_atomic_flushes_then_renames(tmp_path, events):
    target = tmp_path / "sub" / "record.json"
    durable.write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert_published(events, target)
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]
