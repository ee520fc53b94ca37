"""The benchmark on a trained run, without training one: the figures read from a run directory,
the checkpoint choice wired to translation (candidates, averaged files, the kept choice), and
results files that are damaged or written by an older version."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from seq2seq_attn import benchmark_run
from seq2seq_attn.benchmark import LENGTH_PENALTIES
from seq2seq_attn.benchmark_run import (
    BenchmarkError,
    ModelRun,
    chosen_checkpoint,
    read_json,
    read_training_figures,
    training_figures,
    write_json,
)
from seq2seq_attn.events import TrainSummary
from seq2seq_attn.rundir import CONFIG_FILE, write_summary

ROOT = Path(__file__).resolve().parent.parent


def finished_run(run_dir: Path, reason: str = "max_steps", best: bool = True) -> Path:
    """A run directory with the shipped Transformer config and a summary of how it ended."""
    run_dir.mkdir(parents=True)
    shutil.copy(ROOT / "data" / "configs" / "multi30k-transformer.yaml", run_dir / CONFIG_FILE)
    summary = TrainSummary(
        step=4000, epoch=18, reason=reason, elapsed=3036.0, best_bleu=42.65, best_step=4000,
        last_checkpoint=run_dir / "last.pt", best_checkpoint=run_dir / "best.pt" if best else None,
        nonfinite_steps=0, num_parameters=7_580_000, precision="bf16", target_tokens=6_000_000,
        step_seconds=2000.0,
    )  # fmt: skip
    write_summary(run_dir, summary)
    return run_dir


def test_training_figures_come_from_the_summary_and_the_config(tmp_path):
    figures = training_figures(finished_run(tmp_path / "run"))
    assert figures == {
        "params": 7_580_000, "steps": 4000, "epochs": 18, "max_steps": 4000,
        "max_minutes": 100, "stop_reason": "max_steps", "train_minutes": 50.6,
        "train_tokens_per_s": 3000.0, "best_dev_bleu": 42.65, "best_step": 4000,
        "precision": "bf16",
    }  # fmt: skip
    with pytest.raises(BenchmarkError, match="its training was stopped; run again"):
        training_figures(finished_run(tmp_path / "stopped", reason="stopped"))
    with pytest.raises(BenchmarkError, match=r"no best\.pt, so the run never validated"):
        training_figures(finished_run(tmp_path / "unvalidated", best=False))


def test_damaged_or_older_results_files_name_the_way_out(tmp_path):
    write_json(tmp_path / "train.json", {"steps": 10})
    with pytest.raises(BenchmarkError, match=r"older make reproduce \(no max_steps, max_min"):
        read_training_figures(tmp_path)
    (tmp_path / "train.json").write_text('{"steps": ')
    with pytest.raises(BenchmarkError, match=r"train\.json: damaged .*delete it and run again"):
        read_json(tmp_path / "train.json")


class FakeTranslator:
    """Stands for a translator: its dev BLEU is set by its checkpoint and length penalty."""

    def __init__(self, checkpoint: Path, length_penalty: float | None) -> None:
        self.checkpoint, self.length_penalty = checkpoint, length_penalty


def test_the_choice_averages_the_last_checkpoints_and_is_kept(tmp_path, monkeypatch, caplog):
    run = ModelRun("transformer", tmp_path / "run", tmp_path / "work", tmp_path / "data",
                   ("de", "en"), "fp32", tmp_path, "multi30k-de-en")  # fmt: skip
    recent = {step: run.run_dir / f"step-{step:08d}.pt" for step in (100, 200, 300)}
    saved = {}
    monkeypatch.setattr(benchmark_run, "recent_checkpoints", lambda run_dir, count: recent)
    monkeypatch.setattr(benchmark_run, "average_checkpoints", lambda paths: list(paths))
    monkeypatch.setattr(benchmark_run, "save_checkpoint", lambda c, path: saved.update({path: c}))
    reference = "a man rides a red bike down the street"
    monkeypatch.setattr(benchmark_run, "read_split", lambda *args: (["src"], [reference]))
    made = []

    def translator_for(checkpoint, precision, beam_size=5, length_penalty=None):
        made.append((checkpoint.name, beam_size, length_penalty))
        return FakeTranslator(checkpoint, length_penalty)

    def translate_lines(translator, sources):  # averaged-3.pt greedy, penalty 2.0 beam: the ref
        good = translator.checkpoint.name == "averaged-3.pt" and translator.length_penalty in (
            None, 2.0)  # fmt: skip
        return [reference if good else "a man rides"]

    monkeypatch.setattr(benchmark_run, "translator_for", translator_for)
    monkeypatch.setattr(benchmark_run, "translate_lines", translate_lines)
    with caplog.at_level(logging.INFO, logger="seq2seq_attn.benchmark_run"):
        choice = chosen_checkpoint(run)
    assert saved == {run.run_dir / "averaged-3.pt": list(recent.values())}  # 5 and 10: one mean
    assert (choice["checkpoint"], choice["length_penalty"]) == ("averaged-3.pt", 2.0)
    assert choice["averaged_steps"] == {"averaged-3.pt": [100, 200, 300]}
    assert made[:2] == [("best.pt", 1, None), ("averaged-3.pt", 1, None)]
    assert made[2:] == [("averaged-3.pt", 5, penalty) for penalty in LENGTH_PENALTIES]
    assert "transformer: averaged-3.pt greedy dev BLEU 100.00" in caplog.messages
    assert json.loads((run.work_dir / "checkpoint.json").read_text()) == choice
    made.clear()
    assert chosen_checkpoint(run) == choice and made == []  # kept: nothing translated again
