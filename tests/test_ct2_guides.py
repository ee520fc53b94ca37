"""An exported CTranslate2 folder with search guides: target prefixes kept and counted as the
checkpoint counts them, sampling reproducible for a seed and scored as the model's
log-probability, lexical constraints refused."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_ct2 import sentences, write_checkpoint

from seq2seq_attn.checkpoint import save_checkpoint
from seq2seq_attn.config import DecodeConfig, TokenizerConfig
from seq2seq_attn.export import export_checkpoint
from seq2seq_attn.sampling import Sampling
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, train_tokenizer
from seq2seq_attn.translation import TranslationError, TranslationSettings, open_translator

ctranslate2 = pytest.importorskip("ctranslate2")
pytestmark = pytest.mark.usefixtures("one_thread")

DECODE = DecodeConfig(beam_size=3, n_best=3, length_penalty=0.6, max_length_ratio=1.0,
                      max_length_offset=4)  # fmt: skip


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    """A seeded, untrained Transformer checkpoint (a joint SentencePiece model of the toy
    corpus) and its CTranslate2 export (fp32).

    EOS is made likely (its output row points along the decoder's final norm bias), so that
    some outputs end with an EOS and others at their length limit: CTranslate2's scores of
    the two kinds are corrected in different ways.
    """
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    tokenizer = train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60, joint=True))
    directory = tmp_path_factory.mktemp("guides")
    checkpoint = write_checkpoint(directory / "model.pt", tokenizer, {}, decode=DECODE)
    contents = torch.load(checkpoint, weights_only=True)
    bias = contents["model"]["decoder_norm.bias"]  # (D,)
    for tied in ("output.weight", "tgt_embed.embedding.weight"):
        contents["model"][tied][EOS_ID] = 2.0 * bias / bias.norm() ** 2
    save_checkpoint(contents, checkpoint)
    return checkpoint, export_checkpoint(checkpoint, directory / "ct2")


def ended_early(translator, lines, prefixes, found) -> int:
    """How many hypotheses of ``found`` ended with an EOS before their length limit."""
    count = 0
    for line, prefix, hypotheses in zip(lines, prefixes, found, strict=True):
        src_length = len(translator.tokenizer.encode_src([line])[0]) + 1  # EOS included
        prefix_length = len(translator.tokenizer.encode_tgt([prefix])[0])
        limit = max(src_length + DECODE.max_length_offset, prefix_length + 1)
        count += sum(len(hypothesis.tokens) + 1 < limit for hypothesis in hypotheses)
    return count


def teacher_forced_log_prob(translator, src_text: str, tokens: list[int]) -> float:
    """The checkpoint model's log-probability of ``tokens`` and the EOS after them."""
    src = torch.tensor([[*translator.tokenizer.encode_src([src_text])[0], EOS_ID]])  # (1, S)
    with torch.no_grad():
        logits = translator.model(
            src, torch.ones_like(src, dtype=torch.bool), torch.tensor([[BOS_ID, *tokens]])
        )  # (1, T + 1, V)
    log_probs = logits[0].float().log_softmax(-1)
    return float(log_probs[torch.arange(len(tokens) + 1), [*tokens, EOS_ID]].sum())


def prefixes_of(corpus, count: int) -> list[str]:
    """Target prefixes for the first ``count`` dev lines: none, short, and longer than the
    output limit (it raises the limit)."""
    targets = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()
    shapes = ["", " ".join(targets[1].split()[:1]), " ".join(targets[2].split()[:3]), targets[3]]
    return [shapes[i % len(shapes)] for i in range(count)]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_prefixes_are_kept_and_counted_as_the_checkpoint_counts_them(exported, corpus, beam_size):
    checkpoint, folder = exported
    ours = open_translator(checkpoint, TranslationSettings(device="cpu"))
    theirs = open_translator(folder, TranslationSettings(device="cpu"))
    ours.decode = theirs.decode = dataclasses.replace(DECODE, beam_size=beam_size, n_best=beam_size)
    lines = [line for line in sentences(corpus) if line][:8]
    prefixes = prefixes_of(corpus, len(lines))
    assert any(len(ours.tokenizer.encode_tgt([p])[0]) > 12 for p in prefixes)  # beyond limits
    found = theirs.n_best(lines, prefixes)
    expected = ours.n_best(lines, prefixes)
    if beam_size > 1:  # (greedy outputs of this model all reach their limit)
        assert 0 < ended_early(theirs, lines, prefixes, found) < sum(map(len, found))
    compared = 0
    for line, prefix, hypotheses, mine in zip(lines, prefixes, found, expected, strict=True):
        prefix_ids = theirs.tokenizer.encode_tgt([prefix])[0]
        assert len({tuple(h.tokens) for h in hypotheses}) == len(hypotheses)  # no repeats
        for hypothesis in hypotheses:
            assert hypothesis.tokens[: len(prefix_ids)] == prefix_ids
            reference = teacher_forced_log_prob(ours, line, hypothesis.tokens)
            assert hypothesis.log_prob == pytest.approx(reference, abs=1e-4)
        if beam_size > 1 and prefix_ids and prefix_ids in [h.tokens for h in mine]:
            continue  # CTranslate2 lets only its best beam end right after a prefix
        assert [h.tokens for h in hypotheses] == [h.tokens for h in mine]
        assert hypotheses[0].score == pytest.approx(mine[0].score, abs=1e-4)
        compared += 1
    assert compared >= len(lines) - 2


def test_no_prefix_and_empty_prefixes_give_the_same_outputs(exported, corpus):
    _, folder = exported
    theirs = open_translator(folder, TranslationSettings(device="cpu"))
    lines = sentences(corpus)  # a blank line among them
    plain = theirs.n_best(lines)
    assert theirs.n_best(lines, [""] * len(lines)) == plain
    with pytest.raises(TranslationError, match="2 target prefixes for 13 input lines"):
        theirs.n_best(lines, ["", ""])


def test_sampling_is_reproducible_for_a_seed_and_scored_as_the_model(exported, corpus):
    checkpoint, folder = exported
    lines = [line for line in sentences(corpus) if line][:6]
    prefixes = prefixes_of(corpus, len(lines))
    ours = open_translator(checkpoint, TranslationSettings(device="cpu"))

    def draw(seed: int, **filters) -> list[list]:
        """Four samples per line from a freshly opened folder."""
        sampling = Sampling(seed=seed, **filters)
        settings = TranslationSettings(device="cpu", n_best=4, sampling=sampling)
        return open_translator(folder, settings).n_best(lines, prefixes)

    first = draw(5, temperature=0.8, top_p=0.9)
    assert 0 < ended_early(ours, lines, prefixes, first) < sum(map(len, first))
    assert draw(5, temperature=0.8, top_p=0.9) == first
    assert [[s.tokens for s in samples] for samples in draw(6, temperature=0.8, top_p=0.9)] != [
        [s.tokens for s in samples] for samples in first
    ]
    for line, prefix, samples in zip(lines, prefixes, first, strict=True):
        prefix_ids = ours.tokenizer.encode_tgt([prefix])[0]
        assert len(samples) == 4
        if len(prefix_ids) < 10:  # room to differ (a longer prefix fills its whole limit)
            assert len({tuple(s.tokens) for s in samples}) > 1
        for sample in samples:
            assert sample.tokens[: len(prefix_ids)] == prefix_ids
            reference = teacher_forced_log_prob(ours, line, sample.tokens)
            assert sample.log_prob == pytest.approx(reference, abs=1e-4)
            penalty = ((5 + len(sample.tokens) + 1) / 6) ** DECODE.length_penalty
            assert sample.score == pytest.approx(sample.log_prob / penalty, abs=1e-5)


def test_top_k_one_samples_are_greedy_search_and_top_k_beyond_the_vocabulary_is_all(
    exported, corpus
):
    checkpoint, folder = exported
    lines = [line for line in sentences(corpus) if line][:4]
    greedy = open_translator(checkpoint, TranslationSettings(device="cpu", beam_size=1))
    for top_k, expect_greedy in ((1, True), (10_000, False)):
        sampling = Sampling(top_k=top_k, seed=1)
        settings = TranslationSettings(device="cpu", n_best=3, sampling=sampling)
        found = open_translator(folder, settings).n_best(lines)
        for samples, best in zip(found, greedy.translate(lines), strict=True):
            assert len(samples) == 3
            assert all(s.tokens == best.tokens for s in samples) == expect_greedy
            assert all(math.isfinite(s.log_prob) for s in samples)


def test_constraints_are_refused_with_the_way_out(exported, corpus):
    _, folder = exported
    theirs = open_translator(folder, TranslationSettings(device="cpu"))
    lines = [line for line in sentences(corpus) if line][:2]
    with pytest.raises(TranslationError, match=r"lexical constraints.*\.pt checkpoint"):
        theirs.n_best(lines, constraints=[["ka"], []])
    assert theirs.n_best(lines, constraints=[[], []]) == theirs.n_best(lines)
