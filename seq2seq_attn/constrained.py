"""Lexically constrained beam search: dynamic beam allocation (Post & Vilar, 2018), batched over
sentences and vectorised over beams and phrases in the manner of Hu et al. (2019).

Every output must contain each constraint phrase (target ids) of its sentence; a phrase listed
twice must appear twice, at positions that do not overlap. A hypothesis carries which phrases it
has met and, while it is inside one, which and how far: a phrase once started must be finished
(its next token is the only continuation), and EOS waits until every phrase is met. Each step's
candidates are the usual best continuations, the next token of every phrase each beam may start
or must continue, and every beam's own best continuation; the ``K`` slots are then dealt out
round-robin between banks (bank = constraint tokens met), fullest bank first, so that an empty
bank's slots go to the others.

Producing the first token of an unmet phrase is two candidates: the start of that phrase, or an
ordinary token (the phrase may come later). The search space is then exactly the outputs that
hold every phrase at disjoint positions, which a wide enough beam searches exhaustively. Two
candidates with the same tokens would then often take two slots: a later copy of the same
phrase state is dropped, and so is an idle state that met a strict subset of another's phrases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DecodeConfig
from .constrained_phrases import (
    Phrases,
    PhraseState,
    advance,
    next_phrase_tokens,
    pack_phrases,
    pack_prefixes,
    redundant,
    unmet_phrases,
)
from .decoding import (
    Hypothesis,
    length_penalty,
    output_limits,
    rows_per_chunk,
    scored_chunks,
    top_k,
)
from .models.common import Seq2Seq


@dataclass(frozen=True)
class _Search:
    """What stays fixed during one search."""

    limits: Tensor  # (B,) most output tokens per sentence, EOS included
    widths: Tensor  # (B,) beam slots per sentence (the rest of the K columns stay dead)
    phrases: Phrases
    prefixes: Tensor  # (B, Lp) forced first target ids, -1 past a sentence's prefix
    eos_id: int
    decode: DecodeConfig


@dataclass
class _Live:
    """The unfinished part of the search: ``N`` sentences times ``K`` beams."""

    sentences: Tensor  # (N,) original index of each unfinished sentence
    scores: Tensor  # (N, K) cumulative log-probabilities, -inf: a dead slot
    tokens: Tensor  # (N * K, t) tokens so far
    attention: Tensor | None  # (N * K, t, S) or None
    prev_tokens: Tensor  # (N * K,)
    phrase: PhraseState  # (N * K,) what each beam has met of its constraints
    sequences: Tensor  # (N * K,) beams with equal ids hold equal tokens
    state: object


@dataclass
class _Candidates:
    """One step's candidates per sentence, ``M = 2K + K + K * P`` columns."""

    scores: Tensor  # (N, M) cumulative log-probabilities, -inf: no candidate
    rows: Tensor  # (N, M) the live row (of N * K) each extends
    tokens: Tensor  # (N, M)
    phrase: PhraseState  # (N, M) after the token
    keys: Tensor  # (N, M) candidates with equal keys hold equal tokens


@torch.no_grad()  # (see decoding.greedy_search)
def constrained_beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    bos_id: int,
    eos_id: int,
    decode: DecodeConfig,
    constraints: Sequence[Sequence[Sequence[int]]],
    prefixes: Sequence[Sequence[int]] | None = None,
    return_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search whose outputs contain every constraint phrase of their sentence.

    Args:
        src: ``(B, S)`` source ids; src_mask: ``(B, S)``, True at real tokens.
        decode: beam size, n-best, length penalty and limits, as for
            :func:`~seq2seq_attn.decoding.beam_search`.
        constraints: per sentence, its phrases of target ids (no BOS or EOS); an empty list
            means none, an empty phrase is met by any output.
        prefixes: per sentence, target ids every output starts with (may be empty); they
            count in ``log_prob`` and advance a phrase they match like any produced token.
        return_attention: keep each hypothesis's ``(len(tokens) + 1, S)`` attention.

    A sentence with ``C`` constraint tokens is searched with ``max(beam_size, C + 1)`` beams,
    so that every bank can keep a hypothesis even for greedy search (``beam_size`` 1). Its
    length limit grows to fit its prefix, its constraint tokens and EOS (within
    ``decode.max_length`` and ``model.max_positions``). A sentence that still cannot place
    every phrase ends at its limit with its hypotheses meeting the most phrases, and
    ``Hypothesis.unmet_constraints`` counts the phrases missing. Without constraints or
    prefixes it returns what ``beam_search`` does (which is faster: call it then).

    Returns:
        Per sentence (batch order), its ``decode.n_best`` best hypotheses, best first: fewest
        unmet phrases, then highest score; ``tokens`` include the prefix.
    """
    batch, device = src.size(0), src.device
    phrases = pack_phrases(constraints, batch, eos_id, device)
    forced = pack_prefixes(prefixes, batch, eos_id, device)
    widths = torch.clamp(phrases.totals + 1, min=decode.beam_size)  # (B,)
    needed = (forced >= 0).sum(dim=1) + phrases.totals + 1  # (B,) prefix, phrases, EOS
    cap = decode.max_length if model.max_positions is None else model.max_positions
    limits = torch.maximum(output_limits(src_mask, decode, model.max_positions), needed)
    search = _Search(
        limits=limits.clamp(max=max(min(cap, decode.max_length), 1)),  # output_limits' cap
        widths=widths, phrases=phrases, prefixes=forced, eos_id=eos_id, decode=decode,
    )  # fmt: skip
    live = _start(model, src, src_mask, bos_id, int(widths.max()), phrases, return_attention)
    finished: list[dict[tuple[int, ...], Hypothesis]] = [{} for _ in range(batch)]
    for step in range(int(search.limits.max())):
        live = _step(model, live, step, search, finished)
        if live is None:
            break
    return [
        sorted(found.values(), key=lambda h: (h.unmet_constraints, -h.score))[: decode.n_best]
        for found in finished
    ]


def _start(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    bos_id: int,
    width: int,
    phrases: Phrases,
    return_attention: bool,
) -> _Live:
    """Every sentence's ``width`` beams before the first token; only the first one is alive."""
    batch, device = src.size(0), src.device
    scores = torch.full((batch, width), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    rows = batch * width
    nothing = torch.zeros(rows, dtype=torch.long, device=device)
    return _Live(
        sentences=torch.arange(batch, device=device),
        scores=scores,
        tokens=torch.empty((rows, 0), dtype=torch.long, device=device),
        attention=(
            torch.empty((rows, 0, src.size(1)), device=device) if return_attention else None
        ),
        prev_tokens=torch.full((rows,), bos_id, dtype=torch.long, device=device),
        phrase=PhraseState(
            met=phrases.padding_bits.repeat_interleave(width),
            active=nothing - 1,
            progress=nothing,
            banks=nothing,
        ),
        sequences=torch.arange(batch, device=device).repeat_interleave(width),
        state=model.init_state(model.encode(src, src_mask), width),
    )


def _step(
    model: Seq2Seq,
    live: _Live,
    step: int,
    search: _Search,
    finished: list[dict[tuple[int, ...], Hypothesis]],
) -> _Live | None:
    """Advance every live sentence by one token; ``None`` once all are done."""
    logits, state, step_attention = model.decode_step(
        live.prev_tokens, live.state, live.attention is not None
    )  # (N * K, V)
    at_limit = search.limits[live.sentences] == step + 1  # (N,)
    candidates = _candidates(logits, live, step, at_limit, search)
    attention = live.attention
    if attention is not None:
        attention = torch.cat([attention, step_attention.float().unsqueeze(1)], dim=1)
    _finish(candidates, live, attention, step, at_limit, search, finished)
    widths = search.widths[live.sentences].tolist()
    complete = [
        len(finished[sentence]) >= width
        for sentence, width in zip(live.sentences.tolist(), widths, strict=True)
    ]
    done = at_limit | torch.tensor(complete, device=at_limit.device)
    keep = (~done).nonzero().squeeze(1)  # (N',)
    if keep.numel() == 0:
        return None
    scores, positions = _allocate(candidates, live, search)
    picked = (keep.unsqueeze(1), positions[keep])  # indices of (N', K) candidates
    rows = candidates.rows[picked].view(-1)  # (N' * K,)
    next_tokens = candidates.tokens[picked].view(-1)  # (N' * K,)
    return _Live(
        sentences=live.sentences[keep],
        scores=scores[keep],
        tokens=torch.cat([live.tokens[rows], next_tokens.unsqueeze(1)], dim=1),
        attention=None if attention is None else attention[rows],
        prev_tokens=next_tokens,
        phrase=candidates.phrase.take(picked).flatten(),
        sequences=torch.unique(candidates.keys[picked].view(-1), return_inverse=True)[1],
        state=state.select(rows),
    )


def _keep_only(log_probs: Tensor, forced: Tensor) -> None:
    """In place: rows with a forced token (``forced`` ``(rows,)``, -1: none) keep only it."""
    rows = forced >= 0
    if bool(rows.any()):
        allowed = torch.zeros_like(log_probs, dtype=torch.bool)
        allowed.scatter_(1, forced.clamp(min=0).unsqueeze(1), True)
        log_probs.masked_fill_(~allowed & rows.unsqueeze(1), -math.inf)


def _candidates(
    logits: Tensor, live: _Live, step: int, at_limit: Tensor, search: _Search
) -> _Candidates:
    """Score one step's ``logits`` ``(N * K, V)``: per sentence its ``2w`` best ordinary
    continuations (``w``: its width), each beam's best one, and every phrase token each beam
    may produce; redundant ones (see :func:`redundant`) scored -inf. At its limit a sentence's
    only candidates are EOS; during its prefix, the prefix token (ordinary or in a phrase)."""
    (num_sentences, width), vocab = live.scores.shape, logits.size(-1)
    sentence_rows = live.sentences.repeat_interleave(width)  # (N * K,)
    row_limit = at_limit.repeat_interleave(width)  # (N * K,)
    next_tokens = next_phrase_tokens(live.phrase, sentence_rows, search.phrases)  # (N * K, P)
    forced = torch.full_like(live.prev_tokens, -1)  # (N * K,)
    if step < search.prefixes.size(1):
        forced = search.prefixes[sentence_rows, step].masked_fill(row_limit, -1)
    must_continue = (live.phrase.active >= 0) & ~row_limit  # no ordinary token inside a phrase
    no_eos = (live.phrase.banks < search.phrases.totals[sentence_rows]) & ~row_limit
    free_scores = logits.new_empty((num_sentences, 2 * width), dtype=torch.float32)
    free_ids = torch.empty_like(free_scores, dtype=torch.long)
    best_scores = logits.new_empty(num_sentences * width, dtype=torch.float32)
    best_tokens = torch.empty_like(sentence_rows)
    phrase_scores = logits.new_empty(next_tokens.shape, dtype=torch.float32)  # (N * K, P)
    row_scores = live.scores.view(-1, 1)  # (N * K, 1)
    chunk = rows_per_chunk(logits, width)
    for rows, log_probs in scored_chunks(logits, chunk, step, search.eos_id, search.decode,
                                         row_limit):  # fmt: skip
        _keep_only(log_probs, forced[rows])
        wanted = next_tokens[rows]  # (rows, P)
        phrase_scores[rows] = (
            log_probs.gather(1, wanted.clamp(min=0)) + row_scores[rows]
        ).masked_fill_(wanted < 0, -math.inf)
        log_probs.masked_fill_(must_continue[rows].unsqueeze(1), -math.inf)
        log_probs[:, search.eos_id].masked_fill_(no_eos[rows], -math.inf)
        totals = log_probs.add_(row_scores[rows])  # (rows, V)
        best_scores[rows], best_tokens[rows] = totals.max(dim=1)
        sentences = slice(rows.start // width, rows.start // width + totals.size(0) // width)
        free_scores[sentences], free_ids[sentences] = top_k(
            totals.view(-1, width * vocab), 2 * width
        )
    wider = (
        torch.arange(2 * width, device=free_scores.device)
        >= 2 * search.widths[live.sentences, None]
    )  # (N, 2K): a sentence of width w takes its 2w best, whatever the batch's K
    free_scores.masked_fill_(wider, -math.inf)
    scores = torch.cat([free_scores, best_scores.view(num_sentences, width),
                        phrase_scores.view(num_sentences, -1)], dim=1)  # fmt: skip
    return _gather_candidates(live, scores, free_ids, best_tokens, next_tokens, search, vocab)


def _gather_candidates(
    live: _Live,
    scores: Tensor,
    free_ids: Tensor,
    best_tokens: Tensor,
    next_tokens: Tensor,
    search: _Search,
    vocab: int,
) -> _Candidates:
    """The candidates' rows, tokens, phrase states and sequence keys beside their ``scores``
    ``(N, 2K + K + K * P)``, with the redundant ones' scores -inf."""
    num_sentences, width = live.scores.shape
    num_phrases = next_tokens.size(1)
    device = scores.device
    beam_ids = torch.arange(width, device=device)
    offsets = torch.arange(num_sentences, device=device).unsqueeze(1) * width  # (N, 1)
    beams = torch.cat(
        [free_ids // vocab, beam_ids.expand(num_sentences, -1),
         beam_ids.repeat_interleave(num_phrases).expand(num_sentences, -1)], dim=1,
    )  # fmt: skip
    rows = beams + offsets  # (N, M)
    tokens = torch.cat(
        [free_ids % vocab, best_tokens.view(num_sentences, width),
         next_tokens.view(num_sentences, -1).clamp(min=0)], dim=1,
    )  # fmt: skip
    phrase_ids = torch.arange(num_phrases, device=device).repeat(width)  # (K * P,)
    phrase = torch.cat(
        [
            torch.full((num_sentences, 3 * width), -1, dtype=torch.long, device=device),
            phrase_ids.expand(num_sentences, -1),
        ],
        dim=1,
    ).masked_fill(scores.isinf(), -1)  # (N, M) -1: ordinary, or no candidate (kept sane)
    lengths = search.phrases.lengths[live.sentences].unsqueeze(1)  # (N, 1, P)
    after = advance(live.phrase.take(rows), phrase, lengths.expand(-1, rows.size(1), -1))
    keys = live.sequences[rows] * vocab + tokens  # (N, M)
    scores = scores.masked_fill(redundant(keys, after, scores.isfinite()), -math.inf)
    return _Candidates(scores=scores, rows=rows, tokens=tokens, phrase=after, keys=keys)


def _finish(
    candidates: _Candidates,
    live: _Live,
    attention: Tensor | None,
    step: int,
    at_limit: Tensor,
    search: _Search,
    finished: list[dict[tuple[int, ...], Hypothesis]],
) -> None:
    """Record EOS candidates as finished: those ranked within a sentence's width among the
    candidates of its fullest bank, and at the length limit all of them (fewest unmet phrases
    first), until the sentence holds ``width`` distinct outputs."""
    scores = candidates.scores
    is_eos = (candidates.tokens == search.eos_id) & scores.isfinite()  # never in a phrase
    if not bool(is_eos.any()):
        return
    full = candidates.phrase.banks == search.phrases.totals[live.sentences].unsqueeze(1)
    order = scores.masked_fill(~full, -math.inf).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(order.size(1), device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # (N, M) within the full bank
    widths = search.widths[live.sentences]  # (N,)
    eligible = is_eos & ((rank < widths.unsqueeze(1)) | at_limit.unsqueeze(1))
    unmet = unmet_phrases(candidates.phrase.met, search.phrases.lengths.size(1))  # (N, M)
    penalty = length_penalty(step + 1, search.decode.length_penalty)
    for n in eligible.any(dim=1).nonzero().squeeze(1).tolist():
        found = finished[int(live.sentences[n])]
        picked = eligible[n].nonzero().squeeze(1)
        entries = sorted(zip(unmet[n, picked].tolist(), (-scores[n, picked]).tolist(),
                             candidates.rows[n, picked].tolist(), strict=True))  # fmt: skip
        for missing, negative_log_prob, row in entries:
            if len(found) >= int(widths[n]):
                break
            tokens = tuple(live.tokens[row].tolist())
            if tokens in found and found[tokens].unmet_constraints <= missing:
                continue
            found[tokens] = Hypothesis(
                tokens=list(tokens),
                log_prob=-negative_log_prob,
                score=-negative_log_prob / penalty,
                attention=None if attention is None else attention[row].clone(),
                unmet_constraints=missing,
            )


def _allocate(candidates: _Candidates, live: _Live, search: _Search) -> tuple[Tensor, Tensor]:
    """Each sentence's next ``K`` beams among its non-EOS candidates: ``(scores (N, K),
    positions (N, K))``. Taken round-robin by bank, fullest first (the best of the fullest
    bank, the best of the next bank, ..., then the second best of each, ...), so that a bank
    without candidates leaves its slots to the others; slots past a sentence's width, or
    without a candidate, are dead (-inf)."""
    width = live.scores.size(1)
    num_banks = int(search.phrases.totals.max()) + 1
    usable = candidates.scores.isfinite() & (candidates.tokens != search.eos_id)
    scores = candidates.scores.masked_fill(~usable, -math.inf)
    order = scores.argsort(dim=1, descending=True, stable=True)  # (N, M)
    banks = candidates.phrase.banks.masked_fill(~usable, 0).gather(1, order)  # (N, M)
    one_hot = F.one_hot(banks, num_banks)  # (N, M, banks)
    rank = (one_hot.cumsum(dim=1) * one_hot).sum(dim=-1) - 1  # (N, M) rank within its bank
    turn = rank * num_banks + (num_banks - 1 - banks)  # round-robin order, fullest bank first
    turn = turn.masked_fill(~usable.gather(1, order), torch.iinfo(turn.dtype).max)
    chosen = order.gather(1, turn.topk(width, dim=1, largest=False).indices)  # (N, K)
    chosen_scores = scores.gather(1, chosen)
    beyond = torch.arange(width, device=chosen.device) >= search.widths[live.sentences, None]
    return chosen_scores.masked_fill(beyond, -math.inf), chosen
