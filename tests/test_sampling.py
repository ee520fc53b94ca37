"""Sampling: settings checked, samples reproducible for a seed whatever the batch, the
filters (temperature, top-k, top-p) against reference computations, and each sample's
log-probability against the model's teacher-forced one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from test_decoding import BOS, EOS, KINDS, VOCAB, make, source_batch, teacher_forced

from seq2seq_attn.config import DecodeConfig
from seq2seq_attn.decoding import greedy_search, length_penalty
from seq2seq_attn.models.common import EncoderOutput
from seq2seq_attn.sampling import Sampling, sample_search

kinds = pytest.mark.parametrize("kind", list(KINDS))
pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = DecodeConfig(beam_size=1, length_penalty=0.6, max_length_ratio=1.5, max_length_offset=3)
PREFIXES = [[5, 6], [], [9, 9, 9, 9, 9, 9, 9, 9, 9, 9], [7]]


def draw(model, lengths, sampling, num_samples=4, keys=None, prefixes=None, options=OPTIONS):
    """``num_samples`` samples of each of a batch of sources of ``lengths`` (seeded)."""
    src, src_mask = source_batch(lengths, seed=11)
    keys = torch.arange(len(lengths)) if keys is None else torch.tensor(keys)
    return sample_search(
        model, src, src_mask, BOS, EOS, options, sampling, keys, num_samples, prefixes
    )


def tokens_of(found) -> list[list[list[int]]]:
    """The token lists of every sample of every sentence."""
    return [[sample.tokens for sample in samples] for samples in found]


def test_settings_are_checked_with_the_option_to_fix():
    assert Sampling() == Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=0)
    for bad, option in (
        ({"temperature": 0.0}, "--temperature 0.0"),
        ({"temperature": -1.0}, "--temperature -1.0"),
        ({"temperature": math.nan}, "--temperature nan"),
        ({"top_k": -1}, "--top-k -1"),
        ({"top_p": 0.0}, "--top-p 0.0"),
        ({"top_p": 1.5}, "--top-p 1.5"),
    ):
        with pytest.raises(ValueError, match=f"^{option}: must be"):
            Sampling(**bad)


@kinds
def test_a_seed_gives_the_same_samples_and_another_seed_others(kind):
    model = make(kind, seed=1)
    first = tokens_of(draw(model, [5, 3, 6], Sampling(seed=3)))
    assert tokens_of(draw(model, [5, 3, 6], Sampling(seed=3))) == first
    assert tokens_of(draw(model, [5, 3, 6], Sampling(seed=4))) != first
    assert all(len({tuple(s) for s in samples}) > 1 for samples in first)  # samples differ


@kinds
def test_samples_do_not_depend_on_the_batch(kind):
    model = make(kind, seed=2)
    lengths = [5, 3, 6, 4]
    sampling = Sampling(temperature=0.8, top_k=8, top_p=0.95, seed=5)
    together = draw(model, lengths, sampling, keys=[10, 11, 12, 13], prefixes=PREFIXES)
    for row, length in enumerate(lengths):
        src, src_mask = source_batch(lengths, seed=11)
        alone = sample_search(
            model, src[row : row + 1, :length], src_mask[row : row + 1, :length], BOS, EOS,
            OPTIONS, sampling, torch.tensor([10 + row]), 4, [PREFIXES[row]],
        )[0]  # fmt: skip
        assert [s.tokens for s in alone] == [s.tokens for s in together[row]]
        for one, other in zip(alone, together[row], strict=True):
            assert one.log_prob == pytest.approx(other.log_prob, abs=1e-4)
    src, src_mask = source_batch(lengths, seed=11)
    order = [2, 0, 3, 1]
    shuffled = sample_search(
        model, src[order], src_mask[order], BOS, EOS, OPTIONS, sampling,
        torch.tensor([10 + row for row in order]), 4, [PREFIXES[row] for row in order],
    )  # fmt: skip
    assert tokens_of(shuffled) == [tokens_of(together)[row] for row in order]


@kinds
def test_log_prob_is_the_models_and_prefixes_and_limits_hold(kind):
    model = make(kind, seed=3)
    lengths = [5, 3, 6, 4]
    options = DecodeConfig(
        beam_size=1, length_penalty=0.6, min_length=3, max_length_ratio=1.5, max_length_offset=3
    )
    sampling = Sampling(temperature=0.7, top_k=6, top_p=0.9, seed=1)
    found = draw(model, lengths, sampling, prefixes=PREFIXES, options=options)
    src, src_mask = source_batch(lengths, seed=11)
    for row, (length, prefix, samples) in enumerate(zip(lengths, PREFIXES, found, strict=True)):
        assert len(samples) == 4
        limit = max(math.floor(length * 1.5) + 3, len(prefix) + 1)
        for sample in samples:
            assert sample.tokens[: len(prefix)] == prefix
            assert 3 <= len(sample.tokens) + 1 <= limit and EOS not in sample.tokens
            one_src, one_mask = src[row : row + 1, :length], src_mask[row : row + 1, :length]
            expected = teacher_forced(model, one_src, one_mask, sample.tokens).sum()
            assert sample.log_prob == pytest.approx(float(expected), abs=1e-4)
            penalty = length_penalty(len(sample.tokens) + 1, options.length_penalty)
            assert sample.score == pytest.approx(sample.log_prob / penalty, abs=1e-5)


@kinds
@pytest.mark.parametrize("sampling", [Sampling(top_k=1, seed=2), Sampling(top_p=1e-6, seed=2)])
def test_top_k_one_and_a_tiny_nucleus_are_greedy_search(kind, sampling):
    model = make(kind, seed=4)
    src, src_mask = source_batch([5, 3, 6], seed=11)
    greedy = greedy_search(model, src, src_mask, BOS, EOS, OPTIONS)
    for samples, best in zip(draw(model, [5, 3, 6], sampling), greedy, strict=True):
        assert [sample.tokens for sample in samples] == [best.tokens] * 4


def reference_nucleus(log_probs: torch.Tensor, sampling: Sampling, slack: float) -> set[int]:
    """The tokens a step may sample from, by sorting: the ``top_k`` best of ``log_probs``
    ``(V,)`` over the temperature, then the fewest of those, most probable first, whose
    renormalised mass reaches ``top_p`` (+ ``slack`` for rounding)."""
    scores, ids = (log_probs / sampling.temperature).sort(descending=True)
    if sampling.top_k:
        scores, ids = scores[: sampling.top_k], ids[: sampling.top_k]
    probs = scores.softmax(dim=0)
    mass_before = torch.cumsum(probs, dim=0) - probs
    return set(ids[mass_before < sampling.top_p + slack].tolist())


def tokens_outside_the_nucleus(model, found, lengths, nucleus: Sampling) -> tuple[int, int, int]:
    """``(sampled tokens outside the reference nucleus of ``nucleus``, tokens checked, steps
    whose nucleus leaves tokens out)`` over every sample (the EOS forced at the limit is not
    chosen, so not checked)."""
    src, src_mask = source_batch(lengths, seed=11)
    outside = checked = narrow = 0
    for row, (length, samples) in enumerate(zip(lengths, found, strict=True)):
        limit = math.floor(length * 1.5) + 3
        one_src, one_mask = src[row : row + 1, :length], src_mask[row : row + 1, :length]
        for sample in samples:
            emitted = [*sample.tokens, EOS]
            with torch.no_grad():
                logits = model(one_src, one_mask, torch.tensor([[BOS, *sample.tokens]]))[0]
            for step, token in enumerate(emitted[: limit - 1]):
                allowed = reference_nucleus(logits[step].float().log_softmax(-1), nucleus, 1e-4)
                outside += token not in allowed
                checked += 1
                narrow += len(allowed) < VOCAB // 2
    return outside, checked, narrow


@pytest.mark.parametrize(
    "sampling", [Sampling(top_p=0.5, seed=6), Sampling(temperature=1.5, top_k=9, top_p=0.6)]
)
def test_every_sampled_token_lies_in_the_nucleus(sampling):
    model = make("transformer", seed=5)
    lengths = [5, 3, 6]
    found = draw(model, lengths, sampling, num_samples=8)
    outside, checked, narrow = tokens_outside_the_nucleus(model, found, lengths, sampling)
    assert outside == 0 and checked > 100 and narrow > checked // 2
    # the check has teeth: the same sampling without the nucleus leaves it often
    unfiltered = draw(model, lengths, Sampling(sampling.temperature, sampling.top_k), 8)
    assert tokens_outside_the_nucleus(model, unfiltered, lengths, sampling)[0] > checked // 10


@dataclass
class FixedState:
    """Which sentence each decoder row belongs to; nothing else."""

    sentences: torch.Tensor  # (N,)

    def select(self, batch_indices: torch.Tensor) -> FixedState:
        """The rows ``batch_indices``."""
        return FixedState(self.sentences[batch_indices])


@dataclass
class FixedLogits:
    """A stand-in model whose every step gives sentence ``b`` the logits ``logits[b]``
    ``(B, V)``: distributions whose sampling frequencies can be compared with the expected."""

    logits: torch.Tensor
    max_positions: int | None = None

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> EncoderOutput:
        """Encoder states that hold each sentence's index (and nothing else)."""
        sentences = torch.arange(src.size(0), dtype=torch.float).view(-1, 1, 1)
        return EncoderOutput(states=sentences.expand(-1, src.size(1), 1), mask=src_mask)

    def init_state(self, encoder_output: EncoderOutput, beams: int = 1) -> FixedState:
        """The sentence of each row."""
        return FixedState(encoder_output.states[:, 0, 0].long())

    def decode_step(self, prev_tokens, state, need_attention=False):
        """Each row's sentence's logits."""
        return self.logits[state.sentences], state, None


def reference_distribution(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``(V,)`` the probabilities a sampler should draw ``logits`` ``(V,)`` with: those of
    :func:`reference_nucleus`, renormalised; 0 elsewhere."""
    kept = sorted(reference_nucleus(logits.log_softmax(0), sampling, slack=0.0))
    expected = torch.full_like(logits, -math.inf)
    expected[kept] = logits[kept] / sampling.temperature
    return expected.softmax(dim=0)


SETTINGS = [
    Sampling(seed=9),
    Sampling(temperature=0.5, seed=9),
    Sampling(temperature=2.0, seed=9),
    Sampling(temperature=0.7, top_k=3, seed=9),
    Sampling(top_k=10_000, seed=9),
    Sampling(top_p=0.6, seed=9),
    Sampling(temperature=1.3, top_k=150, top_p=0.8, seed=9),
]


@pytest.mark.parametrize("sampling", SETTINGS, ids=str)
@pytest.mark.parametrize("vocab", [8, 300])
def test_frequencies_follow_the_filtered_distribution(sampling, vocab):
    generator = torch.Generator().manual_seed(vocab)
    # a peaked distribution and a flat one (its nucleus beyond the first 64 candidates)
    logits = torch.stack([torch.randn(vocab, generator=generator) * s for s in (2.5, 0.3)])
    model = FixedLogits(logits)
    one_token = DecodeConfig(beam_size=1, max_length=2)  # one sampled token, then EOS
    src, src_mask = source_batch([4, 4], seed=0)
    count = 12_000
    found = sample_search(
        model, src, src_mask, BOS, EOS, one_token, sampling, torch.tensor([0, 1]), count
    )
    for row, samples in enumerate(found):
        first = torch.tensor([sample.tokens[0] if sample.tokens else EOS for sample in samples])
        frequencies = torch.bincount(first, minlength=vocab).float() / count
        expected = reference_distribution(logits[row], sampling)
        assert (frequencies[expected == 0] == 0).all()  # nothing outside the filters
        assert torch.allclose(frequencies, expected, atol=0.015)
        assert (frequencies - expected).abs().sum() / 2 < 0.1  # total variation distance
        model_log_probs = logits[row].log_softmax(dim=0)  # the model's, whatever the sampling
        for sample, token in zip(samples[:50], first[:50].tolist(), strict=True):
            eos_after = model_log_probs[EOS] if token != EOS else 0.0
            expected_log_prob = float(model_log_probs[token] + eos_after)
            assert sample.log_prob == pytest.approx(expected_log_prob, abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@kinds
def test_the_same_samples_on_cuda_as_on_the_cpu(kind):
    model = make(kind, seed=6)
    sampling = Sampling(temperature=0.9, top_k=10, top_p=0.9, seed=8)
    on_cpu = draw(model, [5, 3, 6], sampling, prefixes=PREFIXES[:3])
    src, src_mask = source_batch([5, 3, 6], seed=11)
    on_cuda = sample_search(
        model.cuda(), src.cuda(), src_mask.cuda(), BOS, EOS, OPTIONS, sampling,
        torch.arange(3), 4, PREFIXES[:3],
    )  # fmt: skip
    assert tokens_of(on_cuda) == tokens_of(on_cpu)
