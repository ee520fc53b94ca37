"""The Multi30k benchmark's rules, scores and report: the checkpoint and length penalty chosen on
dev, sacreBLEU's command line agrees, and the report flags what makes a figure machine-dependent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq_attn.benchmark import (
    LENGTH_PENALTIES,
    averages_to_try,
    build_report,
    choose_checkpoint,
    markdown_report,
    score_test_set,
)
from seq2seq_attn.metrics import moses_lowercased_bleu


def sacrebleu_cli(references: Path, hypotheses: Path, *options: str) -> float:
    """A score from the ``sacrebleu`` command line (4 decimals)."""
    command = [Path(sys.executable).with_name("sacrebleu"), references, "-i", hypotheses, "-b",
               "-w", "4", *options]  # fmt: skip
    return float(subprocess.run(command, capture_output=True, check=True, text=True).stdout)


def test_lowercased_bleu_forgives_case_as_the_command_line_does(tmp_path):
    references = ["A dog runs across the Green field .", "Two Men play chess in a park ."]
    hypotheses = ["a dog runs across the green field .", "two men are playing chess in the park ."]
    scores = score_test_set(hypotheses, references)
    (tmp_path / "ref").write_text("\n".join(references) + "\n")
    (tmp_path / "hyp").write_text("\n".join(hypotheses) + "\n")

    def cli(*options: str) -> float:
        return sacrebleu_cli(tmp_path / "ref", tmp_path / "hyp", *options)

    assert scores["bleu_lc"] == pytest.approx(cli("-m", "bleu", "-lc"), abs=0.01)
    assert scores["bleu"] == pytest.approx(cli("-m", "bleu"), abs=0.01)
    assert scores["chrf"] == pytest.approx(cli("-m", "chrf"), abs=0.01)
    assert scores["bleu_lc"] > scores["bleu"] + 10


def model_figures(stop_reason: str, steps: int) -> dict:
    """One model's figures as scripts/reproduce.py gathers them."""
    scores = score_test_set(["a dog runs ."], ["A dog runs ."])
    return {
        "train": {"params": 7_580_000, "steps": steps, "epochs": 3, "max_steps": 2700,
                  "max_minutes": 100, "stop_reason": stop_reason, "train_minutes": 50.0,
                  "train_tokens_per_s": 3300.0, "best_dev_bleu": 40.2, "best_step": steps,
                  "precision": "bf16"},
        "checkpoint": {"checkpoint": "best.pt", "dev_bleu_greedy": {"best.pt": 40.2},
                       "averaged_steps": {}, "length_penalty": 0.8,
                       "dev_bleu_beam": {"0.6": 40.5, "0.8": 40.9}},
        "tests": {"test_2016_flickr": {**scores, "sentences": 1, "seconds": 0.5,
                                       "precision": "fp32"}},
        "pictures": ["p-1.png"],
        "curves": "c.png",
    }  # fmt: skip


def test_the_report_flags_the_time_guard_and_names_the_precisions():
    models = {
        "transformer": model_figures("max_steps", 2700),
        "rnn-bahdanau": model_figures("max_minutes", 1234),
    }
    machine = {"cpu": "X", "torch_threads": 2, "gpu": None, "torch": "2.13", "python": "3.11"}
    report = build_report("de-en", models, machine, "now", 5)
    markdown = markdown_report(report)
    rows: dict[str, str] = {}  # each model's row of the summary table (the first table)
    for line in markdown.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert "| 2700 (2700) |" in rows["transformer"] and "time guard" not in rows["transformer"]
    assert "| 1234 (2700) (time guard) |" in rows["rnn-bahdanau"]
    assert "| bf16 / fp32 |" in rows["transformer"]
    assert "stopped by its step budget" in markdown
    assert "with length penalty 0.8, chosen on beam dev BLEU (0.6 40.50, 0.8 40.90)" in markdown
    assert "WARNING: before its step budget, so this figure depends on the machine" in markdown
    assert report["models"]["transformer"]["anchor"]["bleu_lc"] == 36.5
    assert report["models"]["transformer"]["translate_sentences_per_s"] == pytest.approx(2.0)


def test_ties_go_to_the_smaller_length_penalty_and_the_earlier_checkpoint():
    tried = []

    def beam(name: str, penalty: float) -> float:
        tried.append((name, penalty))
        return {2.0: 30.0, 0.5: 31.0, 1.0: 31.0, 3.0: 29.0}[penalty]

    candidates = {"best.pt": [], "averaged-5.pt": [60, 70, 80, 90, 100]}
    choice = choose_checkpoint(candidates, lambda name: 40.0, beam, (2.0, 0.5, 1.0, 3.0))
    assert choice == {
        "checkpoint": "best.pt",  # the same greedy BLEU: the first candidate
        "dev_bleu_greedy": {"best.pt": 40.0, "averaged-5.pt": 40.0},
        "averaged_steps": {"averaged-5.pt": [60, 70, 80, 90, 100]},
        "length_penalty": 0.5,  # 0.5 and 1.0 tie: the smaller, wherever it stands in the grid
        "dev_bleu_beam": {"2.0": 30.0, "0.5": 31.0, "1.0": 31.0, "3.0": 29.0},
    }
    assert tried == [("best.pt", p) for p in (2.0, 0.5, 1.0, 3.0)]  # the beam on the chosen only


def test_the_best_greedy_candidate_is_tried_with_every_length_penalty():
    greedy = {"best.pt": 35.9, "averaged-5.pt": 37.2, "averaged-10.pt": 36.2}
    tried = []

    def beam(name: str, penalty: float) -> float:
        tried.append(name)
        return 38.0 + penalty if penalty < 2 else 30.0

    candidates = {"best.pt": [], "averaged-5.pt": [1, 2], "averaged-10.pt": [0, 1, 2]}
    choice = choose_checkpoint(candidates, greedy.__getitem__, beam)
    assert (choice["checkpoint"], choice["length_penalty"]) == ("averaged-5.pt", 1.5)
    assert tried == ["averaged-5.pt"] * len(LENGTH_PENALTIES)
    assert list(choice["dev_bleu_beam"]) == [str(p) for p in LENGTH_PENALTIES]


def test_averages_are_the_last_n_checkpoints_without_repeats():
    twelve = {step: f"step-{step}" for step in range(100, 1300, 100)}
    last5, last10 = averages_to_try(twelve)
    assert list(last5) == [800, 900, 1000, 1100, 1200]
    assert list(last10) == list(range(300, 1300, 100)) and last10[300] == "step-300"
    three = {10: "a", 20: "b", 30: "c"}
    assert averages_to_try(three) == [three]  # 5 and 10 both cap at 3: one candidate
    assert averages_to_try({10: "a"}) == []  # the mean of one checkpoint is no candidate
    assert averages_to_try(three, (2, 3)) == [{20: "b", 30: "c"}, three]


def test_moses_bleu_joins_the_scores_when_the_target_language_is_given():
    hypotheses, references = ["ein Hund ( braun ) läuft ."], ["Ein Hund (braun) läuft weg."]
    plain = score_test_set(hypotheses, references)
    assert "bleu_lc_moses" not in plain and "bleu_lc_moses" not in plain["signatures"]
    pytest.importorskip("sacremoses", reason="the moses extra is not installed")
    scores = score_test_set(hypotheses, references, moses_lang="de")
    moses = moses_lowercased_bleu(hypotheses, references, "de")
    assert scores.pop("bleu_lc_moses") == moses.score > 0
    assert scores["signatures"].pop("bleu_lc_moses") == moses.signature
    assert scores == plain
