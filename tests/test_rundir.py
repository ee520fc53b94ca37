"""The run directory: its file names read back, the metrics log, and preparing a new run."""

from __future__ import annotations

import pytest

from seq2seq_attn.rundir import (
    RunDirError,
    append_metrics,
    averaged_checkpoint,
    numbered_checkpoints,
    prepare_run_dir,
    prune_numbered,
    read_metrics,
    step_checkpoint,
    trim_metrics,
)


def test_numbered_checkpoints_read_back_the_steps_they_were_named_for(tmp_path):
    for step in (120, 5, 100_000_000):
        step_checkpoint(tmp_path, step).write_bytes(b"")
    (tmp_path / "step-final.pt").write_bytes(b"")  # not a step: ignored
    averaged_checkpoint(tmp_path, 4).write_bytes(b"")
    assert step_checkpoint(tmp_path, 5).name == "step-00000005.pt"
    assert averaged_checkpoint(tmp_path, 4).name == "averaged-4.pt"
    assert numbered_checkpoints(tmp_path) == {
        step: step_checkpoint(tmp_path, step) for step in (5, 120, 100_000_000)
    }
    prune_numbered(tmp_path, keep=1)
    assert list(numbered_checkpoints(tmp_path)) == [100_000_000]
    assert averaged_checkpoint(tmp_path, 4).is_file()


def test_trim_metrics_drops_later_and_unfinished_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"kind": "train", "step": 5}', '{"kind": "valid", "step": 10}', '{"step": 15}']
    path.write_text("\n".join(lines) + '\n{"kind": "tra', encoding="utf-8")
    trim_metrics(tmp_path, 10)
    assert path.read_text(encoding="utf-8").splitlines() == lines[:2]


def test_appended_metrics_are_read_back_by_kind(tmp_path):
    append_metrics(tmp_path, {"kind": "train", "step": 1, "loss": 2.5})
    append_metrics(tmp_path, {"kind": "valid", "step": 1, "bleu": 3.0})
    append_metrics(tmp_path, {"kind": "train", "step": 2, "loss": 2.0})
    assert [record["step"] for record in read_metrics(tmp_path, "train")] == [1, 2]
    assert read_metrics(tmp_path, "valid") == [{"kind": "valid", "step": 1, "bleu": 3.0}]
    assert read_metrics(tmp_path / "elsewhere", "train") == []


def test_a_new_run_needs_an_empty_directory_and_a_resume_needs_last_pt(tmp_path):
    run = tmp_path / "new" / "run"
    prepare_run_dir(run, resume=False)
    assert run.is_dir()
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(RunDirError, match=r"not empty \(notes\.txt\); pass --resume"):
        prepare_run_dir(run, resume=False)
    with pytest.raises(RunDirError, match=r"last\.pt: nothing to resume"):
        prepare_run_dir(run, resume=True)
    (run / "last.pt").write_bytes(b"")
    prepare_run_dir(run, resume=True)
