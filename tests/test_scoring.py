"""Forced decoding (seq2seq_attn.scoring): the scores are the model's teacher-forced
log-probabilities, batching does not change them, they equal beam search's own scores of its
outputs, and blank or over-long lines follow the documented rules."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from seq2seq_attn.config import (
    DecodeConfig,
    ModelConfig,
    RNNConfig,
    TokenizerConfig,
    TransformerConfig,
)
from seq2seq_attn.decoding import beam_search
from seq2seq_attn.models import Seq2Seq, build_model
from seq2seq_attn.scoring import encode_pairs, score_ids, score_pairs, scoring_batches
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 14
KINDS = {
    "transformer": ModelConfig(
        family="transformer",
        max_positions=64,
        transformer=TransformerConfig(
            d_model=32, num_heads=4, encoder_layers=2, decoder_layers=2, ff_size=64
        ),
    ),
    "rnn": ModelConfig(
        family="rnn", rnn=RNNConfig(embedding_size=16, hidden_size=32, attention_size=16)
    ),
}
kinds = pytest.mark.parametrize("kind", list(KINDS))


def make(kind: str, vocab: int = VOCAB, seed: int = 0, max_positions: int | None = None):
    """A seeded, untrained model (arbitrary but deterministic outputs)."""
    torch.manual_seed(seed)
    config = KINDS[kind]
    if max_positions is not None:
        config = dataclasses.replace(config, max_positions=max_positions)
    return build_model(config, vocab, vocab).eval()


def random_ids(lengths: list[int], seed: int) -> list[list[int]]:
    """Id lists of the given lengths, without special ids."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (length,), generator=generator).tolist() for length in lengths]


def reference_log_probs(model: Seq2Seq, src_ids: list[int], tgt_ids: list[int]) -> torch.Tensor:
    """One pair alone through ``model.forward``: log-softmax of the logits at each target
    position, picked at the target token and then the EOS, ``(T + 1,)``."""
    src = torch.tensor([[*src_ids, EOS_ID]])  # (1, S)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])  # (1, T + 1)
    with torch.no_grad():
        logits = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in)[0]  # (T + 1, V)
    log_probs = torch.log_softmax(logits.double(), dim=-1)  # (T + 1, V)
    return log_probs[torch.arange(len(tgt_ids) + 1), torch.tensor([*tgt_ids, EOS_ID])]


@kinds
def test_scores_are_the_teacher_forced_log_probabilities(kind):
    model = make(kind)
    src_ids = random_ids([5, 1, 9, 3, 7, 2], seed=1)
    tgt_ids = random_ids([4, 8, 0, 6, 2, 11], seed=2)
    scores = score_ids(model, src_ids, tgt_ids, max_tokens=24, device="cpu")
    assert len(scores) == 6
    for source, target, found in zip(src_ids, tgt_ids, scores, strict=True):
        expected = reference_log_probs(model, source, target)
        assert len(found) == len(target) + 1  # every token and the final EOS
        torch.testing.assert_close(torch.tensor(found, dtype=torch.double), expected, atol=1e-5,
                                   rtol=0)  # fmt: skip


@kinds
def test_batching_does_not_change_the_scores(kind):
    model = make(kind, seed=3).train()  # eval mode is the scorer's job, and it restores this
    src_ids = random_ids([3, 12, 1, 7, 7, 4, 10, 2], seed=4)
    tgt_ids = random_ids([9, 2, 5, 1, 13, 6, 3, 8], seed=5)
    together = score_ids(model, src_ids, tgt_ids, max_tokens=4096, device="cpu")
    assert len(scoring_batches(src_ids, tgt_ids, 4096)) == 1
    assert len(scoring_batches(src_ids, tgt_ids, 30, max_sentences=2)) >= 4
    in_small_batches = score_ids(model, src_ids, tgt_ids, 30, "cpu", max_sentences=2)
    one_at_a_time = [
        score_ids(model, [s], [t], 4096, "cpu")[0] for s, t in zip(src_ids, tgt_ids, strict=True)
    ]
    assert model.training
    for mine, small, alone in zip(together, in_small_batches, one_at_a_time, strict=True):
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(alone), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(small), torch.tensor(alone), atol=1e-5, rtol=0)


@kinds
def test_the_total_equals_beam_search_s_own_log_probability(kind):
    model = make(kind, seed=6)
    src_ids = random_ids([4, 9, 6, 2], seed=7)
    src = torch.zeros(4, 10, dtype=torch.long)  # (B, S) padded with 0
    for row, ids in enumerate(src_ids):
        src[row, : len(ids) + 1] = torch.tensor([*ids, EOS_ID])
    decode = DecodeConfig(beam_size=4, n_best=4, length_penalty=1.0, max_length_offset=3)
    found = beam_search(model, src, src != 0, BOS_ID, EOS_ID, decode)
    pairs = [(ids, h) for ids, hypotheses in zip(src_ids, found, strict=True) for h in hypotheses]
    totals = [
        sum(values)
        for values in score_ids(
            model, [ids for ids, _ in pairs], [h.tokens for _, h in pairs], 64, "cpu"
        )
    ]
    assert len(pairs) == 16 and any(len(h.tokens) != len(pairs[0][1].tokens) for _, h in pairs)
    for total, (_, hypothesis) in zip(totals, pairs, strict=True):
        assert total == pytest.approx(hypothesis.log_prob, abs=1e-4)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    """A small joint SentencePiece tokenizer trained on the toy corpus."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60, joint=True))


def test_text_pairs_blank_lines_and_long_targets(tokenizer, corpus, caplog):
    sources = (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:3]
    targets = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()[:3]
    longest = max(len(ids) for ids in tokenizer.encode_src(sources) + tokenizer.encode_tgt(targets))
    limit = longest + 1  # max_positions - 1: every line fits but the long target
    vocab = tokenizer.tgt_vocab_size
    model = make("transformer", vocab=vocab, seed=8, max_positions=limit + 1)
    long_target = " ".join(targets)
    src_texts = [sources[0], "  ", sources[1], sources[2], sources[0]]
    tgt_texts = [targets[0], targets[1], "", long_target, targets[0]]
    with caplog.at_level(logging.WARNING, logger="seq2seq_attn.scoring"):
        scores = score_pairs(model, tokenizer, src_texts, tgt_texts, 4096, "cpu")
    assert caplog.messages == [
        f"1 target line(s) exceed the model's limit of {limit} target tokens and were scored "
        f"with their first {limit} tokens only (lines 4)"
    ]
    assert scores[1] == []  # a blank source is not scored
    assert len(scores[2]) == 1  # a blank target: the EOS alone
    assert len(scores[3]) == limit + 1  # cut to max_positions - 1 tokens, then the EOS
    assert scores[4] == scores[0]
    src_ids, tgt_ids = encode_pairs(tokenizer, src_texts, tgt_texts, limit + 1)
    assert src_ids[0] == tokenizer.encode_src([sources[0]])[0] and src_ids[1] == []
    assert tgt_ids[3] == tokenizer.encode_tgt([long_target])[0][:limit]
    for row in (0, 2, 3):
        expected = reference_log_probs(model, src_ids[row], tgt_ids[row])
        torch.testing.assert_close(torch.tensor(scores[row], dtype=torch.double), expected,
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_batches_skip_blank_sources_and_respect_the_budget():
    src_ids = [[5] * 3, [], [5] * 9, [5], [5] * 2]
    tgt_ids = [[6] * 7, [6] * 4, [6], [6] * 2, []]
    batches = scoring_batches(src_ids, tgt_ids, max_tokens=16)
    assert sorted(index for batch in batches for index in batch) == [0, 2, 3, 4]
    sizes = {0: 8, 2: 10, 3: 3, 4: 3}  # max(len(src), len(tgt)) + 1
    assert all(len(batch) * max(sizes[i] for i in batch) <= 16 for batch in batches)
    with pytest.raises(ValueError, match="5 sources but 4 targets"):
        scoring_batches(src_ids, tgt_ids[:4], 16)
