"""Translating lists of sentences: input order, blank lines, batching, truncation and scoring."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from seq2seq_attn.config import DataConfig, DecodeConfig, ModelConfig, TokenizerConfig
from seq2seq_attn.config import TransformerConfig as TfConfig
from seq2seq_attn.decoding import Hypothesis, greedy_search
from seq2seq_attn.evaluate import evaluate_split
from seq2seq_attn.metrics import corpus_scores
from seq2seq_attn.models import Seq2Seq, build_model
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_tokenizer
from seq2seq_attn.translation.torch_backend import translate_n_best

TOY = Path(__file__).resolve().parents[1] / "data" / "toy"
GREEDY = DecodeConfig(beam_size=1, max_length_offset=3, length_penalty=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def translate(
    model: Seq2Seq, tokenizer: Tokenizer, texts: list[str], decode: DecodeConfig, max_tokens: int,
    device: str,
) -> list[Hypothesis]:  # fmt: skip
    """The best hypothesis of each text."""
    found = translate_n_best(model, tokenizer, texts, decode, max_tokens, device)
    return [hypotheses[0] for hypotheses in found]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small joint SentencePiece model of the toy corpus."""
    src = (TOY / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (TOY / "train.tgt").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(src[:1000], tgt[:1000], TokenizerConfig(vocab_size=96))


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Twelve toy sentences of varied lengths."""
    return (TOY / "dev.src").read_text(encoding="utf-8").splitlines()[:12]


def make_model(tokenizer: Tokenizer, family: str = "transformer", max_positions: int = 64):
    """A seeded, untrained tiny model (its outputs are arbitrary but deterministic)."""
    torch.manual_seed(0)
    section = TfConfig(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=1, ff_size=64)
    config = ModelConfig(family=family, max_positions=max_positions, transformer=section)
    config.rnn.embedding_size, config.rnn.hidden_size, config.rnn.attention_size = 16, 32, 16
    size = tokenizer.src_vocab_size
    return build_model(config, size, size, joint_vocab=True)


def single(model: Seq2Seq, tokenizer: Tokenizer, text: str, options: DecodeConfig) -> list[int]:
    """Greedy output tokens for one sentence alone."""
    ids = [*tokenizer.encode_src([text])[0], EOS_ID]
    src = torch.tensor([ids])
    return greedy_search(model, src, src != 0, BOS_ID, EOS_ID, options)[0].tokens


@pytest.mark.parametrize("family", ["transformer", "rnn"])
def test_order_is_kept_and_batching_does_not_change_outputs(tokenizer, sentences, family):
    model = make_model(tokenizer, family).eval()
    expected = [single(model, tokenizer, text, GREEDY) for text in sentences]
    for max_tokens in (8, 64, 4096):
        hypotheses = translate(model, tokenizer, sentences, GREEDY, max_tokens, "cpu")
        assert [h.tokens for h in hypotheses] == expected


def test_beam_outputs_do_not_depend_on_batching(tokenizer, sentences):
    model = make_model(tokenizer)
    options = DecodeConfig(beam_size=3, max_length_offset=3, length_penalty=0.0)
    one_by_one = translate(model, tokenizer, sentences, options, max_tokens=1, device="cpu")
    together = translate(model, tokenizer, sentences, options, max_tokens=4096, device="cpu")
    assert [h.tokens for h in together] == [h.tokens for h in one_by_one]
    assert model.training  # the caller's mode is restored


def test_blank_lines_give_empty_outputs_and_never_reach_the_model(
    tokenizer, sentences, monkeypatch
):
    model = make_model(tokenizer).eval()
    encoded_rows = []
    encode = model.encode
    monkeypatch.setattr(
        model, "encode", lambda src, mask: encoded_rows.append(src.size(0)) or encode(src, mask)
    )
    texts = ["", sentences[0], "   ", sentences[1], ""]
    hypotheses = translate(model, tokenizer, texts, GREEDY, 4096, "cpu")
    assert len(hypotheses) == 5
    assert [h.tokens == [] for h in hypotheses] == [True, False, True, False, True]
    assert sum(encoded_rows) == 2
    assert hypotheses[1].tokens == single(model, tokenizer, sentences[0], GREEDY)


def test_long_inputs_are_truncated_with_a_warning(tokenizer, sentences, caplog):
    model = make_model(tokenizer, max_positions=6).eval()
    long_text = " ".join(sentences[:3])
    with caplog.at_level(logging.WARNING, logger="seq2seq_attn.translation"):
        hypotheses = translate(model, tokenizer, [sentences[0], long_text], GREEDY, 4096, "cpu")
    assert len(hypotheses) == 2
    assert "exceed the model's limit of 5 source tokens" in caplog.text
    assert "(lines 1, 2)" in caplog.text or "(lines 2)" in caplog.text
    first_five = tokenizer.decode_src([tokenizer.encode_src([long_text])[0][:5]])[0]
    assert hypotheses[1].tokens == single(model, tokenizer, first_five, GREEDY)


def test_evaluate_split_scores_detokenized_translations(tokenizer, sentences, tmp_path):
    model = make_model(tokenizer).eval()
    outputs = translate(model, tokenizer, sentences, GREEDY, 4096, "cpu")
    pairs = [
        (src, ref)
        for src, ref in zip(
            sentences, tokenizer.decode_tgt([h.tokens for h in outputs]), strict=True
        )
        if ref
    ]
    assert len(pairs) >= 5
    sources, references = [src for src, _ in pairs], [ref for _, ref in pairs]
    (tmp_path / "dev.src").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "dev.tgt").write_text("\n".join(references) + "\n", encoding="utf-8")
    data = DataConfig(
        src_lang="src", tgt_lang="tgt", dev=str(tmp_path / "dev"), cache_dir=str(tmp_path / "c")
    )
    evaluation = evaluate_split(model, tokenizer, data, "dev", GREEDY, "cpu")
    assert (evaluation.sources, evaluation.hypotheses) == (sources, references)
    # untrained outputs are often one long "word": no 4-gram, so BLEU may be 0 even when equal
    assert evaluation.scores["bleu"] == corpus_scores(references, references)["bleu"]
    assert evaluation.scores["chrf"].score == pytest.approx(100.0)
    (tmp_path / "dev.tgt").write_text("zz qq\n" * len(pairs), encoding="utf-8")
    unrelated = evaluate_split(model, tokenizer, data, "dev", GREEDY, "cpu")
    assert unrelated.scores["chrf"].score < 10.0
