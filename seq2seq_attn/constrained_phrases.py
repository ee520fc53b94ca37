"""Constraint bookkeeping for :mod:`~seq2seq_attn.constrained`: each sentence's phrases as padded
tensors, which token every hypothesis may produce to start or continue a phrase, the phrase
state after a token, and which candidates of a step are redundant.

A hypothesis's phrase state is ``met`` (a bit per phrase: complete, or padding), ``active``
(the phrase in progress, -1: none) and ``progress`` (its tokens produced so far); its bank is
the constraint tokens met (the lengths of its complete phrases plus ``progress``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_PHRASES = 62  # phrases per sentence: one bit each of an int64 mask


@dataclass(frozen=True)
class Phrases:
    """Every sentence's constraint phrases, padded to ``P`` phrases of ``L`` tokens."""

    tokens: Tensor  # (B, P, L) target ids, 0 past a phrase's end
    lengths: Tensor  # (B, P) tokens of each phrase; 0: padding (met from the start)
    twins: Tensor  # (B, P) the previous identical phrase of the sentence, -1: none
    totals: Tensor  # (B,) constraint tokens of each sentence (its fullest bank)

    @property
    def padding_bits(self) -> Tensor:
        """``(B,)`` the ``met`` mask of a hypothesis that has met nothing yet."""
        bits = 1 << torch.arange(self.lengths.size(1), device=self.lengths.device)  # (P,)
        return ((self.lengths == 0).long() * bits).sum(dim=1)


@dataclass
class PhraseState:
    """The phrase state of some hypotheses (any shape ``X``)."""

    met: Tensor  # (X) int64: bit p set when phrase p is complete (or padding)
    active: Tensor  # (X) the phrase in progress, -1: none
    progress: Tensor  # (X) its tokens produced so far (0 when none)
    banks: Tensor  # (X) constraint tokens met

    def take(self, index: Tensor | tuple[Tensor, ...]) -> PhraseState:
        """The states at ``index`` (tensor indexing: any shape out)."""
        return PhraseState(
            self.met[index], self.active[index], self.progress[index], self.banks[index]
        )

    def flatten(self) -> PhraseState:
        """The same states as one row ``(X,) -> (numel,)``."""
        return PhraseState(self.met.reshape(-1), self.active.reshape(-1),
                           self.progress.reshape(-1), self.banks.reshape(-1))  # fmt: skip


def check_ids(what: str, sentence: int, ids: Sequence[int], eos_id: int) -> list[int]:
    """``ids`` as a list, refused when one is negative or EOS (the search adds EOS itself)."""
    ids = [int(token) for token in ids]
    if any(token < 0 or token == eos_id for token in ids):
        raise ValueError(
            f"{what} of sentence {sentence}: {ids} holds a negative id or EOS ({eos_id}); give "
            "target ids from tokenizer.encode_tgt, without BOS or EOS"
        )
    return ids


def pack_phrases(
    constraints: Sequence[Sequence[Sequence[int]]], batch: int, eos_id: int, device: torch.device
) -> Phrases:
    """The batch's phrases as padded tensors (empty phrases dropped: any output meets them)."""
    if len(constraints) != batch:
        raise ValueError(f"constraints: {len(constraints)} lists for {batch} sentences")
    kept = [
        [check_ids("constraint", index, phrase, eos_id) for phrase in phrases if len(phrase)]
        for index, phrases in enumerate(constraints)
    ]
    count = max(1, *(len(phrases) for phrases in kept))
    if count > MAX_PHRASES:
        raise ValueError(f"constraints: {count} phrases for one sentence; at most {MAX_PHRASES}")
    longest = max([1, *(len(phrase) for phrases in kept for phrase in phrases)])
    tokens = torch.zeros((batch, count, longest), dtype=torch.long)
    lengths = torch.zeros((batch, count), dtype=torch.long)
    twins = torch.full((batch, count), -1, dtype=torch.long)
    for sentence, phrases in enumerate(kept):
        for index, phrase in enumerate(phrases):
            tokens[sentence, index, : len(phrase)] = torch.tensor(phrase)
            lengths[sentence, index] = len(phrase)
            earlier = [other for other in range(index) if phrases[other] == phrase]
            twins[sentence, index] = earlier[-1] if earlier else -1
    return Phrases(
        tokens=tokens.to(device), lengths=lengths.to(device), twins=twins.to(device),
        totals=lengths.sum(dim=1).to(device),
    )  # fmt: skip


def pack_prefixes(
    prefixes: Sequence[Sequence[int]] | None, batch: int, eos_id: int, device: torch.device
) -> Tensor:
    """``(B, Lp)`` forced first target ids, -1 past each prefix (``(B, 0)`` without any)."""
    if prefixes is None:
        return torch.empty((batch, 0), dtype=torch.long, device=device)
    if len(prefixes) != batch:
        raise ValueError(f"prefixes: {len(prefixes)} prefixes for {batch} sentences")
    checked = [check_ids("prefix", index, ids, eos_id) for index, ids in enumerate(prefixes)]
    packed = torch.full((batch, max(len(ids) for ids in checked)), -1, dtype=torch.long)
    for sentence, ids in enumerate(checked):
        packed[sentence, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return packed.to(device)


def next_phrase_tokens(state: PhraseState, sentence_rows: Tensor, phrases: Phrases) -> Tensor:
    """``(R, P)`` the token each of ``R`` hypotheses (of sentences ``sentence_rows`` ``(R,)``)
    would produce to start or continue each phrase, -1 where it may not. A hypothesis inside a
    phrase may only continue it; an idle one may start an unmet phrase unless an identical
    phrase listed before it is unmet too (twins are met in order, so that no two hypotheses
    differ only in which twin they placed)."""
    tokens = phrases.tokens[sentence_rows]  # (R, P, L)
    twins = phrases.twins[sentence_rows]  # (R, P)
    bits = torch.arange(tokens.size(1), device=tokens.device)  # (P,)
    met = ((state.met.unsqueeze(1) >> bits) & 1) == 1  # (R, P)
    twin_met = ((state.met.unsqueeze(1) >> twins.clamp(min=0)) & 1) == 1
    idle = state.active < 0  # (R,)
    may_start = ~met & (twin_met | (twins < 0)) & idle.unsqueeze(1)
    next_tokens = tokens[:, :, 0].masked_fill(~may_start, -1)
    busy = (~idle).nonzero().squeeze(1)
    if busy.numel():
        phrase, progress = state.active[busy], state.progress[busy]
        next_tokens[busy, phrase] = tokens[busy, phrase, progress]
    return next_tokens


def unmet_phrases(met: Tensor, num_phrases: int) -> Tensor:
    """How many of ``num_phrases`` bits are clear in each ``met`` mask (same shape)."""
    bits = torch.arange(num_phrases, device=met.device)
    return num_phrases - ((met.unsqueeze(-1) >> bits) & 1).sum(dim=-1)


def advance(state: PhraseState, phrase: Tensor, lengths: Tensor) -> PhraseState:
    """The states after one token each: ``phrase`` (same shape as the state) is the phrase
    the token starts or continues, -1 for an ordinary token; ``lengths`` ``(..., P)`` the
    phrase lengths of each hypothesis's sentence. A phrase's last token completes it."""
    in_phrase = phrase >= 0
    active = torch.where(in_phrase, phrase, state.active)
    progress = state.progress + in_phrase.long()  # starting a phrase: 0 -> 1
    phrase_length = lengths.gather(-1, active.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    completed = in_phrase & (progress == phrase_length)
    return PhraseState(
        met=state.met | (completed.long() << active.clamp(min=0)),
        active=active.masked_fill(completed, -1),
        progress=progress.masked_fill(completed, 0),
        banks=state.banks + in_phrase.long(),
    )


def redundant(keys: Tensor, state: PhraseState, usable: Tensor) -> Tensor:
    """``(N, M)`` candidates not worth a beam slot: ``keys`` ``(N, M)`` name each candidate's
    token sequence, and among the usable ones with the same sequence, a later copy of the same
    phrase state is redundant, and so is an idle state whose complete phrases are a strict
    subset of another idle state's (every output it can reach, that one can reach too)."""
    positions = torch.arange(keys.size(1), device=keys.device)
    keys = torch.where(usable, keys, -1 - positions)  # unusable ones match nothing
    order = keys.argsort(dim=1, stable=True)  # (N, M) equal sequences side by side
    keys = keys.gather(1, order)
    met, active, progress = (part.gather(1, order) for part in
                             (state.met, state.active, state.progress))  # fmt: skip
    found = torch.zeros_like(usable)  # (N, M) in sorted order
    for distance in range(1, keys.size(1)):
        same = keys[:, distance:] == keys[:, :-distance]  # (N, M - d) pairs (i, i + d)
        if not bool(same.any()):
            break
        first, second = slice(None, -distance), slice(distance, None)
        met_a, met_b = met[:, first], met[:, second]
        copy = (met_a == met_b) & (active[:, first] == active[:, second])
        copy &= progress[:, first] == progress[:, second]
        idle = (active[:, first] < 0) & (active[:, second] < 0)
        a_below = idle & ((met_a & ~met_b) == 0) & (met_a != met_b)
        b_below = idle & ((met_b & ~met_a) == 0) & (met_a != met_b)
        found[:, first] |= same & a_below
        found[:, second] |= same & (b_below | copy)
    return torch.zeros_like(found).scatter_(1, order, found)
