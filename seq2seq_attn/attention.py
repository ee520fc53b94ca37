"""Attention layers: masks, score functions, softmax attention and multi-head attention.

Everything is batch-first. Boolean masks use ``True`` = "may attend" and broadcast to the
score shape: ``(B, Tq, Tk)`` for single-head attention, ``(B, H, Tq, Tk)`` inside
:class:`MultiHeadAttention` (which gives 3-D masks a head axis itself).

References: Bahdanau et al. (2015) for additive scores, Luong et al. (2015) for dot / general /
concat scores, Vaswani et al. (2017) for scaled dot-product and multi-head attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Mask of real tokens from sequence lengths.

    Args:
        lengths: ``(B,)`` integer lengths.
        max_len: width of the mask; defaults to ``lengths.max()``.

    Returns:
        ``(B, T)`` boolean, ``True`` at positions ``< length``. Use ``mask[:, None, :]`` to
        broadcast it over queries.
    """
    width = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(width, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def causal_mask(query_len: int, key_len: int | None = None, device=None) -> Tensor:
    """Subsequent-position mask for decoder self-attention.

    The queries are the last ``query_len`` positions of a sequence of ``key_len`` keys (so with
    a cache of ``key_len - query_len`` earlier positions), and each may attend itself and what
    precedes it.

    Returns:
        ``(Tq, Tk)`` boolean, lower-triangular (shifted right by ``Tk - Tq``).
    """
    key_len = query_len if key_len is None else key_len
    if key_len < query_len:
        raise ValueError(f"causal_mask: key_len ({key_len}) must be >= query_len ({query_len})")
    ones = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    return ones.tril(diagonal=key_len - query_len)


# ---------------------------------------------------------------------------------------------
# Score functions: queries (B, Tq, Dq) x keys (B, Tk, Dk) -> scores (B, Tq, Tk)
# ---------------------------------------------------------------------------------------------


def dot_product_scores(query: Tensor, key: Tensor) -> Tensor:
    """Luong "dot": ``q . k``. ``(..., Tq, D) x (..., Tk, D) -> (..., Tq, Tk)``."""
    return query @ key.transpose(-2, -1)


def scaled_dot_product_scores(query: Tensor, key: Tensor) -> Tensor:
    """Vaswani: ``q . k / sqrt(d_k)``. ``(..., Tq, D) x (..., Tk, D) -> (..., Tq, Tk)``."""
    return dot_product_scores(query * (1.0 / math.sqrt(query.size(-1))), key)


class AttentionScore(nn.Module):
    """Base of the score modules: ``forward(query, key) -> scores (B, Tq, Tk)``.

    Scoring is split in two so that a decoder can do the key-only work once per source
    sentence and keep the result in its own state (nothing is cached inside the module):
    ``project_keys(key)`` then ``score(query, projected_keys)`` at every step.
    """

    def project_keys(self, key: Tensor) -> Tensor:
        """Key-side work that does not depend on the query; ``(B, Tk, Dk) -> (B, Tk, *)``."""
        return key

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """Scores ``(B, Tq, Tk)`` from queries ``(B, Tq, Dq)`` and :meth:`project_keys` output."""
        raise NotImplementedError

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """Scores ``(B, Tq, Tk)`` of queries ``(B, Tq, Dq)`` against keys ``(B, Tk, Dk)``."""
        return self.score(query, self.project_keys(key))


class DotScore(AttentionScore):
    """Luong "dot" score ``q . k`` (no parameters; needs ``Dq == Dk``)."""

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(B, Tq, D) x (B, Tk, D) -> (B, Tq, Tk)``."""
        return dot_product_scores(query, projected_keys)


class ScaledDotScore(AttentionScore):
    """Vaswani scaled dot-product score ``q . k / sqrt(d_k)`` (no parameters)."""

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(B, Tq, D) x (B, Tk, D) -> (B, Tq, Tk)``."""
        return scaled_dot_product_scores(query, projected_keys)


class GeneralScore(AttentionScore):
    """Luong "general" (bilinear) score ``q W k^T``, with ``W`` of shape ``(Dq, Dk)``."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False)  # k -> W k

    def project_keys(self, key: Tensor) -> Tensor:
        """``(B, Tk, Dk) -> (B, Tk, Dq)``: the keys mapped by ``W``."""
        return self.key_proj(key)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(B, Tq, Dq) x (B, Tk, Dq) -> (B, Tq, Tk)``."""
        return dot_product_scores(query, projected_keys)


class AdditiveScore(AttentionScore):
    """Bahdanau additive score (Luong's "concat"): ``v^T tanh(W_q q + W_k k)``."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=False)
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=True)
        self.energy = nn.Linear(hidden_dim, 1, bias=False)  # v^T

    def project_keys(self, key: Tensor) -> Tensor:
        """``(B, Tk, Dk) -> (B, Tk, H)``: ``W_k k + b``."""
        return self.key_proj(key)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(B, Tq, Dq) x (B, Tk, H) -> (B, Tq, Tk)``."""
        projected_query = self.query_proj(query)  # (B, Tq, H)
        hidden = torch.tanh(
            projected_query.unsqueeze(2) + projected_keys.unsqueeze(1)
        )  # (B,Tq,Tk,H)
        return self.energy(hidden).squeeze(-1)  # (B, Tq, Tk)


SCORE_NAMES: dict[str, str] = {
    "dot": "dot",
    "scaled_dot": "scaled_dot",
    "general": "general",
    "bilinear": "general",
    "additive": "additive",
    "concat": "additive",
    "bahdanau": "additive",
}
"""Accepted score names and the score each one means (Luong and Bahdanau names are aliases)."""


def build_score(
    name: str, query_dim: int, key_dim: int, hidden_dim: int | None = None
) -> AttentionScore:
    """Score module by name: ``dot``, ``scaled_dot``, ``general`` (``bilinear``) or
    ``additive`` (``concat``, ``bahdanau``). ``hidden_dim`` (additive only) defaults to
    ``key_dim``."""
    kind = SCORE_NAMES.get(name)
    if kind is None:
        raise ValueError(f"unknown attention score {name!r}; choose one of {sorted(SCORE_NAMES)}")
    if kind in ("dot", "scaled_dot") and query_dim != key_dim:
        raise ValueError(
            f"attention score {name!r} needs equal query and key sizes, got {query_dim} and "
            f"{key_dim}; use 'general' or 'additive' for different sizes"
        )
    if kind == "dot":
        return DotScore()
    if kind == "scaled_dot":
        return ScaledDotScore()
    if kind == "general":
        return GeneralScore(query_dim, key_dim)
    return AdditiveScore(query_dim, key_dim, key_dim if hidden_dim is None else hidden_dim)


# ---------------------------------------------------------------------------------------------
# Softmax attention
# ---------------------------------------------------------------------------------------------


def masked_softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax over keys (the last axis) where masked keys get exactly zero weight.

    A row whose keys are all masked gives all zeros (never NaN). ``mask`` is boolean,
    ``True`` = may attend, broadcastable to ``scores``.
    """
    if mask is None:
        return scores.softmax(dim=-1)
    # A finite fill keeps fully masked rows finite; the second fill zeroes them.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return filled.softmax(dim=-1).masked_fill(~mask, 0.0)


def softmax_attention(
    scores: Tensor, value: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Masked softmax over keys, then the weighted sum of values.

    Args:
        scores: ``(..., Tq, Tk)``.
        value: ``(..., Tk, Dv)``.
        mask: boolean, ``True`` = may attend, broadcastable to ``scores``.
        dropout_p: dropout on the weights used for the context (pass 0 at inference).

    Returns:
        ``(context (..., Tq, Dv), weights (..., Tq, Tk))``; the weights are before dropout, in
        the scores' dtype, and multiply the values in theirs.
    """
    weights = masked_softmax(scores, mask)
    used = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    return used.to(value.dtype) @ value, weights


DECODING_QUERIES = 16
"""Most query positions for which attention without gradients on the CPU skips the fused kernel
(a decoding step has one query per beam of a sentence)."""


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al., 2017).

    Without weights it runs torch's fused ``F.scaled_dot_product_attention``; with weights, or
    on the CPU without gradients for at most :data:`DECODING_QUERIES` query positions (a
    decoding step, also a short sentence's encoder or validation pass: there the fused kernel
    is several times slower than two batched matmuls), the explicit path
    (:func:`softmax_attention`'s, softmax in fp32). Both agree, including rows whose keys are
    all masked, which give a zero context.

    Args:
        query: ``(..., Tq, D)``; key: ``(..., Tk, D)``; value: ``(..., Tk, Dv)``.
        mask: boolean, ``True`` = may attend, broadcastable to ``(..., Tq, Tk)``.
        dropout_p: attention dropout (pass 0 at inference).
        need_weights: also return the attention weights ``(..., Tq, Tk)``.

    Returns:
        ``(context (..., Tq, Dv), weights or None)``.
    """
    if need_weights:  # the weights in fp32 (or fp64) whatever the inputs' dtype
        scores = scaled_dot_product_scores(query, key)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        return softmax_attention(scores, value, mask, dropout_p)
    few_queries = query.size(-2) <= DECODING_QUERIES and not torch.is_grad_enabled()
    if few_queries and query.device.type == "cpu" and dropout_p == 0.0:
        scores = scaled_dot_product_scores(query, key).float()  # (..., Tq, Tk)
        weights = masked_softmax(scores, mask).to(value.dtype)
        return weights @ value, None
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p)
    return context, None


# ---------------------------------------------------------------------------------------------
# Multi-head attention
# ---------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Projected keys and values kept between incremental decoding steps, each ``(B, H, T, Dh)``.

    A self-attention cache (``static=False``) grows by the new positions at every call; a
    cross-attention cache (``static=True``) is filled from the encoder output on the first call
    and reused unchanged afterwards, so the encoder keys/values are projected once.
    """

    static: bool = False
    key: Tensor | None = None
    value: Tensor | None = None

    def __len__(self) -> int:
        """Number of cached positions."""
        return 0 if self.key is None else self.key.size(2)

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store new ``(B, H, T, Dh)`` keys/values and return all cached keys/values."""
        if self.key is None or self.static:
            self.key, self.value = key, value
        else:
            self.key = torch.cat([self.key, key], dim=2)
            self.value = torch.cat([self.value, value], dim=2)
        return self.key, self.value

    def select(self, batch_indices: Tensor) -> None:
        """Keep (and reorder) batch rows, e.g. the surviving hypotheses of a beam search."""
        if self.key is not None:
            self.key = self.key.index_select(0, batch_indices)
            self.value = self.value.index_select(0, batch_indices)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017): ``Concat(head_1..head_h) W^O``.

    Usable as self-attention (``query is key is value``: one fused input projection) and as
    cross-attention (``key is value``: one fused key/value projection). The members
    ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are plain ``nn.Linear`` layers.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # Prebuilt fused projections ("qkv", "kv") that replace concatenating the weights at
        # every call; empty unless a quantization (models.int8) fills it. No parameters.
        self.fused_projections = nn.ModuleDict()
        # The dtype incremental decoding keeps cached keys/values in and attends in (None: the
        # projections'); models.int8 sets bf16 where the CPU computes it natively.
        self.cache_dtype: torch.dtype | None = None

    def forward(
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        mask: Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: ``(B, Tq, D)``.
            key, value: ``(B, Tk, D)``. With a filled static (cross-attention) cache they are
                not read and may be ``None``.
            mask: boolean, ``True`` = may attend; ``(Tq, Tk)``, ``(B, Tq|1, Tk)`` or
                ``(B, H|1, Tq|1, Tk)``. With a self-attention cache ``Tk`` counts the cached
                positions too (see :func:`causal_mask`).
            need_weights: also return per-head attention weights.
            cache: incremental decoding state, updated in place; with :attr:`cache_dtype` set,
                it keeps keys and values in that dtype and the attention runs in it.

        Returns:
            ``(output (B, Tq, D), weights (B, H, Tq, Tk) or None)``.
        """
        if cache is not None and cache.static and cache.key is not None:
            q = self._split_heads(self.q_proj(query))
            k, v = cache.key, cache.value
        else:
            q, k, v = self._project(query, key, value)
            if cache is not None:
                k, v = cache.update(self._for_cache(k), self._for_cache(v))
        if cache is not None and self.cache_dtype is not None:
            q = q.to(self.cache_dtype)  # attend in the cache's dtype
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, Tq|1, Tk) -> (B, 1, Tq|1, Tk)
        dropout_p = self.dropout if self.training else 0.0
        context, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p, need_weights)
        batch, _, query_len, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, query_len, self.d_model)  # (B, Tq, D)
        if self.cache_dtype is not None:
            context = context.to(query.dtype)  # back from the cache's dtype
        return self.out_proj(context), weights

    def memory_cache(self, memory: Tensor) -> KVCache:
        """A filled static (cross-attention) cache of ``memory`` ``(B, S, D)``: its keys and
        values are projected once here and reused at every decoding step."""
        key, value = self._fused_linear(memory, "kv").chunk(2, dim=-1)
        # Contiguous once here: batched matmuls would copy these head-split views every step.
        key = self._for_cache(self._split_heads(key)).contiguous()
        value = self._for_cache(self._split_heads(value)).contiguous()
        return KVCache(static=True, key=key, value=value)

    def _for_cache(self, x: Tensor) -> Tensor:
        """Keys or values ``(B, H, T, Dh)`` as a cache keeps them: in :attr:`cache_dtype`."""
        return x if self.cache_dtype is None else x.to(self.cache_dtype)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input projections, split into heads: three ``(B, H, T, Dh)`` tensors."""
        if key is query and value is query:
            qkv = self._fused_linear(query, "qkv")
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q = self.q_proj(query)
            if key is value:
                k, v = self._fused_linear(key, "kv").chunk(2, dim=-1)
            else:
                k, v = self.k_proj(key), self.v_proj(value)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _fused_linear(self, inputs: Tensor, which: str) -> Tensor:
        """The projections ``which`` (``"qkv"`` or ``"kv"``) of ``inputs`` as one matmul;
        ``(B, T, D) -> (B, T, n*D)``."""
        if which in self.fused_projections:
            return self.fused_projections[which](inputs)
        layers = (self.q_proj, self.k_proj, self.v_proj) if which == "qkv" else (
            self.k_proj, self.v_proj
        )  # fmt: skip
        weight = torch.cat([layer.weight for layer in layers])
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        return F.linear(inputs, weight, bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, H, T, Dh)``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
