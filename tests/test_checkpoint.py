"""Checkpoint files: atomic, plain-data only, and refused when tampered with or damaged."""

from __future__ import annotations

import copy
import errno
import io
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from test_startup import tiny_config

from seq2seq_attn import fileio
from seq2seq_attn.checkpoint import (
    PROGRESS_KEYS,
    CheckpointError,
    check_model_fields,
    check_training_checkpoint,
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    recent_checkpoints,
    save_checkpoint,
)
from seq2seq_attn.config import ConfigError
from seq2seq_attn.rundir import step_checkpoint
from seq2seq_attn.tokenizer import Tokenizer
from seq2seq_attn.train import train


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


# ---- fields checked before use -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory, one_thread) -> Path:
    """``last.pt`` of a two-step run of a tiny Transformer on the toy corpus slice."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(corpus, steps=2), run)
    return run / "last.pt"


def test_a_training_checkpoint_passes_the_checks_of_a_resume(trained):
    state = load_checkpoint(trained)
    check_training_checkpoint(state, trained)
    check_model_fields(state, trained)
    assert set(state["progress"]) == set(PROGRESS_KEYS)


def set_field(state: dict, dotted: str, value: object) -> None:
    """``state[a][b]... = value`` for ``dotted`` = ``a.b...`` (a missing ``value``: delete)."""
    *parents, key = dotted.split(".")
    for parent in parents:
        state = state[parent]
    if value is MISSING:
        del state[key]
    else:
        state[key] = value


MISSING = object()
BROKEN_FIELDS = [
    ("tokenizer", {"src_model": 10**12}, r"field tokenizer\.src_model holds 1000000000000, "),
    ("tokenizer.tgt_model", 10**12, r"field tokenizer\.tgt_model holds 1000000000000, expected"),
    ("tokenizer.tgt_model", "joint", r"field tokenizer\.tgt_model holds the str 'joint'"),
    ("tokenizer", "abc", r"field tokenizer holds the str 'abc', expected a mapping"),
    ("tokenizer", [1, 2], r"field tokenizer holds a list of length 2, expected a mapping"),
    ("tokenizer.src_model", b"", r"field tokenizer\.src_model holds a bytes of length 0"),
    ("config", None, r"field config holds None, expected a mapping"),
    ("model", {"weight": 3}, r"field model\['weight'\] holds 3, expected a tensor"),
    ("progress", MISSING, r": no field progress; "),
    ("progress.step", MISSING, r"field progress has no key 'step'"),
    ("progress.step", -1, r"field progress\.step holds -1, expected an int >= 0"),
    ("progress.step", 2**70, r"field progress\.step holds an int of 71 bits"),
    ("progress.step", "7", r"field progress\.step holds the str '7', expected an int"),
    ("progress.elapsed", float("nan"), r"field progress\.elapsed holds nan, expected a number"),
    ("progress.best_bleu", "high", r"field progress\.best_bleu holds the str 'high', expected a "
                                   r"number >= 0 or None"),
    ("progress.speed", 1.0, r"field progress has the unknown key the str 'speed' \(known: step,"),
    ("sampler.position", 2.5, r"field sampler\.position holds 2\.5, expected an int >= 0"),
    ("sampler.epoch", True, r"field sampler\.epoch holds True, expected an int"),
    ("optimizer.param_groups", [], r"field optimizer\.param_groups holds a list of length 0"),
    ("optimizer.state", [], r"field optimizer\.state holds a list of length 0, expected a mapp"),
    ("schedule.scale", float("inf"), r"field schedule\.scale holds inf, expected a number > 0"),
    ("schedule.best", "x", r"field schedule\.best holds the str 'x', expected a number or None"),
    ("scaler", None, r"field scaler holds None, expected a mapping"),
    ("nonfinite_in_a_row", -2, r"field nonfinite_in_a_row holds -2, expected an int >= 0"),
    ("rng.python", [3, [0] * 3, None], r"field rng\.python holds a list of length 3, expected "
                                       r"\[version, 625 32-bit words, gauss\]"),
    ("rng.torch", torch.zeros(3), r"field rng\.torch holds a torch\.float32 tensor of shape \(3"),
    ("world_size", 0, r"field world_size holds 0, expected an int >= 1"),
    ("rng_per_rank", [], r"field rng_per_rank holds a list of length 0, expected a list of worl"),
    ("origin", {"checkpoint": 5, "step": None, "tokenizer": {}},
     r"field origin\.checkpoint holds 5, expected a path"),
    ("origin", {"path": "x"}, r"field origin has the unknown key the str 'path'"),
    ("training_weights", {"w": 3}, r"field training_weights\['w'\] holds 3, expected a tensor"),
    ("training_weights", {}, r": no field ema_updates; "),  # the average's update count
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "message"), BROKEN_FIELDS, ids=lambda x: str(x)[:30])
def test_a_broken_field_is_named_before_a_resume_uses_it(trained, field, value, message):
    state = load_checkpoint(trained)
    set_field(state, field, value)
    with pytest.raises(CheckpointError) as error:
        check_training_checkpoint(state, trained)
    text = str(error.value)
    assert re.search(message, text), text
    assert text.startswith(f"{trained}: ") and text.endswith("or start a new run")


def test_model_from_checkpoint_checks_fields_before_use(trained, tmp_path):
    state = load_checkpoint(trained)
    tokenizer = model_from_checkpoint(state, trained)[1]
    huge = state | {"tokenizer": {"src_model": tokenizer.src_model, "tgt_model": 10**12}}
    with pytest.raises(CheckpointError, match=r"field tokenizer\.tgt_model holds 1000000000000"):
        model_from_checkpoint(huge, trained)  # never bytes(10**12): a terabyte of zeros
    garbage = state | {"tokenizer": {"src_model": b"not a SentencePiece model"}}
    with pytest.raises(CheckpointError, match=r"last\.pt: field tokenizer: .*another checkpoint"):
        model_from_checkpoint(garbage, trained)
    weights = dict(state["model"])
    name = next(iter(weights))
    misshapen = state | {"model": weights | {name: torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"last\.pt: field model does not fit the model its "
                                              r"config describes \(.*size mismatch"):  # fmt: skip
        model_from_checkpoint(misshapen, trained)
    infinite = copy.deepcopy(state["config"])
    infinite["train"]["lr"] = float("inf")
    its_config = re.escape(f"{trained} (its config): train.lr: invalid value inf")
    with pytest.raises(ConfigError, match=f"^{its_config}"):
        model_from_checkpoint(state | {"config": infinite}, trained)
    save_checkpoint({"progress": {"step": "x"}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: field progress\.step holds the str 'x'"):
        recent_checkpoints(tmp_path, 2)


def test_tokenizer_state_refuses_anything_but_model_bytes(trained):
    tokenizer = load_checkpoint(trained)["tokenizer"]
    with pytest.raises(ValueError, match=r"'tgt_model' holds a int, expected the bytes or None"):
        Tokenizer.from_state_dict(tokenizer | {"tgt_model": 10**12})
    with pytest.raises(ValueError, match=r"'tgt_model' holds a list, expected the bytes or None"):
        Tokenizer.from_state_dict(tokenizer | {"tgt_model": [1, 2]})
    with pytest.raises(ValueError, match=r"tokenizer state is a str, not a mapping"):
        Tokenizer.from_state_dict("src_model")
    assert Tokenizer.from_state_dict(tokenizer).joint


class FullDisk(io.RawIOBase):
    """A file that fills up after ``room`` bytes, as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return len(data)


def test_a_full_disk_during_a_save_is_an_os_error_not_torchs_runtime_error(tmp_path, monkeypatch):
    def full_disk_file(descriptor, mode):
        os.close(descriptor)
        return io.BufferedWriter(FullDisk(room=200))

    monkeypatch.setattr(fileio.os, "fdopen", full_disk_file)
    with pytest.raises(OSError, match="No space left on device"):  # torch says RuntimeError
        save_checkpoint({"model": {"weight": torch.zeros(1000)}}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []  # the temporary is gone
