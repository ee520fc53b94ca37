"""Checkpoint files: atomic, plain-data only, and refused when tampered with or damaged."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from seq2seq_attn.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    recent_checkpoints,
    save_checkpoint,
)
from seq2seq_attn.rundir import step_checkpoint


def sample_state() -> dict:
    """A state with tensors and nested plain data, like a training checkpoint."""
    return {
        "model": {"weight": torch.arange(6.0).view(2, 3), "bias": torch.zeros(3)},
        "step": 7,
        "rng": [1, 2.5, None, True],
        "config": {"model": {"family": "transformer"}},
        "tokenizer": {"src_model": b"\x00\x01", "tgt_model": None},
    }


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(sample_state(), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], torch.arange(6.0).view(2, 3))
    assert loaded["rng"] == [1, 2.5, None, True] and loaded["step"] == 7
    assert loaded["tokenizer"] == {"src_model": b"\x00\x01", "tgt_model": None}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind


class Payload:
    """Runs a command when unpickled: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_tampered_checkpoint_is_refused_not_executed(tmp_path, writer):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    state = {"model": {}, "extra": Payload(marker)}
    if writer == "torch":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    message = r"evil\.pt: refused: the file contains pickled Python objects \(posix\.system\)"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_reported_by_name(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint",
                      "empty": b""}[damage])  # fmt: skip
    with pytest.raises(CheckpointError, match=r"last\.pt: truncated or corrupt checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_non_plain_state_is_rejected_before_anything_is_written(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(), path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"checkpoint\['optimizer'\]\['ids'\] holds a set"):
        save_checkpoint({"optimizer": {"ids": {1, 2}}}, path)
    assert path.read_bytes() == before


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(), path)
    before = path.read_bytes()

    def crash(obj, handle):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt  # e.g. a second Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 8}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_recent_checkpoints_are_those_up_to_last_pt(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20):
        save_checkpoint({"progress": {"step": step}}, step_checkpoint(run, step))
    save_checkpoint({"progress": {"step": 20}}, run / "last.pt")
    assert recent_checkpoints(run, 4) == {
        10: run / "step-00000010.pt",
        20: run / "step-00000020.pt",
    }
    assert recent_checkpoints(run, 1) == {20: run / "step-00000020.pt"}
    (run / "step-00000020.pt").rename(run / "step-00000030.pt")  # newer than last.pt: a kill
    assert recent_checkpoints(run, 4) == {10: run / "step-00000010.pt", 20: run / "last.pt"}


def test_a_run_directory_means_its_best_checkpoint_else_its_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"a directory without best\.pt or last\.pt"):
        find_checkpoint(run)
    save_checkpoint(sample_state(), run / "last.pt")
    assert find_checkpoint(run) == run / "last.pt"
    save_checkpoint(sample_state(), run / "best.pt")
    assert find_checkpoint(run) == run / "best.pt"
    assert find_checkpoint(run / "last.pt") == run / "last.pt"
