"""Sampled segmentations for subword regularization, drawn from a generator the caller seeds.

SentencePiece samples segmentations itself (``enable_sampling``), but not reproducibly: with
``set_random_generator_seed`` its samples repeat inside one process, yet differ from one process
to the next (sentencepiece 0.2.3), which would make a training run unrepeatable and its resume
inexact. So the sampling happens here, over a SentencePiece model's vocabulary and scores, from
a :class:`random.Random`:

- :class:`UnigramSampler`, ``nbest_size`` -1: forward-filtering backward-sampling over the
  lattice of every segmentation, P(x) proportional to exp(alpha * the sum of its piece scores)
  (Kudo 2018; SentencePiece's ``Lattice::Sample``); ``nbest_size`` l >= 2: one of the l best
  segmentations (SentencePiece's deterministic n-best list), P proportional to the same;
- :class:`BpeDropout`: SentencePiece's BPE merges, best score first, each candidate merge
  dropped with probability ``alpha`` (Provilkov et al. 2020); ``alpha`` 0 gives SentencePiece's
  deterministic segmentation exactly.

Both work word by word (a piece holds the word boundary ``▁`` only at its start, so no piece
crosses a word), on the text as SentencePiece normalises it; a run of characters outside the
vocabulary becomes one UNK id, as SentencePiece encodes it.
"""

from __future__ import annotations

import heapq
import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sentencepiece as spm

__all__ = ["BpeDropout", "SubwordSampler", "UnigramSampler", "model_type", "sampler_for"]

WORD_START = "\u2581"  # SentencePiece's ▁, the start of every word
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType
CACHED_WORDS = 200_000  # unigram lattices kept (words recur: most lattices are reused)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The protobuf varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _field(message: bytes, wanted: int) -> int | bytes | None:
    """The last value of field number ``wanted`` in a serialized protobuf message, or None."""
    pos, found = 0, None
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(message, pos)
        elif wire_type == 2:
            size, pos = _varint(message, pos)
            value, pos = message[pos : pos + size], pos + size
        elif wire_type in (1, 5):  # fixed 64 / 32 bits
            size = 8 if wire_type == 1 else 4
            value, pos = message[pos : pos + size], pos + size
        else:
            raise ValueError(f"not a SentencePiece model: protobuf wire type {wire_type}")
        if number == wanted:
            found = value
    return found


def model_type(model: bytes) -> str:
    """``unigram``, ``bpe``, ``word`` or ``char``: the type a serialized SentencePiece model
    was trained as (``ModelProto.trainer_spec.model_type``)."""
    trainer_spec = _field(model, 2)
    number = _field(trainer_spec, 3) if isinstance(trainer_spec, bytes) else None
    return MODEL_TYPES.get(number if isinstance(number, int) else 1, "unknown")


class _Vocabulary:
    """The pieces a model segments text into (normal pieces: no specials, bytes or unused
    ones), their ids and scores, and every prefix of a piece (to stop a lattice search early)."""

    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self.processor, self.unk_id = processor, processor.unk_id()
        self.ids: dict[str, int] = {}
        self.scores: dict[str, float] = {}
        for index in range(processor.get_piece_size()):
            special = processor.is_control(index) or processor.is_unknown(index)
            if special or processor.is_unused(index) or processor.is_byte(index):
                continue
            piece = processor.id_to_piece(index)
            self.ids[piece], self.scores[piece] = index, processor.get_score(index)
        self.prefixes = {piece[:end] for piece in self.ids for end in range(1, len(piece) + 1)}
        # a model trained with split_by_whitespace off has pieces across words: no cutting then
        self.cut_words = not any(WORD_START in piece[1:] for piece in self.ids)

    def words(self, text: str) -> list[str]:
        """``text`` normalised as SentencePiece does, cut before each ``▁`` (where no piece
        crosses a word)."""
        normalized = self.processor.normalize(text)
        if not self.cut_words or not normalized:
            return [normalized] if normalized else []
        starts = [i for i, char in enumerate(normalized) if char == WORD_START or i == 0]
        ends = [*starts[1:], len(normalized)]
        return [normalized[a:b] for a, b in zip(starts, ends, strict=True)]

    def unknown_end(self, word: str, start: int) -> int:
        """The end of the run of characters outside the vocabulary at ``start`` (``start``
        itself when the character there is a piece)."""
        end = start
        while end < len(word) and word[end] not in self.ids:
            end += 1
        return end


class UnigramSampler:
    """Sampled segmentations of a unigram model: from the whole lattice (``nbest_size`` -1)
    or from the ``nbest_size`` best segmentations, P(x) ~ exp(``alpha`` * score(x))."""

    def __init__(self, processor: spm.SentencePieceProcessor, alpha: float, nbest_size: int):
        self.vocabulary, self.alpha, self.nbest_size = _Vocabulary(processor), alpha, nbest_size
        # word -> (nodes ending at each position: (start, id, alpha * score), forward log-sums)
        self._lattices: dict[str, tuple[list[list[tuple[int, int, float]]], list[float]]] = {}

    def sample(self, text: str, rng: random.Random) -> list[int]:
        """One sampled segmentation of ``text`` as ids (no BOS/EOS)."""
        if self.nbest_size > 1:
            return self._sample_nbest(text, rng)
        return [index for word in self.vocabulary.words(text) for index in self._word(word, rng)]

    def _sample_nbest(self, text: str, rng: random.Random) -> list[int]:
        """One of SentencePiece's ``nbest_size`` best segmentations (a deterministic list)."""
        processor = self.vocabulary.processor
        candidates = processor.nbest_encode(text, nbest_size=self.nbest_size, out_type=int)
        if len(candidates) < 2:
            return candidates[0] if candidates else []
        scores = [self.alpha * sum(processor.get_score(i) for i in ids) for ids in candidates]
        top = max(scores)
        return rng.choices(candidates, weights=[math.exp(s - top) for s in scores])[0]

    def _word(self, word: str, rng: random.Random) -> list[int]:
        """Backward sampling through the word's lattice, from its end to its start."""
        incoming, forward = self._lattice(word)
        ids, end = [], len(word)
        while end > 0:
            nodes = incoming[end]
            threshold, chosen = rng.random(), nodes[-1]
            for node in nodes:  # P(node) = exp(forward[start] + weight - forward[end])
                threshold -= math.exp(forward[node[0]] + node[2] - forward[end])
                if threshold < 0:
                    chosen = node
                    break
            ids.append(chosen[1])
            end = chosen[0]
        return ids[::-1]

    def _lattice(self, word: str) -> tuple[list[list[tuple[int, int, float]]], list[float]]:
        """Every node (piece) of the word's lattice by end position, and the forward log-sum
        of the weights of the paths to each position (cached per word)."""
        cached = self._lattices.get(word)
        if cached is not None:
            return cached
        vocabulary, size = self.vocabulary, len(word)
        incoming: list[list[tuple[int, int, float]]] = [[] for _ in range(size + 1)]
        forward = [0.0] + [-math.inf] * size
        for start in range(size):
            if start:  # every node ending here is known: the log-sum over them
                forward[start] = _log_sum([forward[s] + w for s, _, w in incoming[start]])
                if forward[start] == -math.inf:
                    continue  # no path reaches this position (inside a run of unknowns)
            unknown_end = vocabulary.unknown_end(word, start)
            if unknown_end > start:  # characters no piece covers: one UNK node
                incoming[unknown_end].append((start, vocabulary.unk_id, 0.0))
                continue
            for end in range(start + 1, size + 1):
                piece = word[start:end]
                if piece not in vocabulary.prefixes:
                    break
                if piece in vocabulary.ids:
                    weight = self.alpha * vocabulary.scores[piece]
                    incoming[end].append((start, vocabulary.ids[piece], weight))
        forward[size] = _log_sum([forward[s] + w for s, _, w in incoming[size]])
        if len(self._lattices) >= CACHED_WORDS:
            self._lattices.clear()
        self._lattices[word] = incoming, forward
        return incoming, forward


class BpeDropout:
    """BPE-dropout over a BPE model: its merges, best score first (leftmost on ties), each
    candidate merge dropped with probability ``alpha``."""

    def __init__(self, processor: spm.SentencePieceProcessor, alpha: float) -> None:
        self.vocabulary, self.alpha = _Vocabulary(processor), alpha

    def sample(self, text: str, rng: random.Random) -> list[int]:
        """One segmentation of ``text`` with merges dropped at random, as ids (no BOS/EOS)."""
        return [index for word in self.vocabulary.words(text) for index in self._word(word, rng)]

    def _word(self, word: str, rng: random.Random) -> list[int]:
        """Merge the word's characters as SentencePiece's BPE does, skipping dropped merges."""
        scores = self.vocabulary.scores
        symbols = list(word)
        after = [*range(1, len(word)), -1]
        before = list(range(-1, len(word) - 1))
        agenda: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged size)

        def propose(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                merged = symbols[left] + symbols[right]
                if merged in scores:
                    heapq.heappush(agenda, (-scores[merged], left, right, len(merged)))

        for right in range(1, len(word)):
            propose(right - 1, right)
        while agenda:
            _, left, right, size = heapq.heappop(agenda)
            if not symbols[left] or not symbols[right]:
                continue
            if len(symbols[left]) + len(symbols[right]) != size:
                continue  # a neighbour changed since this pair was proposed
            if rng.random() < self.alpha:
                continue  # dropped
            symbols[left], symbols[right] = symbols[left] + symbols[right], ""
            after[left] = after[right]
            if after[right] >= 0:
                before[after[right]] = left
            propose(before[left], left)
            propose(left, after[left])
        ids = [self.vocabulary.ids.get(symbol, -1) for symbol in symbols if symbol]
        return _merge_unknown(ids, self.vocabulary.unk_id)


def _log_sum(values: list[float]) -> float:
    """log(sum(exp(values))), -inf for none."""
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(value - top) for value in values))


def _merge_unknown(ids: list[int], unk_id: int) -> list[int]:
    """Ids with -1 (a symbol outside the vocabulary) as UNK, a run of them as one UNK."""
    merged: list[int] = []
    for index in ids:
        if index == -1:
            if merged and merged[-1] == unk_id:
                continue
            index = unk_id
        merged.append(index)
    return merged


SubwordSampler = UnigramSampler | BpeDropout  # either has sample(text, rng) -> ids


def sampler_for(
    processor: spm.SentencePieceProcessor, kind: str, alpha: float, nbest_size: int
) -> SubwordSampler:
    """The sampler for a model of type ``kind`` (:func:`model_type`)."""
    if kind == "unigram":
        return UnigramSampler(processor, alpha, nbest_size)
    if kind == "bpe":
        return BpeDropout(processor, alpha)
    raise ValueError(
        f"subword sampling needs a unigram or bpe SentencePiece model, not {kind!r}; "
        "turn tokenizer.sampling off or train the tokenizer with tokenizer.type unigram or bpe"
    )
