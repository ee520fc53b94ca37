"""Attention layers against torch's own implementations, plus masking, gradients and caching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seq2seq_attn.attention import (
    AdditiveScore,
    DotScore,
    GeneralScore,
    KVCache,
    MultiHeadAttention,
    ScaledDotScore,
    build_score,
    causal_mask,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
    softmax_attention,
)

ATOL = 1e-5


def paired_attention(d_model: int, num_heads: int, bias: bool = True, seed: int = 0):
    """Our MultiHeadAttention and torch's nn.MultiheadAttention holding the same weights."""
    torch.manual_seed(seed)
    ours = MultiHeadAttention(d_model, num_heads, bias=bias).eval()
    reference = nn.MultiheadAttention(d_model, num_heads, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        for name, proj in zip("qkv", (ours.q_proj, ours.k_proj, ours.v_proj), strict=True):
            start = "qkv".index(name) * d_model
            proj.weight.copy_(reference.in_proj_weight[start : start + d_model])
            if bias:
                proj.bias.copy_(reference.in_proj_bias[start : start + d_model])
                # torch initialises in_proj_bias to zeros; make the biases matter.
                proj.bias.normal_()
                reference.in_proj_bias[start : start + d_model].copy_(proj.bias)
        ours.out_proj.weight.copy_(reference.out_proj.weight)
        if bias:
            ours.out_proj.bias.normal_()
            reference.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, reference


# ----- masks ---------------------------------------------------------------------------------


def test_padding_mask_marks_real_tokens():
    mask = padding_mask(torch.tensor([3, 1, 0]), max_len=4)
    expected = torch.tensor(
        [[True, True, True, False], [True, False, False, False], [False, False, False, False]]
    )
    assert torch.equal(mask, expected)
    assert padding_mask(torch.tensor([2, 5])).shape == (2, 5)


def test_causal_mask_square_and_with_cached_prefix():
    assert torch.equal(causal_mask(3), torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    # Two new queries after three cached positions: query 0 is position 3, query 1 position 4.
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)
    with pytest.raises(ValueError, match="key_len"):
        causal_mask(4, 2)


# ----- score functions -----------------------------------------------------------------------


def test_scores_match_their_formulas():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    dot = torch.einsum("bqd,bkd->bqk", q, k)
    assert torch.allclose(DotScore()(q, k), dot, atol=ATOL)
    assert torch.allclose(ScaledDotScore()(q, k), dot / math.sqrt(8), atol=ATOL)

    k6 = torch.randn(2, 5, 6)
    general = GeneralScore(8, 6)
    w = general.key_proj.weight  # (Dq, Dk)
    assert torch.allclose(general(q, k6), torch.einsum("bqd,de,bke->bqk", q, w, k6), atol=ATOL)

    additive = AdditiveScore(8, 6, hidden_dim=7)
    wq, wk, bk = additive.query_proj.weight, additive.key_proj.weight, additive.key_proj.bias
    v = additive.energy.weight[0]
    hidden = torch.tanh((q @ wq.T)[:, :, None, :] + (k6 @ wk.T + bk)[:, None, :, :])
    assert torch.allclose(additive(q, k6), hidden @ v, atol=ATOL)


def test_build_score_by_name_and_errors():
    assert isinstance(build_score("dot", 4, 4), DotScore)
    assert isinstance(build_score("scaled_dot", 4, 4), ScaledDotScore)
    assert isinstance(build_score("bilinear", 4, 6), GeneralScore)
    concat = build_score("concat", 4, 6, hidden_dim=5)
    assert isinstance(concat, AdditiveScore)
    assert concat.energy.in_features == 5
    with pytest.raises(ValueError, match="unknown attention score 'dott'"):
        build_score("dott", 4, 4)
    with pytest.raises(ValueError, match="equal query and key sizes"):
        build_score("dot", 4, 6)


@pytest.mark.parametrize("name", ["dot", "scaled_dot", "general", "additive"])
def test_score_gradcheck(name):
    torch.manual_seed(0)
    score = build_score(name, 5, 5, hidden_dim=4).double()
    q = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    k = torch.randn(2, 4, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: score(q, k), (q, k))
    params = tuple(score.parameters())
    if params:  # gradients reach the score's own parameters too
        assert torch.autograd.gradcheck(
            lambda *ps: torch.func.functional_call(
                score, dict(zip([n for n, _ in score.named_parameters()], ps, strict=True)), (q, k)
            ),
            params,
        )


# ----- softmax attention ---------------------------------------------------------------------


def test_masked_keys_get_zero_weight_and_rows_sum_to_one():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 6) * 10
    mask = padding_mask(torch.tensor([4, 6]))[:, None, :]  # (B, 1, Tk)
    weights = masked_softmax(scores, mask)
    assert torch.all(weights[0, :, 4:] == 0.0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3), atol=ATOL)


def test_fully_masked_rows_give_zeros_not_nan():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of sentence 0 may attend nothing
    for need_weights in (False, True):
        context, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
        assert not torch.isnan(context).any()
        assert torch.all(context[0, 1] == 0.0)
        if weights is not None:
            assert torch.all(weights[0, 1] == 0.0)
    context, weights = softmax_attention(ScaledDotScore()(q, k), v, mask)
    assert torch.all(context[0, 1] == 0.0) and torch.all(weights[0, 1] == 0.0)


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal"])
def test_scaled_dot_product_attention_equals_torch(mask_kind):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8)
    mask = {
        "none": None,
        "padding": padding_mask(torch.tensor([6, 2, 4]))[:, None, None, :],
        "causal": causal_mask(6),
    }[mask_kind]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    fast, no_weights = scaled_dot_product_attention(q, k, v, mask)
    explicit, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    assert no_weights is None
    assert torch.allclose(fast, expected, atol=ATOL)
    assert torch.allclose(explicit, expected, atol=ATOL)
    assert weights.shape == (3, 2, 6, 6)


@pytest.mark.parametrize("queries", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_step_attention_equals_torch(queries, dtype):
    # Without gradients and with few queries (a decoding step) the explicit path runs; it must
    # agree with torch's kernel, fully masked rows included (zero context).
    torch.manual_seed(0)
    q = torch.randn(4, 2, queries, 8).to(dtype)
    k, v = torch.randn(4, 2, 7, 8).to(dtype), torch.randn(4, 2, 7, 8).to(dtype)
    mask = padding_mask(torch.tensor([7, 3, 1, 0]), 7)[:, None, None, :]  # (B, 1, 1, S)
    with torch.no_grad():
        context, weights = scaled_dot_product_attention(q, k, v, mask)
        expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert weights is None and context.dtype == dtype
    expected[3] = 0.0  # torch gives NaN where every key is masked; ours a zero context
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(context.float(), expected, atol=tolerance, rtol=0)


def test_softmax_attention_dropout_changes_context_not_weights():
    torch.manual_seed(0)
    scores, v = torch.randn(2, 4, 5), torch.randn(2, 5, 3)
    _, weights_plain = softmax_attention(scores, v)
    context, weights = softmax_attention(scores, v, dropout_p=0.5)
    assert torch.equal(weights, weights_plain)
    assert not torch.allclose(context, weights_plain @ v)


# ----- multi-head attention against torch.nn.MultiheadAttention ------------------------------


def test_mha_self_attention_with_causal_mask_equals_torch():
    ours, reference = paired_attention(16, 4)
    x = torch.randn(3, 7, 16)
    mask = causal_mask(7)
    out, weights = ours(x, x, x, mask=mask, need_weights=True)
    ref_out, ref_weights = reference(x, x, x, attn_mask=~mask, need_weights=True)
    assert weights.shape == (3, 4, 7, 7)
    assert torch.allclose(out, ref_out, atol=ATOL)
    assert torch.allclose(weights.mean(dim=1), ref_weights, atol=ATOL)
    fast_out, no_weights = ours(x, x, x, mask=mask)
    assert no_weights is None
    assert torch.allclose(fast_out, ref_out, atol=ATOL)


@pytest.mark.parametrize("bias", [True, False])
def test_mha_cross_attention_with_key_padding_equals_torch(bias):
    ours, reference = paired_attention(12, 3, bias=bias, seed=1)
    tgt, memory = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    src_mask = padding_mask(torch.tensor([6, 3]))  # (B, Tk)
    out, weights = ours(tgt, memory, memory, mask=src_mask[:, None, :], need_weights=True)
    ref_out, ref_weights = reference(tgt, memory, memory, key_padding_mask=~src_mask)
    assert torch.allclose(out, ref_out, atol=ATOL)
    assert torch.allclose(weights.mean(dim=1), ref_weights, atol=ATOL)
    assert torch.all(weights[1, :, :, 3:] == 0.0)
    fast_out, _ = ours(tgt, memory, memory, mask=src_mask[:, None, :])
    assert torch.allclose(fast_out, ref_out, atol=ATOL)


def test_mha_separate_key_and_value_equals_torch():
    ours, reference = paired_attention(8, 2, seed=2)
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out, _ = ours(q, k, v)
    ref_out, _ = reference(q, k, v)
    assert torch.allclose(out, ref_out, atol=ATOL)


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_mha_gradcheck():
    torch.manual_seed(0)
    mha = MultiHeadAttention(6, 2).double()
    x = torch.randn(2, 4, 6, dtype=torch.double, requires_grad=True)
    memory = torch.randn(2, 5, 6, dtype=torch.double, requires_grad=True)
    mask = padding_mask(torch.tensor([5, 2]))[:, None, :]
    for need_weights in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, m, nw=need_weights: mha(x, m, m, mask=mask, need_weights=nw)[0], (x, memory)
        )
        assert torch.autograd.gradcheck(
            lambda x, nw=need_weights: mha(x, x, x, mask=causal_mask(4), need_weights=nw)[0], (x,)
        )


# ----- incremental decoding ------------------------------------------------------------------


def test_self_attention_cache_equals_one_causal_pass():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full, full_weights = mha(x, x, x, mask=causal_mask(6), need_weights=True)
    cache = KVCache()
    for t in range(6):
        step = x[:, t : t + 1]
        out, weights = mha(step, step, step, need_weights=True, cache=cache)
        assert len(cache) == t + 1
        assert torch.allclose(out, full[:, t : t + 1], atol=ATOL)
        assert torch.allclose(weights[..., 0, :], full_weights[..., t, : t + 1], atol=ATOL)


def test_self_attention_cache_in_chunks_uses_offset_causal_mask():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 5, 8)
    full, _ = mha(x, x, x, mask=causal_mask(5))
    cache = KVCache()
    first, _ = mha(x[:, :2], x[:, :2], x[:, :2], mask=causal_mask(2), cache=cache)
    rest, _ = mha(x[:, 2:], x[:, 2:], x[:, 2:], mask=causal_mask(3, 5), cache=cache)
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=ATOL)


def test_cross_attention_cache_projects_memory_once():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    tgt, memory = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    mask = padding_mask(torch.tensor([5, 3]))[:, None, :]
    full, _ = mha(tgt, memory, memory, mask=mask)
    cache = KVCache(static=True)
    steps = []
    for t in range(4):
        # After the first step the memory is not passed at all: it must come from the cache.
        memory_arg = memory if t == 0 else None
        steps.append(mha(tgt[:, t : t + 1], memory_arg, memory_arg, mask=mask, cache=cache)[0])
        if t == 0:
            projected_key = cache.key
        assert cache.key is projected_key  # projected once, never recomputed or grown
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)
    assert len(cache) == 5
    prefilled = mha.memory_cache(memory)  # the same projections, made before the first step
    assert torch.allclose(prefilled.key, cache.key, atol=ATOL)
    assert torch.allclose(prefilled.value, cache.value, atol=ATOL)
    steps = [mha(tgt[:, t : t + 1], None, None, mask=mask, cache=prefilled)[0] for t in range(4)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)


def test_cache_select_reorders_batch_rows():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 4, 8)
    cache = KVCache()
    mha(x[:, :3], x[:, :3], x[:, :3], mask=causal_mask(3), cache=cache)
    order = torch.tensor([2, 0])
    cache.select(order)
    last = x[order, 3:]
    out, _ = mha(last, last, last, cache=cache)
    full, _ = mha(x[order], x[order], x[order], mask=causal_mask(4))
    assert torch.allclose(out, full[:, 3:], atol=ATOL)


# ----- property tests ------------------------------------------------------------------------


@st.composite
def attention_problem(draw):
    """Random sizes, heads and a padding (optionally also causal) mask."""
    batch = draw(st.integers(1, 4))
    heads = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.integers(1, 4))
    query_len = draw(st.integers(1, 6))
    key_len = draw(st.integers(1, 7))
    lengths = draw(st.lists(st.integers(1, key_len), min_size=batch, max_size=batch))
    causal = draw(st.booleans()) and query_len <= key_len
    seed = draw(st.integers(0, 2**16))
    return batch, heads, head_dim, query_len, key_len, lengths, causal, seed


@settings(max_examples=40, deadline=None)
@given(attention_problem())
def test_property_mha_matches_torch_and_masks_hold(problem):
    batch, heads, head_dim, query_len, key_len, lengths, causal, seed = problem
    d_model = heads * head_dim
    ours, reference = paired_attention(d_model, heads, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, query_len, d_model, generator=generator)
    memory = torch.randn(batch, key_len, d_model, generator=generator)
    key_ok = padding_mask(torch.tensor(lengths), key_len)  # (B, Tk)
    mask = key_ok[:, None, :]
    if causal:
        mask = mask & causal_mask(query_len, key_len)  # (B, Tq, Tk)
    out, weights = ours(query, memory, memory, mask=mask, need_weights=True)
    fast, _ = ours(query, memory, memory, mask=mask)
    assert torch.allclose(out, fast, atol=ATOL)

    full_mask = mask.unsqueeze(1).expand_as(weights)  # (B, H, Tq, Tk)
    assert torch.all(weights[~full_mask] == 0.0)
    row_sums = weights.sum(-1)
    has_keys = full_mask.any(-1)
    assert torch.allclose(row_sums[has_keys], torch.ones_like(row_sums[has_keys]), atol=ATOL)
    assert torch.all(row_sums[~has_keys] == 0.0)

    if bool(has_keys.all()):  # torch's layer is only defined where every row has a key
        ref_out, ref_weights = reference(
            query,
            memory,
            memory,
            attn_mask=~mask.expand(batch, query_len, key_len).repeat_interleave(heads, dim=0),
        )
        assert torch.allclose(out, ref_out, atol=ATOL)
        assert torch.allclose(weights.mean(1), ref_weights, atol=ATOL)
