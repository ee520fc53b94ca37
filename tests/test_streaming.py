"""Streaming beam search: sentences that join a running search between its steps get exactly
what a search of each sentence alone gives, for every family, an ensemble and greedy search;
decoder states joined at different steps and source lengths go on as each would alone."""

from __future__ import annotations

import pytest
import torch
from test_decoding import BOS, EOS, KINDS, make, source_batch

from seq2seq_attn.config import DecodeConfig, ModelConfig, RNNConfig
from seq2seq_attn.decoding import beam_search, greedy_search
from seq2seq_attn.models import build_model
from seq2seq_attn.models.ensemble import Ensemble
from seq2seq_attn.streaming import StreamingSearch

pytestmark = pytest.mark.usefixtures("one_thread")

LSTM = ModelConfig(family="rnn", rnn=RNNConfig(embedding_size=16, hidden_size=32, cell="lstm"))
ALL_KINDS = {**KINDS, "rnn-lstm": LSTM}


def model_of(kind: str, seed: int = 0):
    """A seeded, untrained model in eval mode; ``ensemble``: a Transformer and a Luong RNN."""
    if kind == "ensemble":
        return Ensemble([make("transformer", seed), make("rnn-luong", seed + 1)]).eval()
    if kind in KINDS:
        return make(kind, seed)
    torch.manual_seed(seed)
    return build_model(ALL_KINDS[kind], 14, 14).eval()


def alone(model, src, src_mask, options) -> list[list[tuple]]:
    """``(tokens, log_prob, score)`` of each row's n-best, searched one sentence at a time."""
    found = []
    for row in range(src.size(0)):
        length = int(src_mask[row].sum())
        hypotheses = beam_search(
            model, src[row : row + 1, :length], src_mask[row : row + 1, :length], BOS, EOS,
            options,
        )[0]  # fmt: skip
        found.append([(h.tokens, h.log_prob, h.score) for h in hypotheses])
    return found


def streamed(model, src, src_mask, options, joins: list[tuple[int, list[int]]]) -> dict:
    """Run a :class:`StreamingSearch`, adding rows ``joins[i][1]`` of the batch just before step
    ``joins[i][0]``, until every sentence is done; the n-best of each row, by row."""
    search = StreamingSearch(model, options, BOS, EOS)
    rows_of_keys, results, step = {}, {}, 0
    pending = list(joins)
    while pending or search.live:
        while pending and pending[0][0] <= step:
            rows = pending.pop(0)[1]
            width = int(src_mask[rows].sum(1).max())
            keys = search.add(src[rows, :width], src_mask[rows, :width])
            rows_of_keys.update(zip(keys, rows, strict=True))
        for key, hypotheses in search.step():
            results[rows_of_keys[key]] = [(h.tokens, h.log_prob, h.score) for h in hypotheses]
        step += 1
    return results


def assert_same(got: list[tuple], expected: list[tuple]) -> None:
    """The same tokens, and log-probabilities and scores within rounding."""
    assert [tokens for tokens, _, _ in got] == [tokens for tokens, _, _ in expected]
    for (_, log_prob, score), (_, ref_log_prob, ref_score) in zip(got, expected, strict=True):
        assert log_prob == pytest.approx(ref_log_prob, abs=1e-4)
        assert score == pytest.approx(ref_score, abs=1e-4)


@pytest.mark.parametrize("kind", [*ALL_KINDS, "ensemble"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_sentences_joining_a_running_search_get_what_they_get_alone(kind, beam_size):
    model = model_of(kind, seed=3)
    src, src_mask = source_batch([7, 3, 5, 2, 6, 4, 8], seed=3)
    options = DecodeConfig(
        beam_size=beam_size, n_best=beam_size, length_penalty=0.6, max_length_ratio=1.5,
        max_length_offset=3,
    )  # fmt: skip
    # joins before the first step, mid-search (longer and shorter sources than the live ones),
    # two groups in a row, and one after the first sentences may have finished
    joins = [(0, [0, 1]), (2, [2]), (3, [3, 4]), (4, [5]), (9, [6])]
    results = streamed(model, src, src_mask, options, joins)
    expected = alone(model, src, src_mask, options)
    assert sorted(results) == list(range(7))
    for row in range(7):
        assert_same(results[row], expected[row])
    if beam_size == 1:  # a beam of one is greedy search
        greedy = greedy_search(model, src, src_mask, BOS, EOS, options)
        assert [results[row][0][0] for row in range(7)] == [h.tokens for h in greedy]


@pytest.mark.parametrize("kind", ["transformer", "rnn-bahdanau"])
def test_a_long_running_search_keeps_only_what_its_live_sentences_need(kind):
    """Sentences joining and leaving for many steps: the token history is as long as the
    longest live output, and at each join the source width is the longest live source and the
    Transformer's self-attention cache as long as the longest live output."""
    model = model_of(kind, seed=8)
    src, src_mask = source_batch([9, 3, 4, 3, 5, 2, 4, 3] * 4, seed=8)
    options = DecodeConfig(beam_size=2, max_length_ratio=1.0, max_length_offset=2)
    search, added, steps = StreamingSearch(model, options, BOS, EOS), 0, 0
    while added < src.size(0) or search.live:
        if added < src.size(0) and steps % 2 == 0:  # a sentence every other step
            width = int(src_mask[added].sum())
            search.add(src[added : added + 1, :width], src_mask[added : added + 1, :width])
            added += 1
            beams, state = search.beams, search.beams.state
            assert state.src_mask.size(1) == int(state.src_mask.sum(1).max())
            if kind == "transformer":
                assert state.position == int(beams.steps.max())
        search.step()
        steps += 1
        if search.beams is not None:
            assert search.beams.tokens.size(1) == int(search.beams.steps.max())
    assert steps > 40  # many joins and departures


def test_min_length_and_length_limits_hold_per_sentence():
    model = model_of("transformer", seed=4)
    src, src_mask = source_batch([6, 2, 5], seed=4)
    options = DecodeConfig(beam_size=2, n_best=2, min_length=2, max_length_ratio=1.0,
                           max_length_offset=1)  # fmt: skip
    results = streamed(model, src, src_mask, options, [(0, [0]), (1, [1]), (3, [2])])
    expected = alone(model, src, src_mask, options)
    for row in range(3):
        assert_same(results[row], expected[row])
        limit = int(src_mask[row].sum()) + 1
        assert all(2 <= len(tokens) < limit for tokens, _, _ in results[row])


@pytest.mark.parametrize("kind", [*ALL_KINDS, "ensemble"])
def test_joined_states_decode_as_the_states_alone(kind):
    """Two states at different steps and source lengths, joined, give each row the logits its
    own state gives, step after step (then reordered by select, as beam search does)."""
    model = model_of(kind, seed=5)
    first_src, first_mask = source_batch([6, 4], seed=5)
    second_src, second_mask = source_batch([3], seed=6)
    first = model.init_state(model.encode(first_src, first_mask), 2)
    second = model.init_state(model.encode(second_src, second_mask), 2)
    generator = torch.Generator().manual_seed(0)

    def tokens(rows: int) -> torch.Tensor:
        return torch.randint(4, 14, (rows,), generator=generator)

    with torch.no_grad():
        for _ in range(3):  # the first state runs ahead
            _, first, _ = model.decode_step(tokens(4), first)
        joined = first.join(second)
        for _ in range(3):
            step_tokens = tokens(6)
            logits, joined, _ = model.decode_step(step_tokens, joined)
            first_logits, first, _ = model.decode_step(step_tokens[:4], first)
            second_logits, second, _ = model.decode_step(step_tokens[4:], second)
            torch.testing.assert_close(logits, torch.cat([first_logits, second_logits]))
        order = torch.tensor([4, 5, 2, 3])  # the second sentence first, then the first's second
        joined, second, first = joined.select(order), second, first.select(torch.tensor([2, 3]))
        step_tokens = tokens(4)
        logits, _, _ = model.decode_step(step_tokens, joined)
        second_logits, _, _ = model.decode_step(step_tokens[:2], second)
        first_logits, _, _ = model.decode_step(step_tokens[2:], first)
        torch.testing.assert_close(logits, torch.cat([second_logits, first_logits]))


def test_a_transformer_state_drops_the_history_no_row_sees():
    model = model_of("transformer", seed=7)
    src, src_mask = source_batch([4, 5], seed=7)
    early = model.init_state(model.encode(src[:1], src_mask[:1]), 1)
    late = model.init_state(model.encode(src[1:], src_mask[1:]), 1)
    with torch.no_grad():
        for _ in range(4):
            _, early, _ = model.decode_step(torch.tensor([5]), early)
        joined = early.join(late)
        assert joined.position == 4 and joined.offsets.tolist() == [0, 4]
        _, joined, _ = model.decode_step(torch.tensor([5, 6]), joined)
        alone_late = joined.select(torch.tensor([1]))  # the early sentence finished
        rejoined = alone_late.join(model.init_state(model.encode(src[:1], src_mask[:1]), 1))
    # the late sentence has one step of its own: the 4 slots before it are dropped
    assert rejoined.position == 1 and rejoined.offsets.tolist() == [0, 1]
    assert len(rejoined.self_caches[0]) == 1
