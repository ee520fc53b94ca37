"""What a training run decides before its first step: a new or resumed session, agreed once
between processes, what another process finds against rank 0's decision, and the generators."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seq2seq_attn.checkpoint import load_checkpoint
from seq2seq_attn.config import Config, config_from_plain
from seq2seq_attn.distributed import World
from seq2seq_attn.rundir import LOCK_FILE, RunDirError
from seq2seq_attn.session import (
    Answer,
    Decision,
    check_decision,
    check_resumable,
    comparable_config,
    open_session,
    read_shared_checkpoint,
    restore_rng,
    rng_state,
    seed_everything,
)
from seq2seq_attn.tokenizer import Tokenizer
from seq2seq_attn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(corpus: Path, dev: str = "dev", **train_section) -> Config:
    """A tiny Transformer on the corpus slice, fp32 on the CPU (``dev=""``: no dev split)."""
    return config_from_plain(
        {
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": str(corpus / dev) if dev else "", "test": "", "max_tokens": 256,
                     "max_length": 40, "cache_dir": str(corpus / "cache")},
            "tokenizer": {"vocab_size": 64},
            "model": {"family": "transformer", "max_positions": 64,
                      "transformer": {"d_model": 16, "num_heads": 2, "encoder_layers": 1,
                                      "decoder_layers": 1, "ff_size": 32}},
            "train": {"max_steps": 3, "validate_every": 0, "save_every": 0, "precision": "fp32",
                      "device": "cpu", **train_section},
        }
    )  # fmt: skip


def test_a_new_session_is_agreed_once_and_writes_the_run_files(corpus, tmp_path, monkeypatch):
    broadcasts, gathered = [], []
    broadcast, gather = World.broadcast, World.gather
    monkeypatch.setattr(World, "broadcast", lambda w, v: broadcasts.append(v) or broadcast(w, v))
    monkeypatch.setattr(World, "gather", lambda w, v: gathered.append(v) or gather(w, v))
    config, run_dir = tiny_config(corpus), tmp_path / "run"
    with open_session(config, run_dir, resume=False) as session:
        assert session.checkpoint is None and session.world.is_main
        assert (session.device.type, session.precision.name) == ("cpu", "fp32")
        assert session.dev is not None and len(session.dev.pairs) == 20
        assert len(session.train_data) > 0
        assert not any(run_dir.iterdir())  # nothing written before the run starts
        session.write_run_files()
        assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "src.model"}
        assert Tokenizer.load(run_dir).fingerprint == session.tokenizer.fingerprint
    # rank 0's decision goes out once, every process answers once
    assert [type(value) for value in broadcasts] == [Decision]
    assert broadcasts[0].config == comparable_config(config)
    assert [type(value) for value in gathered if not isinstance(value, str | None)] == [Answer]


def test_a_resumed_session_is_the_run_where_it_stopped(corpus, tmp_path):
    config, run_dir = tiny_config(corpus, dev=""), tmp_path / "run"
    train(config, run_dir)
    last = load_checkpoint(run_dir / "last.pt")
    with open_session(tiny_config(corpus, "", max_steps=5), run_dir, resume=True) as session:
        assert session.checkpoint["progress"]["step"] == last["progress"]["step"] == 3
        assert session.tokenizer.state_dict() == last["tokenizer"]
        assert session.dev is None
        assert "summary.json" in {p.name for p in run_dir.iterdir()}  # until the run starts
        session.write_run_files()
        assert "summary.json" not in {p.name for p in run_dir.iterdir()}  # the run goes on
    other = tiny_config(corpus, dev="")
    other.tokenizer.vocab_size = 72
    with (
        pytest.raises(RunDirError, match=r"different tokenizer section \(tokenizer\.vocab_size"),
        open_session(other, run_dir, resume=True),
    ):
        pass


def test_a_resume_that_fails_to_load_its_state_leaves_the_run_directory_as_it_was(corpus, tmp_path):
    own = tmp_path / "corpus"  # a corpus of its own, made shorter before the resume
    own.mkdir()
    for name in ("train.src", "train.tgt"):
        (own / name).write_bytes((corpus / name).read_bytes())
    config, run_dir = tiny_config(own, dev=""), tmp_path / "run"
    train(config, run_dir)
    before = run_files(run_dir)
    for name in ("train.src", "train.tgt"):
        lines = (own / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (own / name).write_text("".join(lines[:-10]), encoding="utf-8")
    with pytest.raises(RunDirError, match=r"training data changed since this checkpoint \(243"):
        train(tiny_config(own, dev="", max_steps=5), run_dir, resume=True)
    assert run_files(run_dir) == before


def run_files(run_dir: Path) -> dict[str, bytes]:
    """The run directory's files and their bytes, but the lock file (it says since when its
    holder holds it)."""
    return {
        p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != LOCK_FILE
    }


def test_resuming_allows_a_moved_cache_and_test_split_only(corpus, tmp_path):
    saved = tiny_config(corpus)
    moved = tiny_config(corpus)
    moved.data.cache_dir, moved.data.test, moved.data.num_workers = str(tmp_path), "elsewhere", 2
    check_resumable(saved, moved, tmp_path / "last.pt")
    moved.data.max_length = 41
    with pytest.raises(
        RunDirError, match=r"last\.pt: cannot resume with a different data section \(data\."
    ):
        check_resumable(saved, moved, tmp_path / "last.pt")


def test_another_process_finds_a_different_config(corpus, tmp_path):
    rank_one = World(rank=1, local_rank=0, world_size=2)
    config = tiny_config(corpus)
    decision = Decision(comparable_config(config), {})
    here = tiny_config(corpus)
    here.data.num_proc = 3  # machine-local: may differ
    assert check_decision(rank_one, here, decision, tmp_path, resume=False) == (None, None)
    here.train.accumulate_steps = 2
    checkpoint, error = check_decision(rank_one, here, decision, tmp_path, resume=False)
    assert checkpoint is None
    assert error == (
        f"rank 1 on {rank_one.host} has another config than rank 0 "
        "(config.train.accumulate_steps: 1 on rank 0, 2 here); start every machine with the same "
        "config file and --set options"
    )


def test_a_process_that_cannot_see_the_checkpoint_says_so(tmp_path):
    elsewhere = World(rank=1, local_rank=0, world_size=2)  # a second machine, no shared disk
    checkpoint, error = read_shared_checkpoint(elsewhere, tmp_path)
    assert checkpoint is None
    assert error.startswith(f"{tmp_path / 'last.pt'}: rank 1 on {elsewhere.host} cannot see")
    assert "filesystem every machine mounts at the same path" in error
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    checkpoint, error = read_shared_checkpoint(elsewhere, tmp_path)
    assert checkpoint is None and "truncated or corrupt checkpoint" in error


def draws() -> tuple[float, list[float]]:
    """One draw from Python's generator and three from torch's."""
    return random.random(), torch.rand(3).tolist()


def test_a_resume_restores_the_generators_of_the_same_rank():
    seed_everything(5)
    checkpoint = {"rng": rng_state(), "world_size": 1, "progress": {"step": 7}}
    expected = draws()
    restore_rng(checkpoint, World(), seed=0)
    assert draws() == expected
    # a rank the checkpoint has no state for draws from the seed, its rank and the step
    grown = World(rank=1, local_rank=1, world_size=2)
    restore_rng(checkpoint | {"sampler": {"epoch": 0}}, grown, seed=0)
    first = draws()
    restore_rng(checkpoint | {"sampler": {"epoch": 0}}, grown, seed=0)
    assert draws() == first != expected
