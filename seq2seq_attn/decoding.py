"""Batched greedy and beam search over the :class:`~seq2seq_attn.models.common.Seq2Seq` protocol.

How to search is the ``decode`` section itself (:class:`~seq2seq_attn.config.DecodeConfig`:
beam size, n-best, GNMT length penalty, output length limits). Search talks to a model only
through ``encode``, ``init_state``, ``decode_step`` and the state's ``select``; it never asks
which family it holds. All sentences of a batch (and all their beams) advance in one tensor,
and a sentence leaves the batch as soon as it is finished.

A target prefix (per sentence, ids without BOS) forces a sentence's first tokens: while inside
it, a row can only produce the prefix's next token, whose true log-probability counts. Outputs
include the prefix. :func:`decode_rows` is the loop of every search whose rows never interact
(greedy here, sampling in :mod:`~seq2seq_attn.sampling`): a ``choose`` function picks each
row's next token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import DecodeConfig
from .models.common import Seq2Seq

CHUNK_ELEMENTS = 1 << 19  # log-probabilities scored at once (2 MiB in fp32)
TOP_K_BLOCK = 64  # columns per block in :func:`top_k`


@dataclass
class Hypothesis:
    """One output: ``tokens`` (ids, without BOS and EOS), the sum of their log-probabilities
    (EOS included), the search ``score`` (log-probability over the GNMT length penalty), the
    attention ``(len(tokens) + 1, S)`` over source positions when it was asked for, and how many
    constraint phrases a constrained search could not place within the length limit."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Tensor | None = field(default=None, repr=False)
    unmet_constraints: int = 0


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al., 2016)."""
    return ((5.0 + length) / 6.0) ** alpha


def output_limits(src_mask: Tensor, decode: DecodeConfig, max_positions: int | None) -> Tensor:
    """``(B,)`` most output tokens (EOS included) each sentence may produce."""
    src_lengths = src_mask.sum(dim=1).float()  # (B,)
    limits = (src_lengths * decode.max_length_ratio).floor().long() + decode.max_length_offset
    cap = decode.max_length if max_positions is None else min(decode.max_length, max_positions)
    return limits.clamp(min=decode.min_length + 1, max=max(cap, 1))


def prefix_table(
    prefixes: Sequence[Sequence[int]] | None,
    limits: Tensor,
    max_positions: int | None,
    eos_id: int,
) -> tuple[Tensor | None, Tensor]:
    """The target ``prefixes`` of a batch as a ``(B, P)`` table of forced token ids (-1 past a
    prefix's end), and the output ``limits`` ``(B,)`` raised where a prefix needs more room (to
    its length + 1 for the EOS).

    A prefix longer than ``max_positions - 1`` tokens is cut to that many: the model reads no
    further (the raised limit is then ``max_positions``). ``(None, limits)`` when no sentence
    has a prefix (``prefixes`` None or all empty): the search runs exactly as without.

    Raises:
        ValueError: a prefix count other than the batch size, or a prefix holding EOS.
    """
    if prefixes is None or not any(prefixes):
        return None, limits
    if len(prefixes) != limits.numel():
        raise ValueError(f"{len(prefixes)} target prefixes for a batch of {limits.numel()}")
    longest = None if max_positions is None else max(max_positions - 1, 0)
    cut = [list(prefix)[:longest] for prefix in prefixes]
    for row, prefix in enumerate(cut):
        if eos_id in prefix:
            raise ValueError(f"target prefix {row} holds the EOS id {eos_id}: a prefix starts "
                             "an output and cannot end it")  # fmt: skip
    table = torch.full((len(cut), max(map(len, cut))), -1, dtype=torch.long)
    for row, prefix in enumerate(cut):
        table[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    lengths = torch.tensor([len(prefix) for prefix in cut], device=limits.device)  # (B,)
    return table.to(limits.device), torch.maximum(limits, lengths + 1)


def forced_tokens(table: Tensor | None, sentences: Tensor, step: int) -> Tensor | None:
    """``(N,)`` the prefix token that each of ``sentences`` (rows of :func:`prefix_table`'s
    ``table``) must produce at ``step`` (-1: free), or None where no prefix is that long."""
    if table is None or step >= table.size(1):
        return None
    return table[sentences, step]


def rows_per_chunk(logits: Tensor, group: int) -> int:
    """How many rows of a step's ``logits`` ``(N, V)`` to score at once: on the CPU, whole
    groups of ``group`` rows (a sentence's beams) within :data:`CHUNK_ELEMENTS`; elsewhere all
    rows (a GPU has no such cache to fit, and every chunk costs kernel launches)."""
    if logits.device.type != "cpu":
        return max(1, logits.size(0))
    return max(1, CHUNK_ELEMENTS // (group * logits.size(1))) * group


def scored_chunks(
    logits: Tensor,
    chunk_rows: int,
    step: int | Tensor,
    eos_id: int,
    decode: DecodeConfig,
    at_limit: Tensor,
    forced: Tensor | None = None,
) -> Iterator[tuple[slice, Tensor]]:
    """The fp32 log-probabilities of one decoder step's ``logits`` ``(N, V)``, a chunk of rows
    at a time: ``(rows, log_probs (rows, V))``, EOS banned before ``decode.min_length`` tokens
    and the only choice of rows marked in ``at_limit`` ``(N,)``, and a row's token in ``forced``
    ``(N,)`` (:func:`forced_tokens`; -1: free) its only choice. ``step``: the tokens every row
    has produced, or ``(N,)`` per row (rows that joined a search at different steps).

    ``chunk_rows`` (:func:`rows_per_chunk`) keeps the fp32 copy in the CPU's cache; the search
    reduces each chunk (max, top-k) before the next. One vocabulary-wide log-softmax of a whole
    beam batch (1,500 rows x 8,000) took 3x as long as the same work in chunks.
    """
    limited = bool(at_limit.any())
    for start in range(0, logits.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        log_probs = logits[rows].log_softmax(dim=-1, dtype=torch.float32)  # (rows, V)
        if isinstance(step, Tensor):
            if decode.min_length > 0:
                log_probs[step[rows] < decode.min_length, eos_id] = -math.inf
        elif step < decode.min_length:
            log_probs[:, eos_id] = -math.inf
        if limited:
            force_eos(log_probs, at_limit[rows], eos_id)
        if forced is not None:
            force_tokens(log_probs, forced[rows])
        yield rows, log_probs


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``values.topk(k, dim=1)`` of ``(n, L)`` values, best first, found through blocks.

    Every row is cut into whole blocks of :data:`TOP_K_BLOCK` columns (and a shorter rest); the
    ``k`` best values lie in the ``k`` whole blocks with the highest maxima or in the rest, so
    one vectorised max per block and a top-k over those ``k * TOP_K_BLOCK`` (+ rest) columns
    replace the top-k over ``L``: 3.6x faster for a beam of 5 over 8,000 tokens (``torch.topk``
    sorts (value, index) pairs one row at a time). The same values and distinct indices as
    ``torch.topk``, except how exact ties are broken.
    """
    rows, length = values.shape
    block = TOP_K_BLOCK
    whole = length // block * block  # columns in whole blocks
    if whole // block < k:
        return values.topk(k, dim=1)
    maxima = values[:, :whole].view(rows, -1, block).amax(dim=-1)  # (n, whole / block)
    best_blocks = maxima.topk(k, dim=1).indices  # (n, k)
    offsets = torch.arange(block, device=values.device)
    columns = (best_blocks.unsqueeze(-1) * block + offsets).view(rows, k * block)
    if whole < length:  # the rest is always a candidate
        rest = torch.arange(whole, length, device=values.device).expand(rows, -1)
        columns = torch.cat([columns, rest], dim=1)  # (n, k * block + L - whole)
    top_values, positions = values.gather(1, columns).topk(k, dim=1)  # (n, k)
    return top_values, columns.gather(1, positions)


def force_eos(log_probs: Tensor, rows: Tensor, eos_id: int) -> None:
    """In place: rows marked in ``rows`` ``(N,)`` can only produce EOS (their length limit)."""
    if bool(rows.any()):
        eos_scores = log_probs[rows, eos_id]
        log_probs[rows] = -math.inf
        log_probs[rows, eos_id] = eos_scores


def force_tokens(log_probs: Tensor, tokens: Tensor) -> None:
    """In place: a row of ``log_probs`` ``(N, V)`` whose entry in ``tokens`` ``(N,)`` is a
    token id (not -1) can only produce that token, and keeps its log-probability."""
    rows = (tokens >= 0).nonzero().squeeze(1)  # (F,)
    if rows.numel():
        columns = tokens[rows]
        kept = log_probs[rows, columns]  # (F,)
        log_probs[rows] = -math.inf
        log_probs[rows, columns] = kept


Choose = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]
"""How :func:`decode_rows` picks tokens: ``(log_probs (n, V), the rows' indices (n,), step) ->
(log-probability (n,), token (n,))`` of each row's choice."""


def greedy_choice(log_probs: Tensor, rows: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """The most probable token of each row of ``log_probs`` ``(n, V)`` (a :data:`Choose`)."""
    best, tokens = top_k(log_probs, 1)  # (n, 1) each
    return best.squeeze(1), tokens.squeeze(1)


@torch.no_grad()  # not inference_mode: under it autocast recasts every weight at every step
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    bos_id: int,
    eos_id: int,
    decode: DecodeConfig,
    return_attention: bool = False,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[Hypothesis]:
    """Most probable next token at every step, for a whole batch at once.

    Args:
        src: ``(B, S)`` source ids; src_mask: ``(B, S)``, True at real tokens.
        decode: the length limits and penalty (beam size and n-best are ignored).
        return_attention: keep each hypothesis's ``(T, S)`` attention.
        prefixes: per sentence, target ids (no BOS) its output must start with (see
            :func:`prefix_table`: a prefix raises the sentence's length limit, and one longer
            than ``model.max_positions - 1`` is cut); None or empty: none.

    Returns:
        One :class:`Hypothesis` per sentence, in batch order; its tokens and log-probability
        include the prefix.
    """
    limits = output_limits(src_mask, decode, model.max_positions)  # (B,)
    table, limits = prefix_table(prefixes, limits, model.max_positions, eos_id)
    state = model.init_state(model.encode(src, src_mask))
    columns = src.size(1) if return_attention else None
    return decode_rows(model, state, limits, bos_id, eos_id, decode, greedy_choice, table, columns)


@torch.no_grad()  # (see greedy_search)
def decode_rows(
    model: Seq2Seq,
    state: object,
    limits: Tensor,
    bos_id: int,
    eos_id: int,
    decode: DecodeConfig,
    choose: Choose,
    prefix_tokens: Tensor | None = None,
    attention_columns: int | None = None,
) -> list[Hypothesis]:
    """One hypothesis per row of a decoder ``state`` (from ``model.init_state``, one row per
    output), the rows decoded side by side and independently: ``choose`` picks each row's next
    token; a row leaves the batch at its EOS.

    Args:
        limits: ``(R,)`` most output tokens of each row, EOS included (EOS is forced there).
        prefix_tokens: ``(R, P)`` the prefix table of the rows (:func:`prefix_table`) or None.
        attention_columns: the source length ``S`` to keep each row's ``(T, S)`` attention;
            None: no attention.

    Returns:
        Per row, its tokens (without EOS), log-probability (the chosen tokens' sum, EOS
        included) and score (over the GNMT length penalty), in row order.
    """
    num_rows, device = limits.numel(), limits.device
    output = torch.full((num_rows, int(limits.max())), eos_id, dtype=torch.long, device=device)
    attention = (
        torch.zeros((num_rows, output.size(1), attention_columns), device=device)
        if attention_columns is not None
        else None
    )
    lengths = limits.clone()  # tokens produced, EOS included
    log_prob_sums = torch.zeros(num_rows, device=device)
    active = torch.arange(num_rows, device=device)  # original index of each row
    prev_tokens = torch.full((num_rows,), bos_id, dtype=torch.long, device=device)
    for step in range(output.size(1)):
        logits, state, step_attention = model.decode_step(
            prev_tokens, state, attention is not None
        )  # (N, V)
        best = torch.empty(logits.size(0), device=logits.device)  # (N,)
        prev_tokens = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
        at_limit = limits[active] == step + 1
        forced = forced_tokens(prefix_tokens, active, step)
        for rows, log_probs in scored_chunks(
            logits, rows_per_chunk(logits, 1), step, eos_id, decode, at_limit, forced
        ):
            best[rows], prev_tokens[rows] = choose(log_probs, active[rows], step)
        output[active, step] = prev_tokens
        log_prob_sums[active] += best
        if attention is not None:
            attention[active, step] = step_attention.float()
        done = prev_tokens == eos_id
        if bool(done.any()):
            lengths[active[done]] = step + 1
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active, prev_tokens, state = active[keep], prev_tokens[keep], state.select(keep)
    return [
        Hypothesis(
            tokens=output[i, : lengths[i] - 1].tolist(),
            log_prob=float(log_prob_sums[i]),
            score=float(log_prob_sums[i]) / length_penalty(int(lengths[i]), decode.length_penalty),
            attention=None if attention is None else attention[i, : lengths[i]].clone(),
        )
        for i in range(num_rows)
    ]


@dataclass
class Beams:
    """The live part of a beam search: ``N`` unfinished sentences times ``W`` rows each (``K``
    beams; ``W = 1`` before the first step of a search that starts from one row a sentence).

    Sentences that joined a running search (:mod:`~seq2seq_attn.streaming`) have produced
    fewer tokens than ``t``: their ``tokens`` rows hold them at the end, after filler.
    """

    sentences: Tensor  # (N,) each unfinished sentence's key in the search's `finished`
    scores: Tensor  # (N, W) cumulative log-probabilities
    tokens: Tensor  # (N * W, t) tokens so far, each row's last `steps` of its sentence real
    attention: Tensor | None  # (N * W, t, S) or None
    prev_tokens: Tensor  # (N * W,)
    state: object
    limits: Tensor  # (N,) most output tokens of each sentence, EOS included
    steps: Tensor  # (N,) tokens each sentence has produced

    @classmethod
    def start(
        cls, model: Seq2Seq, src: Tensor, src_mask: Tensor, limits: Tensor, first: int,
        bos_id: int, decode: DecodeConfig, return_attention: bool = False, expanded: bool = False,
    ) -> Beams:  # fmt: skip
        """A search's first beams for a ``(B, S)`` batch: sentence keys ``first .. first + B
        - 1``, BOS before each. ``expanded``: ``K`` rows a sentence, only the first alive (as
        a running search needs them to join it); else one row a sentence, which the first
        :func:`beam_step` expands to ``K`` (that step decodes ``B`` rows, not ``B * K``)."""
        width, device = decode.beam_size if expanded else 1, src.device
        batch = src.size(0)
        rows = batch * width
        scores = torch.full((batch, width), -math.inf, device=device)
        scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
        attention = torch.empty((rows, 0, src.size(1)), device=device) if return_attention else None
        return cls(
            sentences=torch.arange(first, first + batch, device=device),
            scores=scores,
            tokens=torch.empty((rows, 0), dtype=torch.long, device=device),
            attention=attention,
            prev_tokens=torch.full((rows,), bos_id, dtype=torch.long, device=device),
            state=model.init_state(model.encode(src, src_mask), width),
            limits=limits,
            steps=torch.zeros(batch, dtype=torch.long, device=device),
        )


@torch.no_grad()  # (see greedy_search)
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    bos_id: int,
    eos_id: int,
    decode: DecodeConfig,
    return_attention: bool = False,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search with GNMT length penalty.

    Every step scores ``K * V`` continuations per sentence (``V`` at the first, from one row a
    sentence), finishes the EOS ones ranked in the top ``K``, and keeps the best ``K`` others.
    A sentence is done when it has ``K`` finished hypotheses or reaches its length limit.

    ``prefixes`` (per sentence, target ids without BOS; see :func:`greedy_search`) force a
    sentence's first tokens: while inside its prefix only one beam of the sentence is alive
    (the others stay at -inf), and the search branches after it.

    Returns:
        Per sentence (batch order), its ``decode.n_best`` best hypotheses, best first; their
        tokens and log-probabilities include the prefix.
    """
    limits = output_limits(src_mask, decode, model.max_positions)  # (B,)
    table, limits = prefix_table(prefixes, limits, model.max_positions, eos_id)
    beams = Beams.start(model, src, src_mask, limits, 0, bos_id, decode, return_attention)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for step in range(int(limits.max())):
        forced = forced_tokens(table, beams.sentences, step)  # (N,) or None
        beams = beam_step(model, beams, step, eos_id, decode, finished, forced)
        if beams is None:
            break
    return [best_first(hyps, decode.n_best) for hyps in finished]


def best_first(hypotheses: list[Hypothesis], n_best: int) -> list[Hypothesis]:
    """The ``n_best`` highest-scoring of a sentence's finished ``hypotheses``, best first."""
    return sorted(hypotheses, key=lambda h: -h.score)[:n_best]


def beam_step(
    model: Seq2Seq,
    beams: Beams,
    step: int | None,
    eos_id: int,
    decode: DecodeConfig,
    finished: list[list[Hypothesis]] | dict[int, list[Hypothesis]],
    forced: Tensor | None = None,
) -> Beams | None:
    """Advance every live sentence by one token (``forced`` ``(N,)``: each sentence's prefix
    token, -1: free); ``None`` once all are done. ``step``: the tokens every sentence has
    produced, or None when they differ (``beams.steps`` says). A finished hypothesis goes to
    ``finished[key]``, the key being the sentence's entry in ``beams.sentences``."""
    beam_size, width = decode.beam_size, beams.scores.size(1)  # W rows a sentence
    num_sentences = beams.sentences.numel()
    logits, state, step_attention = model.decode_step(
        beams.prev_tokens, beams.state, beams.attention is not None
    )  # (N * W, V)
    at_limit = beams.limits == beams.steps + 1  # (N,)
    if step is None:
        step = beams.steps.repeat_interleave(width)  # (N * W,) per row
    top_scores, top_ids = _best_continuations(logits, beams, step, eos_id, decode, at_limit, forced)
    vocab = logits.size(-1)
    top_beams, top_tokens = top_ids // vocab, top_ids % vocab
    from_rows = top_beams + torch.arange(num_sentences, device=top_ids.device).unsqueeze(1) * width
    is_eos = top_tokens == eos_id  # (N, 2K)
    attention = beams.attention
    if attention is not None:
        attention = torch.cat([attention, step_attention.float().unsqueeze(1)], dim=1)

    _finish(beams, top_scores, is_eos, from_rows, attention, decode, finished)
    done = at_limit | torch.tensor(
        [len(finished[i]) >= beam_size for i in beams.sentences.tolist()], device=at_limit.device
    )
    keep = (~done).nonzero().squeeze(1)  # (N',)
    if keep.numel() == 0:
        return None
    alive_scores, alive_positions = top_scores.masked_fill(is_eos, -math.inf).topk(beam_size, dim=1)
    rows = from_rows.gather(1, alive_positions)[keep].view(-1)  # (N' * K,)
    next_tokens = top_tokens.gather(1, alive_positions)[keep].view(-1)  # (N' * K,)
    return Beams(
        sentences=beams.sentences[keep],
        scores=alive_scores[keep],
        tokens=torch.cat([beams.tokens[rows], next_tokens.unsqueeze(1)], dim=1),
        attention=None if attention is None else attention[rows],
        prev_tokens=next_tokens,
        state=state.select(rows, beam_size),  # K rows a sentence from now on
        limits=beams.limits[keep],
        steps=beams.steps[keep] + 1,
    )


def _best_continuations(
    logits: Tensor,
    beams: Beams,
    step: int | Tensor,
    eos_id: int,
    decode: DecodeConfig,
    at_limit: Tensor,
    forced: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The best ``2K`` of each sentence's ``W * V`` continuations of ``logits`` ``(N * W, V)``:
    ``(N, 2K)`` cumulative scores and ids (``row * V + token``), scored a chunk at a time."""
    beam_size, num_sentences = decode.beam_size, beams.sentences.numel()
    width = beams.scores.size(1)  # W rows a sentence
    vocab = logits.size(-1)
    wanted = min(2 * beam_size, width * vocab)  # fewer only from one row of a tiny vocabulary
    top_scores = torch.full((num_sentences, 2 * beam_size), -math.inf, device=logits.device)
    top_ids = torch.zeros((num_sentences, 2 * beam_size), dtype=torch.long, device=logits.device)
    chunk = rows_per_chunk(logits, width)
    row_scores = beams.scores.view(-1, 1)  # (N * W, 1)
    for rows, log_probs in scored_chunks(
        logits, chunk, step, eos_id, decode, at_limit.repeat_interleave(width),
        None if forced is None else forced.repeat_interleave(width),
    ):  # fmt: skip
        candidates = log_probs.add_(row_scores[rows]).view(-1, width * vocab)
        sentences = slice(rows.start // width, rows.start // width + candidates.size(0))
        top_scores[sentences, :wanted], top_ids[sentences, :wanted] = top_k(candidates, wanted)
    return top_scores, top_ids


def _finish(
    beams: Beams,
    top_scores: Tensor,
    is_eos: Tensor,
    from_rows: Tensor,
    attention: Tensor | None,
    decode: DecodeConfig,
    finished: list[list[Hypothesis]] | dict[int, list[Hypothesis]],
) -> None:
    """Record the EOS candidates ranked in the top ``K`` of their sentence as finished."""
    beam_size = decode.beam_size
    eos_ranked = is_eos[:, :beam_size] & top_scores[:, :beam_size].isfinite()  # (N, K)
    if not bool(eos_ranked.any()):
        return
    steps, width = beams.steps.tolist(), beams.tokens.size(1)
    for n, rank in eos_ranked.nonzero().tolist():
        sentence = int(beams.sentences[n])
        if len(finished[sentence]) >= beam_size:
            continue
        row = int(from_rows[n, rank])
        log_prob = float(top_scores[n, rank])
        finished[sentence].append(
            Hypothesis(
                tokens=beams.tokens[row, width - steps[n] :].tolist(),
                log_prob=log_prob,
                score=log_prob / length_penalty(steps[n] + 1, decode.length_penalty),
                attention=None if attention is None else attention[row].clone(),
            )
        )
