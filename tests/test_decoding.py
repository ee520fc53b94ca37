"""Greedy and beam search: against an uncached reference search, across batch sizes, and on a
trained toy model where beam search must find better-scoring outputs than greedy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seq2seq_attn import decoding
from seq2seq_attn.config import DecodeConfig, ModelConfig, RNNConfig, TransformerConfig
from seq2seq_attn.decoding import (
    beam_search,
    greedy_search,
    length_penalty,
    rows_per_chunk,
    top_k,
)
from seq2seq_attn.models import Seq2Seq, build_model

BOS, EOS, VOCAB = 2, 3, 14
KINDS = {
    "transformer": ModelConfig(
        family="transformer",
        max_positions=64,
        transformer=TransformerConfig(
            d_model=32, num_heads=4, encoder_layers=2, decoder_layers=2, ff_size=64
        ),
    ),
    "rnn-bahdanau": ModelConfig(
        family="rnn", rnn=RNNConfig(embedding_size=16, hidden_size=32, attention_size=16)
    ),
    "rnn-luong": ModelConfig(
        family="rnn",
        rnn=RNNConfig(embedding_size=16, hidden_size=32, decoder="luong", luong_score="general"),
    ),
}
kinds = pytest.mark.parametrize("kind", list(KINDS))
# Log-probabilities scored at once: the default (one chunk here), one row or sentence, and
# 2 rows (greedy) or 2 sentences of 3 beams (beam search) per chunk.
chunk_sizes = pytest.mark.parametrize("chunk_elements", [decoding.CHUNK_ELEMENTS, 1, 28, 84])
# top_k's blocks: the default (more than this vocabulary: torch.topk) and blocks of 4 columns
top_k_blocks = pytest.mark.parametrize("top_k_block", [decoding.TOP_K_BLOCK, 4])


pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, seed: int = 0) -> Seq2Seq:
    """A seeded, untrained model in eval mode (its outputs are arbitrary but deterministic)."""
    torch.manual_seed(seed)
    return build_model(KINDS[kind], VOCAB, VOCAB).eval()


def source_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids ``(B, S)`` ending in EOS, padded with 0, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        src[row, : length - 1] = torch.randint(4, VOCAB, (length - 1,), generator=generator)
        src[row, length - 1] = EOS
    return src, src != 0


def reference_beam_search(model, src, src_mask, options: DecodeConfig, prefix=()) -> list:
    """One sentence, no cache, no batching: rerun the whole decoder on every prefix.

    Returns ``[(tokens, log_prob, score)]`` best first; the same rules as the real search
    (finish EOS candidates ranked in the top K, keep the best K others, stop at K finished or at
    the length limit). A target ``prefix`` is the one beam to start from, with its
    teacher-forced log-probability, and raises the limit to its length + 1.
    """
    beam = options.beam_size
    limit = min(options.max_length, math.floor(int(src_mask.sum()) * options.max_length_ratio)
                + options.max_length_offset)  # fmt: skip
    limit = max(limit, len(prefix) + 1)
    start = float(teacher_forced(model, src, src_mask, prefix)[:-1].sum()) if prefix else 0.0
    beams, finished = [(list(prefix), start)], []
    for step in range(len(prefix), limit):
        candidates = []
        for tokens, total in beams:
            tgt_in = torch.tensor([[BOS, *tokens]])
            with torch.no_grad():
                logits = model(src, src_mask, tgt_in)[0, -1].float()
            log_probs = logits.log_softmax(-1)
            if step < options.min_length:
                log_probs[EOS] = -math.inf
            if step + 1 == limit:
                log_probs[torch.arange(VOCAB) != EOS] = -math.inf
            candidates += [(total + float(lp), tokens, t) for t, lp in enumerate(log_probs)]
        candidates.sort(key=lambda c: -c[0])
        candidates = [c for c in candidates[: 2 * beam] if c[0] > -math.inf]
        for total, tokens, token in candidates[:beam]:
            if token == EOS and len(finished) < beam:
                penalty = length_penalty(step + 1, options.length_penalty)
                finished.append((tokens, total, total / penalty))
        beams = [([*tokens, token], total) for total, tokens, token in candidates
                 if token != EOS][:beam]  # fmt: skip
        if len(finished) >= beam or step + 1 == limit:
            break
    return sorted(finished, key=lambda f: -f[2])[: options.n_best]


def teacher_forced(model, src, src_mask, tokens) -> torch.Tensor:
    """``(len(tokens) + 1,)`` the model's log-probability of each of ``tokens`` and of the EOS
    after them, for one sentence ``src`` ``(1, S)``, from one teacher-forced ``forward``."""
    with torch.no_grad():
        logits = model(src, src_mask, torch.tensor([[BOS, *tokens]]))  # (1, T + 1, V)
    log_probs = F.log_softmax(logits[0].float(), dim=-1)
    return log_probs[torch.arange(len(tokens) + 1), [*tokens, EOS]]


@kinds
@chunk_sizes
@top_k_blocks
@pytest.mark.parametrize("length_penalty_alpha", [0.0, 0.6])
def test_beam_search_equals_uncached_reference(
    kind, chunk_elements, top_k_block, length_penalty_alpha, monkeypatch
):
    monkeypatch.setattr(decoding, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(decoding, "TOP_K_BLOCK", top_k_block)
    model = make(kind)
    options = DecodeConfig(
        beam_size=3, n_best=3, length_penalty=length_penalty_alpha, max_length_offset=4,
        max_length_ratio=1.0, min_length=1,
    )  # fmt: skip
    src, src_mask = source_batch([5, 3, 4])
    batched = beam_search(model, src, src_mask, BOS, EOS, options)
    for row in range(3):
        length = int(src_mask[row].sum())
        expected = reference_beam_search(
            model, src[row : row + 1, :length], src_mask[row : row + 1, :length], options
        )
        got = [(h.tokens, h.log_prob, h.score) for h in batched[row]]
        assert [g[0] for g in got] == [e[0] for e in expected]
        for (_, log_prob, score), (_, ref_log_prob, ref_score) in zip(got, expected, strict=True):
            assert log_prob == pytest.approx(ref_log_prob, abs=1e-4)
            assert score == pytest.approx(ref_score, abs=1e-4)


@kinds
@chunk_sizes
@top_k_blocks
def test_greedy_equals_uncached_argmax_and_beam_one(kind, chunk_elements, top_k_block, monkeypatch):
    monkeypatch.setattr(decoding, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(decoding, "TOP_K_BLOCK", top_k_block)
    model = make(kind, seed=1)
    src, src_mask = source_batch([6, 2, 4, 5], seed=1)
    options = DecodeConfig(
        beam_size=1, max_length_ratio=1.5, max_length_offset=3, length_penalty=0.0
    )
    greedy = greedy_search(model, src, src_mask, BOS, EOS, options)
    beam_one = beam_search(model, src, src_mask, BOS, EOS, options)
    for row, hypothesis in enumerate(greedy):
        tgt_in = torch.tensor([[BOS, *hypothesis.tokens]])
        length = int(src_mask[row].sum())
        with torch.no_grad():
            logits = model(src[row : row + 1, :length], src_mask[row : row + 1, :length], tgt_in)
        log_probs = F.log_softmax(logits[0].float(), dim=-1)  # (T, V)
        limit = math.floor(length * 1.5) + 3
        predicted = log_probs.argmax(-1).tolist()
        # every emitted token is the argmax, except EOS forced at the length limit
        emitted = [*hypothesis.tokens, EOS]
        forced = len(emitted) == limit and predicted[-1] != EOS
        assert predicted[: len(emitted) - 1] == emitted[:-1]
        assert forced or predicted[-1] == EOS
        expected_log_prob = float(log_probs[torch.arange(len(emitted)), emitted].sum())
        assert hypothesis.log_prob == pytest.approx(expected_log_prob, abs=1e-4)
        assert beam_one[row][0].tokens == hypothesis.tokens
        assert beam_one[row][0].log_prob == pytest.approx(hypothesis.log_prob, abs=1e-4)


@kinds
def test_batch_composition_does_not_change_results(kind):
    model = make(kind, seed=2)
    src, src_mask = source_batch([7, 3, 5, 2, 6], seed=2)
    options = DecodeConfig(beam_size=4, n_best=2, length_penalty=0.6)
    together = beam_search(model, src, src_mask, BOS, EOS, options, return_attention=True)
    greedy_together = greedy_search(model, src, src_mask, BOS, EOS, options, return_attention=True)
    for row in range(5):
        length = int(src_mask[row].sum())
        alone_src, alone_mask = src[row : row + 1, :length], src_mask[row : row + 1, :length]
        alone = beam_search(model, alone_src, alone_mask, BOS, EOS, options, return_attention=True)[
            0
        ]
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]]
        assert alone[0].score == pytest.approx(together[row][0].score, abs=1e-4)
        greedy_alone = greedy_search(model, alone_src, alone_mask, BOS, EOS, options)[0]
        assert greedy_alone.tokens == greedy_together[row].tokens
        for hypothesis in (*together[row], greedy_together[row]):
            attention = hypothesis.attention  # (T + 1, S): rows sum to 1 over real tokens
            assert attention.shape == (len(hypothesis.tokens) + 1, src.size(1))
            assert torch.allclose(attention.sum(-1), torch.ones(attention.size(0)), atol=1e-4)
            assert torch.all(attention[:, length:] == 0)


@kinds
def test_beam_search_decodes_its_first_step_with_one_row_a_sentence(kind, monkeypatch):
    model = make(kind, seed=5)
    src, src_mask = source_batch([6, 4, 5], seed=5)
    options = DecodeConfig(beam_size=4, n_best=4, length_penalty=0.6, min_length=2)
    rows_per_step = []
    decode_step = model.decode_step

    def counting(prev_tokens, state, need_attention=False):
        rows_per_step.append(prev_tokens.numel())
        return decode_step(prev_tokens, state, need_attention)

    monkeypatch.setattr(model, "decode_step", counting)
    found = beam_search(model, src, src_mask, BOS, EOS, options, return_attention=True)
    assert rows_per_step[:2] == [3, 3 * 4]  # one row a sentence, then its beams
    expanded = decoding.Beams.start.__func__  # a start with every beam's row, as streaming's

    def start_expanded(cls, *args, **kwargs):
        return expanded(cls, *args, **{**kwargs, "expanded": True})

    monkeypatch.setattr(decoding.Beams, "start", classmethod(start_expanded))
    rows_per_step.clear()
    before = beam_search(model, src, src_mask, BOS, EOS, options, return_attention=True)
    assert rows_per_step[0] == 3 * 4
    for ours, theirs in zip(found, before, strict=True):
        assert [h.tokens for h in ours] == [h.tokens for h in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=0)


@kinds
def test_a_beam_wider_than_half_the_vocabulary_equals_the_reference(kind):
    model = make(kind, seed=6)  # the first step has 14 candidates a sentence for 2 x 8 places
    options = DecodeConfig(beam_size=8, n_best=8, length_penalty=0.6, max_length=5)
    src, src_mask = source_batch([4, 3], seed=6)
    batched = beam_search(model, src, src_mask, BOS, EOS, options)
    for row in range(2):
        length = int(src_mask[row].sum())
        expected = reference_beam_search(
            model, src[row : row + 1, :length], src_mask[row : row + 1, :length], options
        )
        assert [h.tokens for h in batched[row]] == [e[0] for e in expected]
        assert [h.score for h in batched[row]] == pytest.approx([e[2] for e in expected], abs=1e-4)


def test_a_transformer_state_of_one_row_a_sentence_expands_to_beams():
    model = make("transformer")
    src, src_mask = source_batch([5, 3])
    state = model.init_state(model.encode(src, src_mask))  # (2 rows, beams=1)
    _, state, _ = model.decode_step(torch.tensor([BOS, BOS]), state)
    expanded = state.select(torch.tensor([0, 0, 0, 1, 1, 1]), beams=3)
    assert expanded.beams == 3 and expanded.rows == 6
    assert expanded.cross_caches[0].key.size(0) == 2  # still once per sentence
    assert expanded.self_caches[0].key.size(0) == 6
    assert torch.equal(expanded.self_caches[0].key[3], state.self_caches[0].key[1])
    with pytest.raises(ValueError, match="one sentence's rows"):
        state.select(torch.tensor([0, 1, 1, 1]), beams=2)


@kinds
def test_n_best_lists_are_sorted_and_complete(kind):
    model = make(kind, seed=3)
    src, src_mask = source_batch([4, 6], seed=3)
    results = beam_search(
        model, src, src_mask, BOS, EOS, DecodeConfig(beam_size=5, n_best=4, length_penalty=0.0)
    )
    for hypotheses in results:
        assert len(hypotheses) == 4
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == 4


@kinds
def test_length_limits_are_respected(kind):
    model = make(kind, seed=4)
    src, src_mask = source_batch([5, 3], seed=4)
    options = DecodeConfig(
        beam_size=3, min_length=4, max_length=6, max_length_ratio=5.0, length_penalty=0.0
    )
    for search in (greedy_search, beam_search):
        results = search(model, src, src_mask, BOS, EOS, options)
        for hypotheses in results:
            for hypothesis in hypotheses if isinstance(hypotheses, list) else [hypotheses]:
                assert 4 <= len(hypothesis.tokens) + 1 <= 6
                assert EOS not in hypothesis.tokens


@pytest.mark.parametrize("length", [7, 64, 640, 40_000, 40_001, 39_999])
@pytest.mark.parametrize("k", [1, 10])
def test_top_k_equals_torch_topk(length, k):
    generator = torch.Generator().manual_seed(length + k)
    values = torch.randn(13, length, generator=generator)
    values[:3, : length // 2] = -math.inf  # banned tokens, rows at their length limit
    values[3] = -math.inf
    values[3, -1] = 0.0  # one finite value, in the last (maybe shorter) block
    k = min(k, length)
    expected_values, expected_indices = values.topk(k, dim=1)
    found_values, found_indices = top_k(values, k)
    assert torch.equal(found_values, expected_values)
    finite = expected_values.isfinite()  # which -inf entries come back is arbitrary
    assert torch.equal(found_indices[finite], expected_indices[finite])
    assert torch.equal(values.gather(1, found_indices)[finite], found_values[finite])
    assert int(found_indices.min()) >= 0 and int(found_indices.max()) < length
    assert all(len(set(row)) == k for row in found_indices.tolist())  # -inf slots too


def test_top_k_breaks_ties_between_equal_values_only():
    values = torch.randint(0, 20, (50, 1000), generator=torch.Generator().manual_seed(0)).float()
    found_values, found_indices = top_k(values, 10)
    assert torch.equal(found_values, values.topk(10, dim=1).values)
    assert torch.equal(values.gather(1, found_indices), found_values)
    assert all(len(set(row)) == 10 for row in found_indices.tolist())


def test_chunks_hold_whole_sentences_on_the_cpu_and_everything_elsewhere():
    cpu_logits = torch.empty(1000, 8000)
    assert rows_per_chunk(cpu_logits, 5) == 65  # 13 sentences of 5 beams in 2^19 values
    assert rows_per_chunk(cpu_logits, 1) == 65
    assert rows_per_chunk(torch.empty(7, 10**6), 3) == 3  # at least one sentence
    assert rows_per_chunk(torch.empty(1000, 8000, device="meta"), 5) == 1000


# ----- target prefixes -----------------------------------------------------------------------

PREFIXES = [[5, 6, 7], [], [9], [4, 4, 12, 8, 11, 5, 13, 6, 7, 10]]  # the last beyond the limit
PREFIX_OPTIONS = DecodeConfig(
    beam_size=3, n_best=3, length_penalty=0.6, max_length_ratio=1.0, max_length_offset=3
)


def run_search(search, model, src, src_mask, options, **guides) -> list[list]:
    """``search``'s hypotheses per sentence (greedy's single one in a list)."""
    found = search(model, src, src_mask, BOS, EOS, options, **guides)
    return [hypotheses if isinstance(hypotheses, list) else [hypotheses] for hypotheses in found]


@kinds
@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_outputs_start_with_the_prefix_and_count_its_log_probability(kind, search):
    model = make(kind, seed=5)
    src, src_mask = source_batch([4, 6, 3, 5], seed=5)
    found = run_search(search, model, src, src_mask, PREFIX_OPTIONS, prefixes=PREFIXES)
    for row, (prefix, hypotheses) in enumerate(zip(PREFIXES, found, strict=True)):
        length = int(src_mask[row].sum())
        limit = max(length + 3, len(prefix) + 1)  # the last prefix raised its limit
        for hypothesis in hypotheses:
            assert hypothesis.tokens[: len(prefix)] == prefix
            assert len(prefix) < len(hypothesis.tokens) + 1 <= limit
            one_src, one_mask = src[row : row + 1, :length], src_mask[row : row + 1, :length]
            expected = teacher_forced(model, one_src, one_mask, hypothesis.tokens).sum()
            assert hypothesis.log_prob == pytest.approx(float(expected), abs=1e-4)
            penalty = length_penalty(len(hypothesis.tokens) + 1, PREFIX_OPTIONS.length_penalty)
            assert hypothesis.score == pytest.approx(hypothesis.log_prob / penalty, abs=1e-5)


@kinds
@pytest.mark.parametrize("chunk_elements", [decoding.CHUNK_ELEMENTS, 28])
def test_beam_search_with_prefixes_equals_uncached_reference(kind, chunk_elements, monkeypatch):
    monkeypatch.setattr(decoding, "CHUNK_ELEMENTS", chunk_elements)
    model = make(kind, seed=6)
    src, src_mask = source_batch([4, 6, 3, 5], seed=6)
    found = beam_search(model, src, src_mask, BOS, EOS, PREFIX_OPTIONS, prefixes=PREFIXES)
    for row, prefix in enumerate(PREFIXES):
        length = int(src_mask[row].sum())
        one_src, one_mask = src[row : row + 1, :length], src_mask[row : row + 1, :length]
        expected = reference_beam_search(model, one_src, one_mask, PREFIX_OPTIONS, prefix)
        assert [h.tokens for h in found[row]] == [e[0] for e in expected]
        for hypothesis, (_, log_prob, score) in zip(found[row], expected, strict=True):
            assert hypothesis.log_prob == pytest.approx(float(log_prob), abs=1e-4)
            assert hypothesis.score == pytest.approx(float(score), abs=1e-4)


@kinds
@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_empty_prefixes_change_nothing_and_batching_does_not_matter(kind, search):
    model = make(kind, seed=7)
    src, src_mask = source_batch([5, 3, 6, 4], seed=7)
    plain = run_search(search, model, src, src_mask, PREFIX_OPTIONS)
    empty = run_search(search, model, src, src_mask, PREFIX_OPTIONS, prefixes=[[]] * 4)
    assert [[(h.tokens, h.log_prob) for h in hyps] for hyps in empty] == [
        [(h.tokens, h.log_prob) for h in hyps] for hyps in plain
    ]
    together = run_search(search, model, src, src_mask, PREFIX_OPTIONS, prefixes=PREFIXES)
    for row, prefix in enumerate(PREFIXES):
        length = int(src_mask[row].sum())
        alone = run_search(
            search, model, src[row : row + 1, :length], src_mask[row : row + 1, :length],
            PREFIX_OPTIONS, prefixes=[prefix],
        )[0]  # fmt: skip
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]]
        assert alone[0].log_prob == pytest.approx(together[row][0].log_prob, abs=1e-4)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_a_prefix_is_cut_to_the_models_positions(search):
    model = make("transformer", seed=8)  # max_positions 64: at most 63 tokens and the EOS
    src, src_mask = source_batch([4], seed=8)
    prefix = [4 + i % 10 for i in range(70)]
    (hypothesis, *_), *_ = run_search(search, model, src, src_mask, PREFIX_OPTIONS,
                                      prefixes=[prefix])  # fmt: skip
    assert hypothesis.tokens == prefix[:63]
    expected = teacher_forced(model, src, src_mask, prefix[:63]).sum()
    assert hypothesis.log_prob == pytest.approx(float(expected), abs=1e-3)


def test_bad_prefixes_are_refused():
    model = make("rnn-luong")
    src, src_mask = source_batch([4, 3])
    with pytest.raises(ValueError, match="2 target prefixes for a batch of 1"):
        greedy_search(model, src[:1], src_mask[:1], BOS, EOS, PREFIX_OPTIONS, prefixes=[[5], [6]])
    with pytest.raises(ValueError, match="target prefix 1 holds the EOS id 3"):
        beam_search(model, src, src_mask, BOS, EOS, PREFIX_OPTIONS, prefixes=[[5], [6, EOS]])


def test_decode_settings_are_checked():
    with pytest.raises(ValueError, match=r"decode\.n_best"):
        DecodeConfig(beam_size=2, n_best=3, length_penalty=0.0)


# ----- a trained toy model -------------------------------------------------------------------


def reversal_batch(generator: torch.Generator, batch: int = 32):
    """Source: random tokens + EOS; target: the tokens reversed (a task attention must solve)."""
    lengths = torch.randint(2, 8, (batch,), generator=generator)
    src = torch.zeros(batch, 8, dtype=torch.long)
    tgt_in = torch.zeros(batch, 8, dtype=torch.long)
    tgt_out = torch.zeros(batch, 8, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        tokens = torch.randint(4, VOCAB, (length,), generator=generator)
        src[row, :length], src[row, length] = tokens, EOS
        tgt_in[row, 0], tgt_in[row, 1 : length + 1] = BOS, tokens.flip(0)
        tgt_out[row, :length], tgt_out[row, length] = tokens.flip(0), EOS
    return src, src != 0, tgt_in, tgt_out


@pytest.fixture(scope="module")
def trained_transformer() -> Seq2Seq:
    """A small Transformer trained briefly on reversal: good enough to be confident, not exact."""
    torch.manual_seed(0)
    model = build_model(KINDS["transformer"], VOCAB, VOCAB)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        src, src_mask, tgt_in, tgt_out = reversal_batch(generator)
        logits = model(src, src_mask, tgt_in)
        loss = F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_beam_finds_better_scores_than_greedy_on_a_trained_model(trained_transformer):
    src, src_mask, _, tgt_out = reversal_batch(torch.Generator().manual_seed(99), batch=64)
    options = DecodeConfig(beam_size=5, length_penalty=0.0)
    greedy = greedy_search(trained_transformer, src, src_mask, BOS, EOS, options)
    beam = beam_search(trained_transformer, src, src_mask, BOS, EOS, options)
    greedy_mean = sum(h.log_prob for h in greedy) / len(greedy)
    beam_mean = sum(hyps[0].log_prob for hyps in beam) / len(beam)
    assert beam_mean >= greedy_mean - 1e-6
    assert any(  # beam search really searched: somewhere it beat greedy
        hyps[0].log_prob > h.log_prob + 1e-3 for hyps, h in zip(beam, greedy, strict=True)
    )
    # the model learned the task, so the search results mean something
    correct = sum(
        hyps[0].tokens == row[row != 0][:-1].tolist()
        for hyps, row in zip(beam, tgt_out, strict=True)
    )
    assert correct >= 32
