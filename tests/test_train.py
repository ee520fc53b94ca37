"""The training loop on a small slice of the toy corpus: run directory, checkpoints, exact resume,
seeded determinism, the stop flag, early stopping and NaN/inf handling."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from seq2seq_attn.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from seq2seq_attn.config import Config, config_from_plain, load_config
from seq2seq_attn.data import load_split
from seq2seq_attn.evaluate import search_options, translate
from seq2seq_attn.optim import NonFiniteLossError
from seq2seq_attn.tokenizer import Tokenizer
from seq2seq_attn.train import (
    RunDirError,
    RunInfo,
    StepReport,
    TrainCallback,
    TrainSummary,
    ValidationReport,
    train,
    trim_metrics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_config(corpus: Path, family: str = "transformer", **train) -> Config:
    """A tiny model on the corpus slice; ``train`` overrides the train section."""
    model = {
        "transformer": {"d_model": 32, "num_heads": 4, "encoder_layers": 1, "decoder_layers": 1,
                        "ff_size": 64},
        "rnn": {"embedding_size": 16, "hidden_size": 32, "attention_size": 16},
    }  # fmt: skip
    train_section = {
        "max_steps": 20, "validate_every": 10, "save_every": 10, "keep_last": 2, "log_every": 5,
        "warmup_steps": 5, "lr": 3e-3, "precision": "fp32", "device": "cpu",
    }  # fmt: skip
    return config_from_plain(
        {
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": str(corpus / "dev"), "test": "", "max_tokens": 256,
                     "max_length": 40, "cache_dir": str(corpus / "cache")},
            "tokenizer": {"vocab_size": 64},
            "model": {"family": family, "max_positions": 64, **model},
            "train": train_section | train,
            "decode": {"max_length_offset": 3},
        }
    )  # fmt: skip


class Recorder(TrainCallback):
    """Keeps every report; sets ``stop`` after step ``stop_at``."""

    def __init__(self, stop: threading.Event | None = None, stop_at: int = 0) -> None:
        self.info: RunInfo | None = None
        self.checkpoints: list[str] = []
        self.summary: TrainSummary | None = None
        self.steps: list[StepReport] = []
        self.validations: list[ValidationReport] = []
        self.stop, self.stop_at = stop, stop_at

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)
        if self.stop is not None and report.step == self.stop_at:
            self.stop.set()

    def on_start(self, info: RunInfo) -> None:
        self.info = info

    def on_validation(self, report: ValidationReport) -> None:
        self.validations.append(report)

    def on_checkpoint(self, path: Path) -> None:
        self.checkpoints.append(path.name)

    def on_end(self, summary: TrainSummary) -> None:
        self.summary = summary


def parameters(path: Path) -> dict[str, torch.Tensor]:
    """The model weights stored in a checkpoint."""
    return load_checkpoint(path)["model"]


def test_a_run_writes_a_complete_run_directory(corpus, tmp_path):
    config = toy_config(corpus)
    recorder = Recorder()
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    run = tmp_path / "run"
    assert (summary.step, summary.reason) == (20, "max_steps")
    assert {p.name for p in run.iterdir()} == {
        "config.yaml", "src.model", "metrics.jsonl", "last.pt", "best.pt",
        "step-00000010.pt", "step-00000020.pt",
    }  # fmt: skip
    assert load_config(run / "config.yaml") == config
    state = load_checkpoint(run / "last.pt")
    assert config_from_plain(state["config"]) == config
    assert Tokenizer.from_state_dict(state["tokenizer"]).fingerprint == (
        Tokenizer.load(run).fingerprint
    )
    assert state["progress"]["step"] == 20 and state["sampler"]["position"] > 0
    assert recorder.summary == summary
    assert (recorder.info.start_step, recorder.info.max_steps, recorder.info.device) == (
        0,
        20,
        "cpu",
    )
    assert recorder.info.steps_per_epoch > 0 and recorder.info.num_parameters > 0
    assert recorder.checkpoints[0] == "best.pt"  # the first validation is the best so far
    assert [name for name in recorder.checkpoints if name != "best.pt"] == [
        "step-00000010.pt", "last.pt", "step-00000020.pt", "last.pt"
    ]  # fmt: skip
    assert [r.step for r in recorder.steps] == list(range(1, 21))
    assert all(math.isfinite(r.loss) and r.tokens > 0 for r in recorder.steps)
    assert recorder.steps[-1].loss < recorder.steps[0].loss
    assert [v.step for v in recorder.validations] == [10, 20]
    assert set(recorder.validations[0].scores) == {"bleu", "chrf"}
    assert len(recorder.validations[0].samples) == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records if r["kind"] == "valid"] == [
        ("valid", 10), ("valid", 20)
    ]  # fmt: skip
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]


def test_a_non_empty_run_directory_is_refused(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"not empty \(notes\.txt\); pass --resume"):
        train(toy_config(corpus), run)
    with pytest.raises(RunDirError, match=r"last\.pt: nothing to resume"):
        train(toy_config(corpus), run, resume=True)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_same_seed_same_losses(corpus, tmp_path, family):
    runs = [Recorder(), Recorder()]
    for index, recorder in enumerate(runs):
        train(toy_config(corpus, family, max_steps=8), tmp_path / str(index), callbacks=[recorder])
    assert [r.loss for r in runs[0].steps] == [r.loss for r in runs[1].steps]
    other = Recorder()
    train(toy_config(corpus, family, max_steps=8, seed=7), tmp_path / "other", callbacks=[other])
    assert [r.loss for r in other.steps] != [r.loss for r in runs[0].steps]


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(corpus, tmp_path):
    # accumulation, saves, validation and an epoch boundary all happen around the interruption
    config = toy_config(corpus, max_steps=24, accumulate_steps=2, save_every=4, validate_every=5)
    whole = Recorder()
    train(config, tmp_path / "whole", callbacks=[whole])
    stop = threading.Event()
    first = Recorder(stop, stop_at=11)
    summary = train(config, tmp_path / "parts", callbacks=[first], stop=stop)
    assert (summary.step, summary.reason) == (11, "stopped")
    second = Recorder()
    resumed = train(config, tmp_path / "parts", resume=True, callbacks=[second])
    assert (resumed.step, resumed.reason) == (24, "max_steps")
    assert resumed.epoch >= 1  # the run crossed an epoch boundary
    assert [r.loss for r in first.steps + second.steps] == [r.loss for r in whole.steps]
    expected, actual = (
        parameters(tmp_path / "whole" / "last.pt"),
        parameters(resumed.last_checkpoint),
    )
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    lines = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [
        json.loads(line)["step"]
        for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]


def test_resume_refuses_another_model(corpus, tmp_path):
    train(toy_config(corpus, max_steps=2, validate_every=0), tmp_path / "run")
    changed = toy_config(corpus, max_steps=4)
    changed.model.dropout = 0.3
    with pytest.raises(RunDirError, match=r"different model section \(model\.dropout: 0\.1 in"):
        train(changed, tmp_path / "run", resume=True)


def test_limits_and_early_stopping(corpus, tmp_path):
    summary = train(toy_config(corpus, max_steps=None, max_epochs=1), tmp_path / "epochs")
    assert (summary.reason, summary.epoch) == ("max_epochs", 1)
    # one epoch trains on every target token once (EOS included): the throughput counter
    progress = load_checkpoint(tmp_path / "epochs" / "last.pt")["progress"]
    config = toy_config(corpus)
    kept, _ = load_split(config.data, "train", Tokenizer.load(tmp_path / "epochs"))
    assert progress["target_tokens"] == sum(len(ids) + 1 for ids in kept["tgt_ids"])
    assert 0 < progress["step_seconds"] < progress["elapsed"]
    # an untrained tiny model scores BLEU 0 twice: no improvement after the first validation
    stopped = train(
        toy_config(corpus, max_steps=50, validate_every=3, early_stopping_patience=1),
        tmp_path / "early",
    )
    assert (stopped.reason, stopped.step, stopped.best_step) == ("early_stopping", 6, 3)
    assert stopped.best_checkpoint == tmp_path / "early" / "best.pt"


def test_repeated_nonfinite_losses_stop_the_run(corpus, tmp_path):
    train(toy_config(corpus, max_steps=3, validate_every=0), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    next(iter(state["model"].values())).view(-1)[0] = math.nan  # every later loss is NaN
    save_checkpoint(state, tmp_path / "run" / "last.pt")
    config = toy_config(corpus, max_steps=20, max_nonfinite_in_a_row=2)
    with pytest.raises(NonFiniteLossError, match=r"step 5: .*NaN/inf in 2 steps in a row"):
        train(config, tmp_path / "run", resume=True)
    progress = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]
    assert (progress["step"], progress["nonfinite_total"]) == (5, 2)


def test_best_checkpoint_alone_rebuilds_the_validated_model(corpus, tmp_path):
    recorder = Recorder()
    config = toy_config(corpus, max_steps=20, validate_every=10, lr=1e-2)
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    best = next(v for v in recorder.validations if v.step == summary.best_step)
    model, tokenizer, restored = model_from_checkpoint(load_checkpoint(summary.best_checkpoint))
    assert restored == config and not model.training
    sources = [src for src, _, _ in best.samples]
    options = search_options(config.decode, beam_size=1)
    outputs = translate(model, tokenizer, sources, options, 256, "cpu")
    assert tokenizer.decode_tgt([h.tokens for h in outputs]) == [h for _, _, h in best.samples]
    with pytest.raises(CheckpointError, match=r"x\.pt: not a seq2seq-attn training checkpoint"):
        model_from_checkpoint({"model": {}}, "x.pt")


def test_bf16_autocast_trains_on_the_cpu(corpus, tmp_path):
    recorder = Recorder()
    train(toy_config(corpus, max_steps=4, precision="bf16", validate_every=2), tmp_path / "run",
          callbacks=[recorder])  # fmt: skip
    assert all(math.isfinite(r.loss) for r in recorder.steps)
    assert recorder.steps[-1].loss < recorder.steps[0].loss
    assert all(math.isfinite(v.loss) for v in recorder.validations)


def test_trim_metrics_drops_later_and_unfinished_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"kind": "train", "step": 5}', '{"kind": "valid", "step": 10}', '{"step": 15}']
    path.write_text("\n".join(lines) + '\n{"kind": "tra', encoding="utf-8")
    trim_metrics(path, 10)
    assert path.read_text(encoding="utf-8").splitlines() == lines[:2]


def test_resume_accepts_a_moved_cache(corpus, tmp_path):
    train(toy_config(corpus, max_steps=2, validate_every=0), tmp_path / "run")
    moved = toy_config(corpus, max_steps=3, validate_every=0)
    moved.data.cache_dir = str(tmp_path / "cache")
    assert train(moved, tmp_path / "run", resume=True).step == 3


def test_averaged_checkpoints_hold_the_mean_weights_and_translate(corpus, tmp_path):
    train(toy_config(corpus), tmp_path / "run")
    paths = [tmp_path / "run" / f"step-{step:08d}.pt" for step in (10, 20)]
    averaged = average_checkpoints(paths)
    first, second = (load_checkpoint(path)["model"] for path in paths)
    assert averaged["averaged_from"] == [str(path) for path in paths]
    assert averaged["model"].keys() == first.keys()
    for name, weight in averaged["model"].items():
        torch.testing.assert_close(weight, (first[name] + second[name]) / 2)
    assert any(not torch.equal(weight, first[name]) for name, weight in averaged["model"].items())
    save_checkpoint(averaged, tmp_path / "averaged.pt")
    model, tokenizer, config = model_from_checkpoint(load_checkpoint(tmp_path / "averaged.pt"))
    found = translate(model, tokenizer, ["ta zo li"], search_options(config.decode), 256, "cpu")
    assert len(found) == 1
    train(toy_config(corpus, "rnn"), tmp_path / "rnn")
    with pytest.raises(CheckpointError, match="another model or tokenizer"):
        average_checkpoints([tmp_path / "rnn" / "last.pt", paths[1]])
    damaged = load_checkpoint(paths[0])
    damaged["model"].popitem()
    save_checkpoint(damaged, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=r"damaged\.pt: its weights differ in names"):
        average_checkpoints([tmp_path / "damaged.pt", paths[1]])
