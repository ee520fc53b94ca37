"""The training loop on a small slice of the toy corpus: run directory (and reading it back),
checkpoints, exact resume, seeded determinism, the stop flag, early stopping, NaN/inf handling."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path

import pytest
import torch

import seq2seq_attn.train
from seq2seq_attn.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from seq2seq_attn.config import Config, config_from_plain, load_config
from seq2seq_attn.data import load_split
from seq2seq_attn.evaluate import Evaluation
from seq2seq_attn.events import RunInfo, StepReport, TrainCallback, TrainSummary, ValidationReport
from seq2seq_attn.metrics import Score
from seq2seq_attn.optim import NonFiniteLossError
from seq2seq_attn.rundir import RunDirError, read_metrics, read_summary
from seq2seq_attn.tokenizer import Tokenizer
from seq2seq_attn.train import train
from seq2seq_attn.translation.torch_backend import translate_n_best

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
        "step-00000010.pt", "step-00000020.pt", "summary.json", ".train.lock",
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
    # last.pt first, then its numbered name (a hard link of it)
    assert [name for name in recorder.checkpoints if name != "best.pt"] == [
        "last.pt", "step-00000010.pt", "last.pt", "step-00000020.pt"
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


def test_data_workers_change_nothing_and_resume_exactly(corpus, tmp_path):
    config = toy_config(corpus, max_steps=16, save_every=4, validate_every=8)
    with_workers = dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=2))
    alone = Recorder()
    train(config, tmp_path / "alone", callbacks=[alone])
    whole = Recorder()
    train(with_workers, tmp_path / "whole", callbacks=[whole])
    assert [r.loss for r in whole.steps] == [r.loss for r in alone.steps]
    stop = threading.Event()
    first = Recorder(stop, stop_at=7)
    train(with_workers, tmp_path / "parts", callbacks=[first], stop=stop)
    state = load_checkpoint(tmp_path / "parts" / "last.pt")
    per_epoch = first.info.steps_per_epoch  # one batch a step: the position counts steps
    assert (state["sampler"]["epoch"], state["sampler"]["position"]) == divmod(7, per_epoch)
    second = Recorder()
    resumed = train(with_workers, tmp_path / "parts", resume=True, callbacks=[second])
    assert [r.loss for r in first.steps + second.steps] == [r.loss for r in whole.steps]
    expected, actual = (
        parameters(tmp_path / "whole" / "last.pt"),
        parameters(resumed.last_checkpoint),
    )
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_resume_refuses_another_model(corpus, tmp_path):
    train(toy_config(corpus, max_steps=2, validate_every=0), tmp_path / "run")
    changed = toy_config(corpus, max_steps=4)
    changed.model.dropout = 0.3
    with pytest.raises(RunDirError, match=r"different model section \(model\.dropout: 0\.1 in"):
        train(changed, tmp_path / "run", resume=True)


def test_max_epochs_stops_after_one_epoch(corpus, tmp_path):
    summary = train(toy_config(corpus, max_steps=None, max_epochs=1), tmp_path / "epochs")
    assert (summary.reason, summary.epoch) == ("max_epochs", 1)
    # one epoch trains on every target token once (EOS included): the throughput counter
    progress = load_checkpoint(tmp_path / "epochs" / "last.pt")["progress"]
    config = toy_config(corpus)
    kept, _ = load_split(config.data, "train", Tokenizer.load(tmp_path / "epochs"))
    assert progress["target_tokens"] == sum(len(ids) + 1 for ids in kept["tgt_ids"])
    assert 0 < progress["step_seconds"] < progress["elapsed"]


def script_dev_bleu(monkeypatch, values: list[float]) -> list[float]:
    """Make every validation score the dev set with the next of ``values`` as BLEU (no decoding)
    instead of what the model translates; returns the values handed out so far."""
    scripted, handed_out = iter(values), []

    def scripted_scores(model, tokenizer, src_texts, ref_texts, *args, **kwargs) -> Evaluation:
        bleu = next(scripted)
        handed_out.append(bleu)
        scores = {
            "bleu": Score("BLEU", bleu, f"BLEU = {bleu:.2f}", "scripted"),
            "chrf": Score("chrF2", 2 * bleu, f"chrF2 = {2 * bleu:.2f}", "scripted"),
        }
        return Evaluation(list(src_texts), list(ref_texts), ["x"] * len(src_texts), scores)

    monkeypatch.setattr(seq2seq_attn.train, "score_translations", scripted_scores)
    return handed_out


@pytest.mark.parametrize(
    ("patience", "bleus", "reason", "stop_step", "best_step"),
    [
        # 12 at step 4 is the best; 11 and 11 are two bad validations in a row
        (2, [10, 12, 11, 11, 9, 30, 40], "early_stopping", 8, 4),
        # 12 at step 6 ends a bad streak; matching the best (12 at step 10) is no improvement
        (2, [10, 9, 12, 11, 12, 5, 30], "early_stopping", 10, 6),
        (1, [5, 5, 30, 40], "early_stopping", 4, 2),
        (3, [10, 9, 8, 11, 10, 10.5, 10, 30], "early_stopping", 14, 8),
        # improving every time: no early stop, the run goes on to max_steps
        (2, [1, 2, 3, 4, 5, 6], "max_steps", 12, 12),
        (2, [1, 0.5, 2, 1.5, 3, 2.5], "max_steps", 12, 10),  # bad, but never twice in a row
    ],
)
def test_early_stopping_follows_the_dev_bleu(
    corpus, tmp_path, monkeypatch, patience, bleus, reason, stop_step, best_step
):
    handed_out = script_dev_bleu(monkeypatch, bleus)
    config = toy_config(
        corpus, max_steps=2 * len(bleus), validate_every=2, save_every=2, keep_last=100,
        early_stopping_patience=patience,
    )  # fmt: skip
    recorder = Recorder()
    summary = train(config, tmp_path / "run", callbacks=[recorder])
    validated = bleus[: stop_step // 2]
    best_bleu = max(validated)
    assert (summary.reason, summary.step, summary.best_step, summary.best_bleu) == (
        reason, stop_step, best_step, best_bleu,
    )  # fmt: skip
    # it validated every 2 steps up to the stop, scoring each validation once, and no further
    assert handed_out == validated
    assert [v.step for v in recorder.validations] == list(range(2, stop_step + 1, 2))
    assert [v.scores["bleu"].score for v in recorder.validations] == validated
    assert [v.is_best for v in recorder.validations] == [
        bleu > max(validated[:index], default=-math.inf) for index, bleu in enumerate(validated)
    ]
    assert [v.best_bleu for v in recorder.validations] == [
        max(validated[: index + 1]) for index in range(len(validated))
    ]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["bleu"] for r in records if r["kind"] == "valid"] == validated
    # best.pt holds the model and progress of the best validation's step
    assert summary.best_checkpoint == tmp_path / "run" / "best.pt"
    best = load_checkpoint(summary.best_checkpoint)
    assert (best["progress"]["step"], best["progress"]["best_bleu"]) == (best_step, best_bleu)
    expected = parameters(tmp_path / "run" / f"step-{best_step:08d}.pt")
    assert all(torch.equal(best["model"][name], expected[name]) for name in expected)
    last = load_checkpoint(summary.last_checkpoint)["progress"]
    assert (last["step"], last["best_step"]) == (stop_step, best_step)
    if reason == "early_stopping":
        assert last["bad_validations"] == patience
    else:
        assert last["bad_validations"] < patience


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
    greedy = dataclasses.replace(config.decode, beam_size=1)
    outputs = translate_n_best(model, tokenizer, sources, greedy, 256, "cpu")
    assert tokenizer.decode_tgt([found[0].tokens for found in outputs]) == [
        h for _, _, h in best.samples
    ]
    with pytest.raises(CheckpointError, match=r"x\.pt: not a seq2seq-attn training checkpoint"):
        model_from_checkpoint({"model": {}}, "x.pt")


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_bf16_autocast_training_follows_fp32(corpus, tmp_path, family):
    # The same seeded run in fp32 and under bf16 autocast. Rounding the matmuls to bf16 moves
    # each step's loss by < 0.05% and the weights after 8 steps by ~0.2% (transformer) / 0.03%
    # (RNN) here; a broken bf16 path drifts further: weights kept or rounded in bf16 (0.6%),
    # a doubled learning rate (losses up to 8-10% off), the transformer's loss taken in bf16
    # (0.7%). The bounds leave a 10x (losses) and 2x (transformer weights) margin.
    runs = {}
    for precision in ("fp32", "bf16"):
        recorder = Recorder()
        config = toy_config(
            corpus, family, max_steps=8, validate_every=4, save_every=0, precision=precision
        )
        summary = train(config, tmp_path / precision, callbacks=[recorder])
        runs[precision] = recorder, parameters(summary.last_checkpoint)
    (fp32, fp32_weights), (bf16, bf16_weights) = runs["fp32"], runs["bf16"]
    assert (fp32.info.precision, bf16.info.precision) == ("fp32", "bf16")
    assert [r.step for r in bf16.steps] == list(range(1, 9))
    assert not any(r.skipped for r in bf16.steps)
    fp32_losses, bf16_losses = ([r.loss for r in run.steps] for run in (fp32, bf16))
    assert bf16_losses != fp32_losses  # autocast really computed in bf16
    torch.testing.assert_close(
        torch.tensor(bf16_losses, dtype=torch.float64),
        torch.tensor(fp32_losses, dtype=torch.float64), rtol=5e-3, atol=0,
    )  # fmt: skip
    assert [v.step for v in bf16.validations] == [v.step for v in fp32.validations] == [4, 8]
    torch.testing.assert_close(
        torch.tensor([v.loss for v in bf16.validations], dtype=torch.float64),
        torch.tensor([v.loss for v in fp32.validations], dtype=torch.float64), rtol=5e-3, atol=0,
    )  # fmt: skip
    # the master weights stay fp32 and end up where fp32 training put them
    assert bf16_weights.keys() == fp32_weights.keys()
    assert {w.dtype for w in bf16_weights.values() if w.is_floating_point()} == {torch.float32}
    difference = torch.cat([(bf16_weights[n] - fp32_weights[n]).flatten() for n in fp32_weights])
    norm = torch.cat([weight.flatten() for weight in fp32_weights.values()])
    assert difference.norm() / norm.norm() < 5e-3


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
    found = translate_n_best(model, tokenizer, ["ta zo li"], config.decode, 256, "cpu")
    assert len(found) == 1
    train(toy_config(corpus, "rnn"), tmp_path / "rnn")
    with pytest.raises(CheckpointError, match="another model or tokenizer"):
        average_checkpoints([tmp_path / "rnn" / "last.pt", paths[1]])
    damaged = load_checkpoint(paths[0])
    damaged["model"].popitem()
    save_checkpoint(damaged, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=r"damaged\.pt: its weights differ in names"):
        average_checkpoints([tmp_path / "damaged.pt", paths[1]])


def test_the_summary_is_written_into_the_run_directory(corpus, tmp_path):
    summary = train(toy_config(corpus), tmp_path / "run")
    assert read_summary(tmp_path / "run") == summary
    assert (summary.reason, summary.precision, summary.device) == ("max_steps", "fp32", "cpu")
    model = model_from_checkpoint(load_checkpoint(summary.last_checkpoint))[0]
    assert summary.num_parameters == model.num_parameters()
    assert summary.target_tokens_per_second == summary.target_tokens / summary.step_seconds > 0
    assert summary.best_checkpoint == tmp_path / "run" / "best.pt"
    with pytest.raises(
        RunDirError, match=r"no training summary; no training session of this run has ended"
    ):
        read_summary(tmp_path / "elsewhere")


def test_the_time_guard_stops_a_run_and_says_so_again_on_resume(corpus, tmp_path):
    run = tmp_path / "run"
    guarded = toy_config(corpus, max_steps=100_000, max_minutes=0.004)  # a quarter of a second
    first = train(guarded, run)
    assert first.reason == "max_minutes" and 0 < first.step < 100_000
    assert read_summary(run).reason == "max_minutes"
    again = train(guarded, run, resume=True)  # nothing more to do under the same guard
    assert (again.reason, again.step) == ("max_minutes", first.step)
    assert read_summary(run) == again
    unguarded = toy_config(corpus, max_steps=first.step + 5, max_minutes=None)
    finished = train(unguarded, run, resume=True)
    assert (finished.reason, finished.step) == ("max_steps", first.step + 5)
    assert read_summary(run).reason == "max_steps"


def test_a_run_stopped_by_the_time_guard_resumes_into_the_same_stop(corpus, tmp_path, monkeypatch):
    # A frozen clock jumps past the guard right after last.pt is written at step 2 (validated and
    # saved in the loop, nothing left for the end of the run): the guard is crossed between a
    # checkpoint and the next limit check, so last.pt must be rewritten with the time that
    # stopped the run (a resume used to train on; CI caught it as a flaky 10 vs 11 steps).
    clock = [0.0]
    monkeypatch.setattr(seq2seq_attn.train.time, "monotonic", lambda: clock[0])

    class JumpPastTheGuard(TrainCallback):
        def on_checkpoint(self, path: Path) -> None:
            if path.name == "last.pt":
                clock[0] += 120.0

    run = tmp_path / "run"
    guarded = toy_config(corpus, max_steps=100, max_minutes=1, save_every=2, validate_every=2)
    first = train(guarded, run, callbacks=[JumpPastTheGuard()])
    assert (first.reason, first.step) == ("max_minutes", 2)
    assert load_checkpoint(run / "last.pt")["progress"]["elapsed"] >= 60
    again = train(guarded, run, resume=True)
    assert (again.reason, again.step) == ("max_minutes", 2)


def test_validation_records_carry_the_training_time(corpus, tmp_path):
    train(toy_config(corpus), tmp_path / "run")
    validations = read_metrics(tmp_path / "run", "valid")
    assert [record["step"] for record in validations] == [10, 20]
    assert 0 < validations[0]["elapsed"] < validations[1]["elapsed"]
    assert {"loss", "bleu", "chrf"} <= set(validations[0])
    assert [record["step"] for record in read_metrics(tmp_path / "run", "train")] == [5, 10, 15, 20]


def test_a_moving_average_validates_and_is_saved_without_changing_training(corpus, tmp_path):
    plain = Recorder()
    train(toy_config(corpus, max_steps=20, lr=1e-2), tmp_path / "plain", callbacks=[plain])
    config = toy_config(corpus, max_steps=20, lr=1e-2, ema_decay=0.8)
    whole = Recorder()
    summary = train(config, tmp_path / "whole", callbacks=[whole])
    assert [r.loss for r in whole.steps] == [r.loss for r in plain.steps]
    last, plain_last = (load_checkpoint(tmp_path / run / "last.pt") for run in ("whole", "plain"))
    assert last["ema_updates"] == 20
    trained, averaged = last["training_weights"], last["model"]
    assert all(torch.equal(trained[name], plain_last["model"][name]) for name in trained)
    assert not all(torch.equal(trained[name], averaged[name]) for name in trained)
    # validation scored the average: the last one's samples are last.pt's model's translations,
    # not those the trained weights gave the plain run's last validation
    final, plain_final = whole.validations[-1], plain.validations[-1]
    assert final.step == plain_final.step == summary.step
    assert [h for _, _, h in final.samples] != [h for _, _, h in plain_final.samples]
    model, tokenizer, _ = model_from_checkpoint(last)
    greedy = dataclasses.replace(config.decode, beam_size=1)
    sources = [src for src, _, _ in final.samples]
    outputs = translate_n_best(model, tokenizer, sources, greedy, 256, "cpu")
    assert tokenizer.decode_tgt([found[0].tokens for found in outputs]) == [
        h for _, _, h in final.samples
    ]
    assert final.loss != plain_final.loss  # the dev loss too
    # stopped and resumed: the same average and weights as the uninterrupted run
    stop = threading.Event()
    train(config, tmp_path / "parts", callbacks=[Recorder(stop, stop_at=13)], stop=stop)
    resumed = train(config, tmp_path / "parts", resume=True)
    again = load_checkpoint(resumed.last_checkpoint)
    for key in ("model", "training_weights"):
        assert all(torch.equal(last[key][name], again[key][name]) for name in last[key])
