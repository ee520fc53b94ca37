"""attn-score: TSV and JSON Lines output equal to the model's teacher-forced log-probabilities,
ensembles, n-best lists rescored to the search's own scores, clear input errors, and an
exported CTranslate2 folder that scores like its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from seq2seq_attn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from seq2seq_attn.config import (
    Config,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TokenizerConfig,
    TransformerConfig,
    to_plain,
)
from seq2seq_attn.decoding import beam_search
from seq2seq_attn.models import build_model
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    """A small joint SentencePiece tokenizer trained on the toy corpus."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60, joint=True))


def write_checkpoint(path: Path, tokenizer: Tokenizer, seed: int) -> Path:
    """A checkpoint of a seeded, untrained Transformer (weights pushed off their
    initialisation so that every tensor matters), ``max_positions`` 40."""
    transformer = TransformerConfig(
        d_model=32, num_heads=4, encoder_layers=2, decoder_layers=2, ff_size=48
    )
    config = Config(
        data=DataConfig(max_length=39),
        model=ModelConfig(max_positions=40, transformer=transformer),
    )
    torch.manual_seed(seed)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    state = {"config": to_plain(config), "tokenizer": tokenizer.state_dict(),
             "model": model.state_dict()}  # fmt: skip
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tokenizer, tmp_path_factory) -> list[Path]:
    """Two checkpoints of differently seeded models sharing ``tokenizer``."""
    directory = tmp_path_factory.mktemp("models")
    return [write_checkpoint(directory / f"model{seed}.pt", tokenizer, seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def pairs(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """SRC and TGT files: dev pairs, a blank source, a blank target, and a target and a
    source longer than the models' 39 tokens."""
    sources = (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:6]
    targets = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()[:6]
    sources += ["", sources[0], sources[1], " ".join(sources)]
    targets += [targets[0], "", " ".join(targets), targets[2]]
    directory = tmp_path_factory.mktemp("pairs")
    (directory / "src.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (directory / "tgt.txt").write_text("\n".join(targets) + "\n", encoding="utf-8")
    return directory / "src.txt", directory / "tgt.txt"


def score_cli(*arguments):
    """Run attn-score in-process; returns typer's result."""
    from seq2seq_attn.cli import score_app

    return runner.invoke(score_app, [str(argument) for argument in arguments])


def reference(checkpoint_paths: list[Path], src_text: str, tgt_text: str) -> list[float]:
    """Per-token log-probabilities straight from ``model.forward`` (fp64 log-softmax; for
    several models, the renormalised mean of their log-probabilities), sides cut to 39."""
    members = [model_from_checkpoint(load_checkpoint(path))[:2] for path in checkpoint_paths]
    tokenizer = members[0][1]
    src_ids = tokenizer.encode_src([src_text])[0][:39]
    tgt_ids = tokenizer.encode_tgt([tgt_text])[0][:39]
    src = torch.tensor([[*src_ids, EOS_ID]])  # (1, S)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])  # (1, T + 1)
    with torch.no_grad():
        log_probs = torch.stack([
            model(src, torch.ones_like(src, dtype=torch.bool), tgt_in)[0].double().log_softmax(-1)
            for model, _ in members
        ]).mean(dim=0).log_softmax(-1)  # (T + 1, V)  # fmt: skip
    return log_probs[torch.arange(len(tgt_ids) + 1), torch.tensor([*tgt_ids, EOS_ID])].tolist()


def read_lines(path: Path) -> list[str]:
    """The lines of a text file."""
    return path.read_text(encoding="utf-8").splitlines()


def test_tsv_columns_equal_the_model_s_log_probabilities(checkpoints, pairs, tmp_path):
    src_file, tgt_file = pairs
    result = score_cli(checkpoints[0], src_file, tgt_file, "--per-token", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [str(number) for number in range(1, 11)]
    for row, src_text, tgt_text in zip(rows, read_lines(src_file), read_lines(tgt_file),
                                       strict=True):  # fmt: skip
        if not src_text:  # a blank source is not scored
            assert row[1:] == ["nan", "nan", "0", ""]
            continue
        expected = reference(checkpoints[:1], src_text, tgt_text)
        total, mean, count = float(row[1]), float(row[2]), int(row[3])
        assert count == len(expected) and total == pytest.approx(sum(expected), abs=1e-4)
        assert mean == pytest.approx(total / count, abs=1e-5)
        assert [float(value) for value in row[4].split()] == pytest.approx(expected, abs=1e-5)
    assert int(rows[7][3]) == 1 and int(rows[8][3]) == 40  # blank target: EOS; long one: cut
    without = score_cli(checkpoints[0], src_file, tgt_file, "-o", tmp_path / "scores.tsv")
    assert without.exit_code == 0 and without.stdout == ""
    assert read_lines(tmp_path / "scores.tsv") == [
        "\t".join(row[:4]) for row in rows
    ]  # the same columns without the per-token values


def test_json_lines_and_ensembles(checkpoints, pairs):
    src_file, tgt_file = pairs
    result = score_cli(
        checkpoints[0], src_file, tgt_file, "--ensemble", checkpoints[1], "--format", "json",
        "--per-token",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[6] == {"line": 7, "total": None, "mean": None, "tokens": 0, "log_probs": []}
    for record, src_text, tgt_text in list(
        zip(records, read_lines(src_file), read_lines(tgt_file), strict=True)
    )[:6]:
        expected = reference(checkpoints, src_text, tgt_text)
        assert record["log_probs"] == pytest.approx(expected, abs=1e-5)
        assert record["total"] == pytest.approx(sum(expected), abs=1e-4)
        assert record["tokens"] == len(expected)
        alone = reference(checkpoints[:1], src_text, tgt_text)
        assert abs(sum(alone) - record["total"]) > 1e-2  # the second model counts


def test_n_best_lists_rescore_to_the_search_s_own_log_probabilities(checkpoints, corpus, tmp_path):
    model, tokenizer, _ = model_from_checkpoint(load_checkpoint(checkpoints[0]))
    sources = read_lines(corpus / "dev.src")[:12]
    src_ids = [ids[:39] for ids in tokenizer.encode_src(sources)]  # as the scorer cuts them
    src = torch.zeros(len(sources), max(map(len, src_ids)) + 1, dtype=torch.long)  # (B, S)
    for row, ids in enumerate(src_ids):
        src[row, : len(ids) + 1] = torch.tensor([*ids, EOS_ID])
    decode = DecodeConfig(  # short outputs: an untrained model's long ones rarely round-trip
        beam_size=3, n_best=3, length_penalty=0.0, max_length_ratio=0.2, max_length_offset=3
    )
    found = beam_search(model, src, src != 0, BOS_ID, EOS_ID, decode)
    nbest, expected = [], []  # as attn-translate --n-best writes it
    for index, hypotheses in enumerate(found):
        for text, hypothesis in zip(tokenizer.decode_tgt([h.tokens for h in hypotheses]),
                                    hypotheses, strict=True):  # fmt: skip
            nbest.append(f"{index} ||| {text} ||| {hypothesis.score:.4f}")
            round_trip = tokenizer.encode_tgt([text])[0] == hypothesis.tokens
            expected.append((index, hypothesis.log_prob if round_trip else None))
    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "nbest.txt").write_text("\n".join(nbest) + "\n", encoding="utf-8")
    result = score_cli(checkpoints[0], tmp_path / "src.txt", "--nbest", tmp_path / "nbest.txt")
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [int(row[0]) for row in rows] == [index for index, _ in expected]
    compared = [(float(row[1]), log_prob) for row, (_, log_prob) in zip(rows, expected,
                strict=True) if log_prob is not None]  # fmt: skip
    assert len(compared) >= 10  # outputs whose text encodes back to the same tokens
    for total, log_prob in compared:
        assert total == pytest.approx(log_prob, abs=1e-4)


@pytest.mark.parametrize(
    ("nbest_lines", "message"),
    [
        (["0 ||| a b ||| -1.0", "oops"], "nbest.txt line 2: expected 'index ||| hypothesis"),
        (["0 ||| a b ||| -1.0", "x ||| a ||| -2"], "nbest.txt line 2: expected"),
        (["3 ||| a b ||| -1.0"], "nbest.txt line 1: sentence index 3, but"),
    ],
)
def test_malformed_n_best_lists_name_the_file_and_line(checkpoints, tmp_path, nbest_lines,
                                                       message):  # fmt: skip
    (tmp_path / "src.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "nbest.txt").write_text("\n".join(nbest_lines) + "\n", encoding="utf-8")
    result = score_cli(checkpoints[0], tmp_path / "src.txt", "--nbest", tmp_path / "nbest.txt")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_input_errors(checkpoints, tmp_path):
    src_file, tgt_file = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src_file.write_text("a\nb\nc\n", encoding="utf-8")
    tgt_file.write_text("x\ny\n", encoding="utf-8")
    misaligned = score_cli(checkpoints[0], src_file, tgt_file)
    assert misaligned.exit_code == 2
    assert f"{src_file} has 3 lines but {tgt_file} has 2" in " ".join(misaligned.output.split())
    for arguments in ((), (tgt_file, "--nbest", tgt_file)):
        result = score_cli(checkpoints[0], src_file, *arguments)
        assert result.exit_code == 2 and "TGT or --nbest FILE" in result.output
    bad_format = score_cli(checkpoints[0], src_file, src_file, "--format", "csv")
    assert bad_format.exit_code == 2 and "csv" in bad_format.output


def test_an_exported_folder_scores_like_its_checkpoint(checkpoints, pairs, tmp_path):
    pytest.importorskip("ctranslate2")
    from seq2seq_attn.export import export_checkpoint

    folder = export_checkpoint(checkpoints[0], tmp_path / "ct2")
    src_file, tgt_file = pairs
    outputs = {}
    for model in (checkpoints[0], folder):
        result = score_cli(model, src_file, tgt_file, "--format", "json", "--per-token",
                           "--batch-tokens", "64")  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[model] = [json.loads(line) for line in result.stdout.splitlines()]
    for mine, theirs in zip(outputs[checkpoints[0]], outputs[folder], strict=True):
        assert theirs["tokens"] == mine["tokens"] and theirs["line"] == mine["line"]
        if mine["total"] is None:
            assert theirs["total"] is None
            continue
        assert theirs["total"] == pytest.approx(mine["total"], abs=1e-4)
        assert theirs["log_probs"] == pytest.approx(mine["log_probs"], abs=1e-4)
        assert not math.isnan(theirs["mean"])
