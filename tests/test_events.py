"""What training reports: standard library only, and a summary that travels as plain JSON."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from seq2seq_attn.events import TrainSummary
from seq2seq_attn.rundir import read_summary, write_summary


def test_the_events_import_nothing_but_the_standard_library():
    probe = (
        "import json, sys; before = set(sys.modules); import seq2seq_attn.events; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert loaded - set(sys.stdlib_module_names) == {"seq2seq_attn"}


def test_a_summary_is_plain_json_and_reads_back(tmp_path):
    summary = TrainSummary(
        step=12, epoch=1, reason="max_steps", elapsed=3.5, best_bleu=None, best_step=0,
        last_checkpoint=tmp_path / "last.pt", best_checkpoint=None, nonfinite_steps=1,
    )  # fmt: skip
    plain = summary.to_plain()
    assert json.loads(json.dumps(plain)) == plain
    assert plain["last_checkpoint"] == str(tmp_path / "last.pt")
    assert summary.target_tokens_per_second == 0.0  # no step timed yet
    write_summary(tmp_path, summary)
    assert read_summary(tmp_path) == summary
    timed = dataclasses.replace(
        summary, best_checkpoint=Path("b.pt"), target_tokens=30, step_seconds=1.5
    )
    assert timed.target_tokens_per_second == 20.0
    write_summary(tmp_path, timed)
    assert read_summary(tmp_path).best_checkpoint == Path("b.pt")
