"""attn-translate on a briefly trained toy model: line order, blank lines, n-best lists, scores
equal to the sacrebleu command line's, attention output, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seq2seq_attn.config import config_from_plain
from seq2seq_attn.train import train

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    """A tiny Transformer trained for 40 steps on the toy corpus slice."""
    return train_toy(corpus, tmp_path_factory.mktemp("runs") / "toy")


def train_toy(
    corpus: Path, directory: Path, layers: int = 1, heads: int = 4, steps: int = 40,
    max_positions: int = 48,
) -> Path:  # fmt: skip
    """Train a tiny Transformer (d_model 32, ``layers`` encoder and decoder layers) on the
    toy corpus slice into ``directory`` for ``steps`` steps; returns ``directory``."""
    config = config_from_plain(
        {
            "data": {"src_lang": "src", "tgt_lang": "tgt", "train": str(corpus / "train"),
                     "dev": str(corpus / "dev"), "test": "", "max_tokens": 256,
                     "max_length": 40, "cache_dir": str(corpus / "cache")},
            "tokenizer": {"vocab_size": 64},
            "model": {"family": "transformer", "max_positions": max_positions,
                      "transformer": {"d_model": 32, "num_heads": heads, "encoder_layers": layers,
                                      "decoder_layers": layers, "ff_size": 64}},
            "train": {"max_steps": steps, "validate_every": steps // 2,
                      "save_every": steps // 2, "lr": 3e-3, "warmup_steps": 10,
                      "precision": "fp32", "device": "cpu"},
            "decode": {"beam_size": 3, "max_length_offset": 5},
        }
    )  # fmt: skip
    train(config, directory)
    return directory


def translate_cli(*arguments: str, stdin: str | None = None):
    """Run attn-translate in-process."""
    from seq2seq_attn.cli import translate_app

    return runner.invoke(translate_app, [str(a) for a in arguments], input=stdin)


def source_lines(corpus: Path, count: int = 12) -> list[str]:
    """The first dev sources."""
    return (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:count]


def test_one_output_line_per_input_line_in_order(run_dir, corpus, tmp_path):
    lines = source_lines(corpus)
    with_blanks = [lines[0], "", lines[1], "   ", *lines[2:]]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(with_blanks) + "\n", encoding="utf-8")
    result = translate_cli(run_dir / "best.pt", source, "--beam", "2")
    assert result.exit_code == 0, result.output
    outputs = result.stdout.split("\n")[:-1]
    assert len(outputs) == len(with_blanks)
    assert outputs[1] == "" and outputs[3] == ""
    # each line translated alone gives the same output: batching and order do not matter
    for index in (0, 4, len(with_blanks) - 1):
        alone = translate_cli(run_dir, "--beam", "2", stdin=with_blanks[index] + "\n")
        assert alone.stdout == outputs[index] + "\n"


def test_scores_equal_the_sacrebleu_command_line(run_dir, corpus, tmp_path):
    source, reference = tmp_path / "dev.src", tmp_path / "dev.ref"
    source.write_text("\n".join(source_lines(corpus, 20)) + "\n", encoding="utf-8")
    refs = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()[:20]
    reference.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hypotheses = tmp_path / "hyp.txt"
    result = translate_cli(
        run_dir, source, "-o", hypotheses, "--ref", reference, "--metrics", "bleu,chrf,ter",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    command = [Path(sys.executable).parent / "sacrebleu", reference, "-i", hypotheses,
               "-m", "bleu", "chrf", "ter"]  # fmt: skip
    expected = json.loads(subprocess.run(command, capture_output=True, text=True).stdout)
    for entry in expected:
        key = {"BLEU": "bleu", "chrF2": "chrf", "TER": "ter"}[entry["name"]]
        assert ours[key]["score"] == pytest.approx(entry["score"], abs=0.05)
        assert ours[key]["signature"] == entry["signature"]


def test_n_best_lists(run_dir, corpus):
    lines = source_lines(corpus, 3)
    result = translate_cli(run_dir, "--beam", "4", "--n-best", "3", stdin="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(row[0]) for row in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for start in (0, 3, 6):
        scores = [float(row[2]) for row in rows[start : start + 3]]
        assert scores == sorted(scores, reverse=True)
    best = translate_cli(run_dir, "--beam", "4", stdin="\n".join(lines) + "\n").stdout.splitlines()
    assert [rows[i][1] for i in (0, 3, 6)] == best


def test_attention_json_and_terminal_heatmap(run_dir, corpus, tmp_path):
    lines = source_lines(corpus, 2)
    out = tmp_path / "attention.json"
    result = translate_cli(
        run_dir, "--attention", out, "--show-attention", stdin="\n".join(lines) + "\n"
    )
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text(encoding="utf-8"))
    assert [record["index"] for record in records] == [0, 1]
    for record in records:
        weights = record["weights"]
        assert len(weights) == len(record["tgt_tokens"])
        assert all(len(row) == len(record["src_tokens"]) for row in weights)
        assert all(abs(sum(row) - 1.0) < 1e-3 for row in weights)
    assert "attention, sentence 0" in result.output


def test_plot_attention_writes_one_png_per_sentence(run_dir, corpus, tmp_path):
    pytest.importorskip("matplotlib")
    lines = source_lines(corpus, 2)
    result = translate_cli(run_dir, "--plot-attention", tmp_path / "att.png",
                           stdin="\n".join(lines) + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("att-0.png", "att-1.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = translate_cli(run_dir, "--plot-attention", tmp_path / "one.png", stdin=lines[0])
    assert single.exit_code == 0, single.output
    assert (tmp_path / "one.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message", "code"),
    [
        (["missing.pt"], "missing.pt: no such checkpoint file", 1),
        (["EMPTY"], "a directory without best.pt or last.pt; pass a checkpoint file", 2),
        (["RUN", "-o", "NOFOLDER/out.txt"], "out.txt: cannot write", 1),
        (["RUN", "--beam", "2", "--n-best", "3"], "n_best <= beam_size", 2),
        (["RUN", "--metrics", "bleu,meteor", "--ref", "REF"], "unknown metric", 2),
        (["RUN", "--ref", "SHORT"], "SHORT.txt has 1 lines but stdin has 2", 2),
        (["RUN", "--device", "banana"], "--device: invalid value 'banana'; use auto, cpu", 2),
        (["RUN", "--device", "cuda:99"], "--device: invalid value 'cuda:99'", 2),
        (["RUN", "--precision", "fp16", "--device", "cpu"], "--precision: invalid value", 2),
    ],
)
def test_errors_are_clear(run_dir, corpus, tmp_path, arguments, message, code):
    (tmp_path / "REF.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "SHORT.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "NOFOLDER").write_text("a file where a folder should be\n")
    replace = {
        "EMPTY": str(tmp_path / "empty"),
        "NOFOLDER/out.txt": str(tmp_path / "NOFOLDER" / "out.txt"),
        "RUN": str(run_dir),
        "REF": str(tmp_path / "REF.txt"),
        "SHORT": str(tmp_path / "SHORT.txt"),
        "missing.pt": str(tmp_path / "missing.pt"),
    }
    result = translate_cli(*[replace.get(a, a) for a in arguments], stdin="x\ny\n")
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert "train.device" not in result.output and "train.precision" not in result.output


def test_invalid_utf8_input_names_the_line(run_dir, tmp_path):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    result = translate_cli(run_dir, source)
    assert result.exit_code == 1
    assert "bad.txt:3: not valid UTF-8" in " ".join(result.output.split())


def test_attention_json_can_go_to_a_pipe(run_dir, corpus, tmp_path):
    """``--attention /dev/stdout`` style targets are written through, not replaced."""
    fifo = tmp_path / "attention.pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = translate_cli(run_dir, "--attention", fifo, stdin=source_lines(corpus, 2)[0])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    records = json.loads(received[0])
    assert len(records) == 1 and records[0]["src_tokens"][-1] == "</s>"
