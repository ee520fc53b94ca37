"""Sampling outputs instead of searching: temperature, top-k and nucleus (top-p) filtering, and
random numbers that depend on nothing but what they are for.

Every random number is a hash of ``(seed, key, sample number, step, token id)`` (the key: the
sentence's index in the caller's input), turned into Gumbel noise (the Gumbel-max trick:
``argmax(log p + g)`` is a draw from ``p``; over a large vocabulary in two stages, see
:func:`gumbel_argmax`). So one sentence's samples are the same whatever
else shares its batch, in whatever order, and the same on every device up to the rounding of
the model itself. The hash works on 32-bit values held in int64 tensors with products that
cannot overflow, so it is exact wherever torch runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DecodeConfig
from .decoding import Hypothesis, decode_rows, output_limits, prefix_table
from .models.common import Seq2Seq

MASK_32 = 0xFFFFFFFF
MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # "lowbias32", from Wellons' hash prospector
GOLDEN_32 = 0x9E3779B9  # 2^32 / golden ratio: keeps an all-zero chain away from mix32(0) = 0
UNIFORM_BITS = 24  # a float32 holds (h + 0.5) / 2^24 exactly, strictly inside (0, 1)
BLOCK_STAGE = MASK_32  # extends a step's hash for the block stage (no token id is 2^32 - 1)
SAMPLE_BLOCK = 64  # columns per block of a two-stage draw (gumbel_argmax)
NUCLEUS_CANDIDATES = 64  # best columns where the nucleus is looked for first


@dataclass(frozen=True)
class Sampling:
    """How to sample: divide the logits by ``temperature``, keep the ``top_k`` most probable
    tokens (0: all), then the nucleus of that distribution (the most probable tokens until
    their mass reaches ``top_p``; always the most probable one), and draw from what is left
    with random numbers seeded by ``seed``.

    Raises:
        ValueError: naming the command-line option, its value and the valid range.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(
                f"--temperature {self.temperature}: must be a number > 0 (1 samples from the "
                "model's distribution, below 1 is closer to greedy search, above 1 more varied)"
            )
        if self.top_k < 0:
            raise ValueError(f"--top-k {self.top_k}: must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise ValueError(
                f"--top-p {self.top_p}: must be in (0, 1] (1 keeps every token; 0.9 keeps the "
                "most probable tokens that hold 90% of the probability)"
            )


def mix32(values: Tensor | int) -> Tensor | int:
    """A bijective hash of 32-bit values (``[0, 2^32)``, a Python int or an int64 tensor)
    whose outputs look independent for neighbouring inputs ("lowbias32")."""
    values = values ^ (values >> 16)
    values = _multiply32(values, MIX_MULTIPLIERS[0])
    values = values ^ (values >> 15)
    values = _multiply32(values, MIX_MULTIPLIERS[1])
    return values ^ (values >> 16)


def _multiply32(values: Tensor | int, multiplier: int) -> Tensor | int:
    """``values * multiplier mod 2^32`` in two 16-bit halves: no product reaches 2^63."""
    low = (values & 0xFFFF) * multiplier  # < 2^48
    high = ((values >> 16) * multiplier) & 0xFFFF  # (high half * multiplier) mod 2^16
    return (low + (high << 16)) & MASK_32


def combine(hashes: Tensor | int, values: Tensor | int) -> Tensor | int:
    """The next link of a hash chain: 32-bit ``hashes`` extended by 32-bit ``values``
    (distinct values give distinct hashes)."""
    return mix32(((hashes ^ values) + GOLDEN_32) & MASK_32)


def seed_hash(seed: int) -> int:
    """A 32-bit start for every hash chain, from both halves of a 64-bit ``seed``."""
    seed &= (1 << 64) - 1
    return combine(combine(GOLDEN_32, seed & MASK_32), seed >> 32)


def gumbel_noise(step_hashes: Tensor, token_ids: Tensor) -> Tensor:
    """Standard Gumbel noise ``(n, L)`` for each row's step hash ``(n,)`` and the token ids
    ``(n, L)`` (or ``(1, L)``) it is for."""
    hashes = combine(step_hashes.unsqueeze(1), token_ids)  # (n, L)
    uniform = ((hashes >> (32 - UNIFORM_BITS)).float() + 0.5) / (1 << UNIFORM_BITS)
    return -torch.log(-torch.log(uniform))


def filtered_scores(log_probs: Tensor, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
    """The sampling distribution's unnormalised log-probabilities of ``log_probs`` ``(n, V)``:
    over the temperature, then the top-k, then the nucleus, the rest -inf.

    Returns ``(scores (n, L), token ids (n, L))`` where top-k or top-p chose candidates (best
    first), else ``(scores (n, V), None)`` (column = token id).
    """
    scores = log_probs if sampling.temperature == 1 else log_probs / sampling.temperature
    token_ids = None
    if 0 < sampling.top_k < scores.size(1):
        scores, token_ids = scores.topk(sampling.top_k, dim=1)  # (n, k)
    if sampling.top_p < 1:
        scores, positions = nucleus(scores, sampling.top_p)
        token_ids = positions if token_ids is None else token_ids.gather(1, positions)
    return scores, token_ids


def nucleus(scores: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """The nucleus of each row of ``scores`` ``(n, L)`` (unnormalised log-probabilities): its
    most probable columns while the probability before them is below ``top_p``, best first.

    Returns ``(scores, columns)``, ``(n, C)`` each, -inf past the nucleus. The nucleus is
    looked for among the :data:`NUCLEUS_CANDIDATES` best columns first (a top-k is 16x faster
    than sorting 8,000); only rows whose candidates hold less than ``top_p`` are sorted whole
    (then ``C = L``).
    """
    length = scores.size(1)
    log_total = scores.logsumexp(dim=1, keepdim=True)  # (n, 1)
    best, columns = scores.topk(min(NUCLEUS_CANDIDATES, length), dim=1)  # (n, k)
    kept, held = _nucleus_mask(best, log_total, top_p)
    best = best.masked_fill(~kept, -math.inf)
    if best.size(1) == length or bool(held.all()):
        return best, columns
    short = (~held).nonzero().squeeze(1)  # (m,) rows whose nucleus may go further
    whole, whole_columns = scores[short].sort(dim=1, descending=True)  # (m, L)
    whole_kept, _ = _nucleus_mask(whole, log_total[short], top_p)
    padded = F.pad(best, (0, length - best.size(1)), value=-math.inf)  # (n, L)
    padded_columns = F.pad(columns, (0, length - best.size(1)))  # (n, L): padding is -inf
    padded[short] = whole.masked_fill(~whole_kept, -math.inf)
    padded_columns[short] = whole_columns
    return padded, padded_columns


def _nucleus_mask(best: Tensor, log_total: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """For sorted scores ``best`` ``(n, k)`` of rows whose log-sum-exp is ``log_total``
    ``(n, 1)``: which lie in the nucleus ``(n, k)``, and whether they hold ``top_p`` ``(n,)``
    (no column past them can be in it)."""
    probs = (best - log_total).exp()
    mass_before = probs.cumsum(dim=1) - probs  # 0 for the most probable
    return mass_before < top_p, mass_before[:, -1] + probs[:, -1] >= top_p


def gumbel_argmax(scores: Tensor, token_ids: Tensor, step_hashes: Tensor) -> Tensor:
    """``(n, 1)`` the column of each row of ``scores`` ``(n, L)`` drawn with probability
    ``softmax(scores)``: the argmax of the scores plus Gumbel noise keyed by the token ids
    ``(n, L)`` (or ``(1, L)``) and each row's step hash ``(n,)``.

    Beyond two blocks of :data:`SAMPLE_BLOCK` columns the draw takes two stages, a block by
    its total probability and then a column within it (the same distribution), so that noise
    is hashed for ``L / B + B`` values instead of ``L``: 30x less work over 8,000 tokens.
    """
    rows, length = scores.shape
    if length <= 2 * SAMPLE_BLOCK:
        return (scores + gumbel_noise(step_hashes, token_ids)).argmax(dim=1, keepdim=True)
    num_blocks = -(-length // SAMPLE_BLOCK)
    blocks = F.pad(scores, (0, num_blocks * SAMPLE_BLOCK - length), value=-math.inf)
    block_mass = blocks.view(rows, num_blocks, SAMPLE_BLOCK).logsumexp(dim=-1)  # (n, blocks)
    block_ids = torch.arange(num_blocks, device=scores.device).unsqueeze(0)  # (1, blocks)
    block_noise = gumbel_noise(combine(step_hashes, BLOCK_STAGE), block_ids)
    block = (block_mass + block_noise).argmax(dim=1, keepdim=True)  # (n, 1)
    columns = block * SAMPLE_BLOCK + torch.arange(SAMPLE_BLOCK, device=scores.device)  # (n, B)
    # the last block's padding repeats its last column: the same score and noise, no new odds
    columns = columns.clamp(max=length - 1)
    within = scores.gather(1, columns)  # (n, B)
    ids = token_ids.expand(rows, -1).gather(1, columns)
    choice = (within + gumbel_noise(step_hashes, ids)).argmax(dim=1, keepdim=True)
    return columns.gather(1, choice)


def sampled_choice(
    log_probs: Tensor, rows: Tensor, step: int, *, sampling: Sampling, row_hashes: Tensor
) -> tuple[Tensor, Tensor]:
    """A :data:`~seq2seq_attn.decoding.Choose` that draws each row's token from
    :func:`filtered_scores` with the noise of the row's hash ``row_hashes[rows]`` at ``step``;
    returns the model's log-probability (unfiltered) of each token and the tokens ``(n,)``."""
    scores, token_ids = filtered_scores(log_probs, sampling)
    if token_ids is None:
        token_ids = torch.arange(scores.size(1), device=scores.device).unsqueeze(0)  # (1, V)
    positions = gumbel_argmax(scores, token_ids, combine(row_hashes[rows], step))  # (n, 1)
    tokens = token_ids.expand_as(scores).gather(1, positions)  # (n, 1)
    return log_probs.gather(1, tokens).squeeze(1), tokens.squeeze(1)


@torch.no_grad()  # (see decoding.greedy_search)
def sample_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    bos_id: int,
    eos_id: int,
    decode: DecodeConfig,
    sampling: Sampling,
    keys: Tensor,
    num_samples: int,
    prefixes: Sequence[Sequence[int]] | None = None,
    return_attention: bool = False,
) -> list[list[Hypothesis]]:
    """``num_samples`` sampled outputs per sentence, all sentences and samples side by side.

    Args:
        src: ``(B, S)`` source ids; src_mask: ``(B, S)``, True at real tokens.
        decode: the output length limits, ``min_length`` and the length penalty (beam size and
            n-best are not used).
        sampling: temperature, top-k, top-p and seed (:class:`Sampling`).
        keys: ``(B,)`` each sentence's index in the caller's input: with the seed, the sample
            number and the step, all that its random numbers depend on.
        prefixes: per sentence, target ids each of its samples starts with (forced first; see
            :func:`~seq2seq_attn.decoding.prefix_table`); None: none.
        return_attention: keep each sample's ``(T, S)`` attention.

    Returns:
        Per sentence (batch order), its samples in the order drawn. A sample's ``log_prob`` is
        the model's log-probability of its tokens (temperature 1, unfiltered, prefix and EOS
        included: what a teacher-forced ``forward`` gives), and ``score`` that over the GNMT
        length penalty (``decode.length_penalty``).
    """
    batch = src.size(0)
    device = src.device
    sentence_of_row = torch.arange(batch, device=device).repeat_interleave(num_samples)  # (R,)
    limits = output_limits(src_mask, decode, model.max_positions)  # (B,)
    table, limits = prefix_table(prefixes, limits, model.max_positions, eos_id)
    state = model.init_state(model.encode(src, src_mask).select(sentence_of_row))
    sample_numbers = torch.arange(num_samples, device=device).repeat(batch)  # (R,)
    sentence_hashes = combine(seed_hash(sampling.seed), keys.to(device).long() & MASK_32)  # (B,)
    row_hashes = combine(sentence_hashes[sentence_of_row], sample_numbers)  # (R,)
    found = decode_rows(
        model, state, limits[sentence_of_row], bos_id, eos_id, decode,
        partial(sampled_choice, sampling=sampling, row_hashes=row_hashes),
        None if table is None else table[sentence_of_row],
        src.size(1) if return_attention else None,
    )  # fmt: skip
    return [found[start : start + num_samples] for start in range(0, len(found), num_samples)]
