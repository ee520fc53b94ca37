"""Lexically constrained beam search: a wide beam finds the best output that a brute-force
enumeration finds among those holding every phrase; outputs hold their phrases; impossible
constraints end at the limit; batches, chunks, ensembles, prefixes; no constraints is beam
search."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from test_decoding import KINDS, make, source_batch

from seq2seq_attn import decoding
from seq2seq_attn.config import DecodeConfig
from seq2seq_attn.constrained import constrained_beam_search
from seq2seq_attn.constrained_phrases import PhraseState, redundant
from seq2seq_attn.decoding import Hypothesis, beam_search, length_penalty
from seq2seq_attn.models import Ensemble, Seq2Seq, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

BOS, EOS = 2, 3  # as in test_decoding
TINY_VOCAB = 6  # PAD, UNK, BOS, EOS, 4, 5: every id but EOS may appear inside an output
LIMIT = 5  # at most 4 tokens and EOS: 781 outputs to enumerate
WIDE = 2500  # more beams than the enumeration's live hypotheses: the search is exhaustive
PHRASE_SETS = {
    "one-token": [[4]],
    "two-tokens": [[4, 5]],
    "twice": [[5], [5]],
    "overlapping": [[4, 5], [5, 4]],
    "specials": [[1, 4], [0]],
}


def tiny(kind: str, seed: int) -> Seq2Seq:
    """A seeded, untrained model over 6 source and target ids, in eval mode."""
    torch.manual_seed(seed)
    return build_model(KINDS[kind], TINY_VOCAB, TINY_VOCAB).eval()


def tiny_source(seed: int, length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """One source sentence ``(1, length)`` of ids 4 and 5 ending in EOS, and its mask."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, TINY_VOCAB, (1, length), generator=generator)
    src[0, -1] = EOS
    return src, src != 0


def holds(tokens: list[int], phrases: list[list[int]], taken: frozenset = frozenset()) -> bool:
    """Whether every phrase occurs in ``tokens`` at positions no other phrase uses."""
    if not phrases:
        return True
    first, rest = phrases[0], phrases[1:]
    spans = (frozenset(range(start, start + len(first)))
             for start in range(len(tokens) - len(first) + 1)
             if tokens[start : start + len(first)] == first)  # fmt: skip
    return any(not span & taken and holds(tokens, rest, taken | span) for span in spans)


def brute_force_best(model, src, src_mask, phrases, alpha, prefix=()) -> tuple[list[int], float]:
    """Every output of at most ``LIMIT`` tokens (EOS included) that starts with ``prefix`` and
    holds ``phrases``, scored by teacher-forced ``forward``: the best ``(tokens, score)``."""
    inner = [token for token in range(TINY_VOCAB) if token != EOS]
    best: tuple[list[int], float] = ([], -math.inf)
    for length in range(LIMIT):
        outputs = [
            list(output)
            for output in itertools.product(inner, repeat=length)
            if list(output[: len(prefix)]) == list(prefix) and holds(list(output), phrases)
        ]
        if not outputs:
            continue
        tgt_in = torch.tensor([[BOS, *output] for output in outputs])  # (n, length + 1)
        targets = torch.tensor([[*output, EOS] for output in outputs])  # (n, length + 1)
        with torch.no_grad():
            logits = model(src.expand(len(outputs), -1), src_mask.expand(len(outputs), -1), tgt_in)
        log_probs = logits.float().log_softmax(dim=-1).gather(2, targets.unsqueeze(-1))
        scores = log_probs.squeeze(-1).sum(dim=1) / length_penalty(length + 1, alpha)  # (n,)
        index = int(scores.argmax())
        if float(scores[index]) > best[1]:
            best = (outputs[index], float(scores[index]))
    return best


def teacher_forced_log_prob(model, src, src_mask, tokens: list[int]) -> float:
    """``log P(tokens, EOS | src)`` from ``forward`` (one sentence)."""
    with torch.no_grad():
        logits = model(src, src_mask, torch.tensor([[BOS, *tokens]]))
    log_probs = logits[0].float().log_softmax(dim=-1)  # (T, V)
    targets = torch.tensor([*tokens, EOS])
    return float(log_probs[torch.arange(len(targets)), targets].sum())


def tiny_decode(beam: int, alpha: float = 0.6) -> DecodeConfig:
    """Every output limited to ``LIMIT`` tokens, EOS included."""
    return DecodeConfig(beam_size=beam, length_penalty=alpha, max_length=LIMIT,
                        max_length_offset=LIMIT)  # fmt: skip


def check_against_brute_force(model, seed: int, phrases, alpha: float, prefix=()) -> Hypothesis:
    """The wide search's best equals the enumeration's, holds the phrases and is scored right."""
    src, src_mask = tiny_source(seed)
    prefixes = None if not prefix else [list(prefix)]
    found = constrained_beam_search(
        model, src, src_mask, BOS, EOS, tiny_decode(WIDE, alpha), [phrases], prefixes
    )[0][0]
    expected_tokens, expected_score = brute_force_best(model, src, src_mask, phrases, alpha, prefix)
    assert found.score == pytest.approx(expected_score, abs=1e-4)
    assert found.tokens == expected_tokens  # no ties between random floats
    assert found.unmet_constraints == 0
    assert found.log_prob == pytest.approx(
        teacher_forced_log_prob(model, src, src_mask, found.tokens), abs=1e-4
    )
    return found


@pytest.mark.parametrize("kind", ["transformer", "rnn-bahdanau"])
@pytest.mark.parametrize("name", list(PHRASE_SETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_wide_beam_finds_the_brute_force_best(kind, name, seed):
    phrases = PHRASE_SETS[name]
    found = check_against_brute_force(tiny(kind, seed), seed, phrases, alpha=0.6)
    assert holds(found.tokens, phrases)


def test_the_constraints_change_the_answer():
    """The enumeration above is not vacuous: unconstrained, the best output differs."""
    model = tiny("transformer", 0)
    src, src_mask = tiny_source(0)
    free_best = beam_search(model, src, src_mask, BOS, EOS, tiny_decode(WIDE))[0][0]
    assert not all(holds(free_best.tokens, phrases) for phrases in PHRASE_SETS.values())


def test_an_ensemble_is_searched_with_its_averaged_log_probabilities():
    ensemble = Ensemble([tiny("transformer", 3), tiny("rnn-bahdanau", 4)]).eval()
    check_against_brute_force(ensemble, 3, [[4, 5]], alpha=0.0)


@pytest.mark.parametrize("prefix", [[5], [4], [0, 5]])
def test_a_prefix_is_kept_and_advances_a_phrase_it_matches(prefix):
    model = tiny("transformer", 5)
    found = check_against_brute_force(model, 5, [[4, 5]], alpha=0.6, prefix=prefix)
    assert found.tokens[: len(prefix)] == prefix


def test_a_prefix_that_completes_the_phrase_lets_the_output_end_at_once():
    model = tiny("rnn-bahdanau", 6)
    src, src_mask = tiny_source(6)
    hypotheses = constrained_beam_search(
        model, src, src_mask, BOS, EOS, tiny_decode(WIDE, 0.0), [[[4, 5]]], [[4, 5]]
    )[0]
    assert [4, 5] in [h.tokens for h in hypotheses]  # no second [4, 5] needed


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_phrase_appears_with_a_normal_beam(kind):
    model = make(kind, seed=7)
    src, src_mask = source_batch([5, 3, 6, 4], seed=7)
    constraints = [[[5, 6]], [[7], [7]], [[8, 9, 10], [4]], [[11, 12], [12, 11], [9]]]
    options = DecodeConfig(beam_size=4, n_best=3, length_penalty=0.6)
    results = constrained_beam_search(model, src, src_mask, BOS, EOS, options, constraints)
    for hypotheses, phrases in zip(results, constraints, strict=True):
        assert len(hypotheses) == 3
        assert len({tuple(h.tokens) for h in hypotheses}) == 3
        ranks = [(h.unmet_constraints, -h.score) for h in hypotheses]
        assert ranks == sorted(ranks)  # fewest unmet phrases, then best score
        assert hypotheses[0].unmet_constraints == 0
        for hypothesis in hypotheses:  # an untrained model may run to the limit unmet
            assert holds(hypothesis.tokens, phrases) == (hypothesis.unmet_constraints == 0)
            assert EOS not in hypothesis.tokens


def test_greedy_search_widens_to_meet_its_constraints():
    model = make("transformer", seed=8)
    src, src_mask = source_batch([4, 5], seed=8)
    constraints = [[[6, 7, 8]], [[9], [10]]]
    options = DecodeConfig(beam_size=1, length_penalty=0.0)
    results = constrained_beam_search(model, src, src_mask, BOS, EOS, options, constraints)
    for (hypothesis,), phrases in zip(results, constraints, strict=True):
        assert holds(hypothesis.tokens, phrases)


@pytest.mark.parametrize("kind", ["transformer", "rnn-luong"])
def test_without_constraints_it_is_beam_search(kind):
    model = make(kind, seed=9)
    src, src_mask = source_batch([6, 2, 5, 3], seed=9)
    options = DecodeConfig(beam_size=4, n_best=3, length_penalty=0.6, min_length=1)
    expected = beam_search(model, src, src_mask, BOS, EOS, options, return_attention=True)
    for constraints in ([[]] * 4, [[[]], [], [[], []], []]):
        got = constrained_beam_search(
            model, src, src_mask, BOS, EOS, options, constraints, return_attention=True
        )
        for mine, theirs in zip(got, expected, strict=True):
            assert [h.tokens for h in mine] == [h.tokens for h in theirs]
            for a, b in zip(mine, theirs, strict=True):
                assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)
                assert a.score == pytest.approx(b.score, abs=1e-5)
                assert torch.allclose(a.attention, b.attention, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_batch_equals_each_sentence_alone_in_any_chunking(kind, monkeypatch):
    model = make(kind, seed=10)
    lengths = [5, 3, 6, 2]
    src, src_mask = source_batch(lengths, seed=10)
    constraints = [[[5, 6]], [], [[8, 9, 10], [4], [4]], [[7]]]
    prefixes = [[], [9, 9], [4], []]
    options = DecodeConfig(beam_size=3, n_best=2, length_penalty=0.6)
    together = constrained_beam_search(
        model, src, src_mask, BOS, EOS, options, constraints, prefixes, return_attention=True
    )
    monkeypatch.setattr(decoding, "CHUNK_ELEMENTS", 1)  # one sentence's beams at a time
    for row, length in enumerate(lengths):
        alone = constrained_beam_search(
            model, src[row : row + 1, :length], src_mask[row : row + 1, :length], BOS, EOS,
            options, constraints[row : row + 1], prefixes[row : row + 1], return_attention=True,
        )[0]  # fmt: skip
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]]
        for a, b in zip(alone, together[row], strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.tokens[: len(prefixes[row])] == prefixes[row]
            attention = b.attention  # (T + 1, S): rows sum to 1 over the real tokens
            assert attention.shape == (len(b.tokens) + 1, src.size(1))
            assert torch.allclose(attention.sum(-1), torch.ones(attention.size(0)), atol=1e-4)
            assert torch.all(attention[:, length:] == 0)
            assert torch.allclose(a.attention, attention[:, :length], atol=1e-5)


def test_impossible_constraints_end_at_the_limit_promptly():
    model = make("transformer", seed=11)
    src, src_mask = source_batch([4, 6], seed=11)
    options = DecodeConfig(beam_size=3, n_best=2, max_length=3, length_penalty=0.6)
    constraints = [[[4, 5, 6, 7]], [[8], [9, 9, 9, 9]]]
    started = time.perf_counter()
    results = constrained_beam_search(model, src, src_mask, BOS, EOS, options, constraints)
    assert time.perf_counter() - started < 5.0
    for hypotheses in results:
        assert hypotheses and all(len(h.tokens) + 1 <= 3 for h in hypotheses)
        assert all(h.unmet_constraints == 1 for h in hypotheses)
    assert any(8 in h.tokens for h in results[1])  # the phrase that fits is placed


def test_the_length_limit_grows_to_fit_the_constraints():
    model = make("rnn-bahdanau", seed=12)
    src, src_mask = source_batch([2], seed=12)  # limit 0.5 * 2 + 1 = 2 tokens, EOS included
    options = DecodeConfig(beam_size=2, max_length_ratio=0.5, max_length_offset=1)
    found = constrained_beam_search(model, src, src_mask, BOS, EOS, options, [[[4, 5], [6]]],
                                    [[7]])[0][0]  # fmt: skip
    assert found.unmet_constraints == 0
    assert found.tokens[0] == 7 and holds(found.tokens, [[4, 5], [6]])
    assert len(found.tokens) == 4  # prefix, 3 constraint tokens: the grown limit exactly


def test_bad_ids_and_counts_are_refused():
    model = make("transformer")
    src, src_mask = source_batch([3, 4])
    options = DecodeConfig(beam_size=2)
    with pytest.raises(ValueError, match=r"constraint of sentence 1: \[4, 3\] .* EOS \(3\)"):
        constrained_beam_search(model, src, src_mask, BOS, EOS, options, [[], [[4, EOS]]])
    with pytest.raises(ValueError, match="constraints: 1 lists for 2 sentences"):
        constrained_beam_search(model, src, src_mask, BOS, EOS, options, [[]])
    with pytest.raises(ValueError, match=r"prefix of sentence 0: \[-1\]"):
        constrained_beam_search(model, src, src_mask, BOS, EOS, options, [[], []], [[-1], []])


def test_a_prefix_longer_than_the_limit_is_cut_there():
    model = make("transformer", seed=13)
    src, src_mask = source_batch([3], seed=13)
    options = DecodeConfig(beam_size=2, max_length=4)
    found = constrained_beam_search(model, src, src_mask, BOS, EOS, options, [[[4]]],
                                    [[5, 6, 7, 8, 9, 10]])[0][0]  # fmt: skip
    assert found.tokens == [5, 6, 7]
    assert found.unmet_constraints == 1


def test_redundant_candidates_are_copies_and_dominated_idle_states():
    keys = torch.tensor([[7, 7, 7, 7, 7, 8, 7]])  # (1, M): which candidates hold equal tokens
    state = PhraseState(
        met=torch.tensor([[0b01, 0b11, 0b01, 0b10, 0b01, 0b00, 0b00]]),
        active=torch.tensor([[-1, -1, -1, -1, 1, -1, -1]]),
        progress=torch.tensor([[0, 0, 0, 0, 1, 0, 0]]),
        banks=torch.zeros((1, 7), dtype=torch.long),
    )
    usable = torch.tensor([[True, True, True, True, True, True, False]])
    expected = [[True, False, True, True, False, False, False]]
    # 0 and 3 met less than 1 (2 is also a copy of 0); 4 is inside a phrase; 5 holds other
    # tokens; 6 is no candidate
    assert redundant(keys, state, usable).tolist() == expected
