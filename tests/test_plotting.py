"""PNG pictures: attention heatmaps, learning curves, and a clear error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from seq2seq_attn.plotting import (
    PlottingError,
    attention_picture_paths,
    plot_attention,
    plot_learning_curves,
)

RECORD = {"index": 3, "src_tokens": ["▁ein", "▁Hund", "</s>"], "tgt_tokens": ["▁a", "▁dog", "</s>"],
          "layer": -1, "head": "mean",
          "weights": [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]]}  # fmt: skip


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_record_is_drawn_at_the_path_several_beside_it(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot_attention([RECORD], tmp_path / "one.png") == [tmp_path / "one.png"]
    assert is_png(tmp_path / "one.png")
    second = {**RECORD, "index": 7}
    written = plot_attention([RECORD, second], tmp_path / "many.png")
    assert written == [tmp_path / "many-3.png", tmp_path / "many-7.png"]
    assert all(is_png(path) for path in written)
    assert attention_picture_paths([RECORD, second], tmp_path / "x") == [
        tmp_path / "x-3.png", tmp_path / "x-7.png"
    ]  # fmt: skip


def test_learning_curves_need_validations(tmp_path):
    pytest.importorskip("matplotlib")
    records = [
        {"step": s, "elapsed": 30.0 * s, "bleu": 2.0 * s, "loss": 5.0 / s} for s in (1, 2, 3)
    ]
    assert plot_learning_curves(records, tmp_path / "curves.png", "toy") == tmp_path / "curves.png"
    assert is_png(tmp_path / "curves.png")
    older = [
        {key: value for key, value in record.items() if key != "elapsed"} for record in records
    ]
    assert is_png(plot_learning_curves(older, tmp_path / "older.png", "toy"))
    with pytest.raises(PlottingError, match="no validation records"):
        plot_learning_curves([], tmp_path / "none.png", "toy")
    assert not (tmp_path / "none.png").exists()


def test_without_matplotlib_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package looks like
    with pytest.raises(PlottingError, match=r"pip install 'seq2seq-attn\[plot\]'"):
        plot_attention([RECORD], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
