"""Word alignments from cross-attention, the Pharaoh format, and their error rate against gold.

A word alignment links source word ``i`` to target word ``j`` (0-based over the whitespace
words of the detokenized source and target) and is written ``i-j`` (the Pharaoh format). It is
read off teacher-forced cross-attention: the row that predicts a target piece says where the
decoder looked for it. :func:`word_attention` turns a batch's subword attention into word
attention, every decoder layer and head kept, ``(L, H, J, I)``:

- a source word's weight is the **sum** of its pieces' weights (the attention mass on the
  word; the source EOS column is dropped);
- a target word's row is the **mean** of its pieces' rows. The argmax per target word is the
  same for the sum, but the mean stays a distribution over source positions whatever the
  word's length, so weights of words of different lengths compare.

:func:`argmax_links` links each target word to its highest-weighted source word (one link per
target word), from one layer and head or their averages (:func:`select_heads`).
:func:`alignment_error_rate` scores links against gold sure/possible links (Och & Ney, 2003).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .batching import collate, length_batches
from .corpus import TextFileError, iter_lines
from .models.common import Seq2Seq
from .tokenizer import UNK_ID, Tokenizer

WORD_START = "\u2581"  # SentencePiece's mark of a piece that follows whitespace
Link = tuple[int, int]  # (source word index, target word index)


def piece_words(pieces: Sequence[str], standalone: str | None = None) -> list[int | None]:
    """The word index of each SentencePiece piece: a piece starting with ``▁`` starts a word,
    the others continue the current one, so the words are the whitespace words of the text the
    pieces were encoded from. A bare ``▁`` is the space before the next word (a piece after it
    joins its word even when it starts with ``▁``); trailing bare ``▁`` pieces join the last
    word (``None`` when the pieces hold no text at all).

    ``standalone``: a piece that stands as a word of its own, for the words of the *decoded*
    text (SentencePiece decodes the unknown piece to `` ⁇ ``, spaces around it, even inside a
    word): it ends the word before it, and the piece after it starts a new one.
    """
    words: list[int | None] = []
    count, textless, after_standalone = 0, False, False  # textless: the last word, so far
    for piece in pieces:
        alone = piece == standalone
        starts = piece.startswith(WORD_START) or alone or after_standalone
        if count == 0 or (starts and not textless):
            count, textless = count + 1, True
        textless = textless and not piece.lstrip(WORD_START)
        after_standalone = alone
        words.append(count - 1)
    if textless:  # the last "word" is only spaces: it belongs to the word before it
        last = count - 2 if count >= 2 else None
        words = [last if word == count - 1 else word for word in words]
    return words


def word_count(pieces: Sequence[str], standalone: str | None = None) -> int:
    """Number of words in ``pieces`` (see :func:`piece_words`)."""
    return _words_in(piece_words(pieces, standalone))


def _words_in(word_of_piece: Sequence[int | None]) -> int:
    """Number of words in a :func:`piece_words` list."""
    return max((word for word in word_of_piece if word is not None), default=-1) + 1


def _pooling(word_lists: Sequence[Sequence[int | None]], length: int, mean: bool) -> Tensor:
    """``(B, W, length)`` matrices that gather the positions of each word: entry ``[b, w, p]``
    is 1 (``mean``: 1 over the word's piece count) when position ``p`` of row ``b`` belongs to
    word ``w``, else 0 (padding, EOS and word-less pieces)."""
    words = max((_words_in(row) for row in word_lists), default=0)
    pooling = torch.zeros(len(word_lists), words, length)
    for row, word_of_piece in enumerate(word_lists):
        for position, word in enumerate(word_of_piece):
            if word is not None:
                pooling[row, word, position] = 1.0
    if mean:
        pooling /= pooling.sum(dim=2, keepdim=True).clamp(min=1.0)
    return pooling


def cut_to_model(ids: Sequence[int], max_positions: int | None) -> list[int]:
    """``ids`` cut to fit a model of ``max_positions`` positions with its EOS or BOS (None: no
    limit); the words after the cut get no links."""
    return list(ids) if max_positions is None else list(ids[: max_positions - 1])


def iter_word_attention(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    max_tokens: int = 4096,
    device: torch.device | str = "cpu",
    output_words: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """``(index, word attention)`` of each (source, target) id pair (no BOS/EOS), in the
    order computed: the teacher-forced cross-attention as ``(L, H, J, I)`` on the CPU, every
    decoder layer ``L`` and head ``H``, ``J`` target and ``I`` source words (see the module
    docstring for how pieces combine); a view into its batch's tensor.

    Source words are those of the text the ids were encoded from; target words too, unless
    ``output_words``: then those of the decoded target (what a translation prints, where an
    unknown piece is a word of its own; see :func:`piece_words`). Pairs run in length-sorted
    batches of at most ``max_tokens`` source slots, padding masked; ids beyond
    ``model.max_positions`` are cut (:func:`cut_to_model`). The model is in eval mode
    meanwhile.
    """
    src_ids = [cut_to_model(ids, model.max_positions) for ids in src_ids]
    tgt_ids = [cut_to_model(ids, model.max_positions) for ids in tgt_ids]
    unknown = tokenizer.tgt_pieces([UNK_ID])[0] if output_words else None
    src_words = [piece_words(tokenizer.src_pieces(ids)) for ids in src_ids]
    tgt_words = [piece_words(tokenizer.tgt_pieces(ids), unknown) for ids in tgt_ids]
    was_training = model.training
    model.eval()
    try:
        lengths = [len(ids) + 1 for ids in src_ids]
        for rows in length_batches(lengths, max_tokens):
            batch = collate([src_ids[r] for r in rows], [tgt_ids[r] for r in rows], rows)
            batch = batch.to(device)
            with torch.inference_mode():
                maps = model.attention_maps(batch.src, batch.src_mask, batch.tgt_in).float()
            src_pool = _pooling([src_words[r] for r in rows], batch.src.size(1), mean=False)
            tgt_pool = _pooling([tgt_words[r] for r in rows], batch.tgt_in.size(1), mean=True)
            words = torch.einsum(
                "bjt,blhts,bis->blhji", tgt_pool.to(maps.device), maps, src_pool.to(maps.device)
            ).cpu()  # (B, L, H, J, I)
            for offset, row in enumerate(rows):
                target, source = _words_in(tgt_words[row]), _words_in(src_words[row])
                yield row, words[offset, :, :, :target, :source]
    finally:
        model.train(was_training)


def word_attention(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    max_tokens: int = 4096,
    device: torch.device | str = "cpu",
    output_words: bool = False,
) -> list[Tensor]:
    """The word attention ``(L, H, J, I)`` of each pair in input order (see
    :func:`iter_word_attention`, which takes the same arguments)."""
    found = iter_word_attention(
        model, tokenizer, src_ids, tgt_ids, max_tokens, device, output_words
    )
    outputs: list[Tensor] = [torch.empty(0)] * len(src_ids)
    for index, words in found:
        outputs[index] = words.clone()
    return outputs


def select_heads(maps: Tensor, layer: int | None = None, head: int | None = None) -> Tensor:
    """The ``(J, I)`` word attention of one decoder layer and head of ``maps`` ``(L, H, J, I)``;
    ``layer`` or ``head`` None averages over all of them. Indices may be negative (``-1``: the
    last); one out of range raises ``ValueError`` naming the valid range."""
    for name, index, size in (("layer", layer, maps.size(0)), ("head", head, maps.size(1))):
        if index is not None and not -size <= index < size:
            raise ValueError(
                f"alignment {name} {index} is out of range: the model has {size} decoder "
                f"{name}s with cross-attention; use 0..{size - 1} (or -{size}..-1), or leave "
                f"the {name} out to average them"
            )
    layers = maps.mean(dim=0) if layer is None else maps[layer]  # (H, J, I)
    return layers.mean(dim=0) if head is None else layers[head]


def argmax_links(weights: Tensor) -> list[Link]:
    """One link per target word, to the source word with the most weight in ``weights``
    ``(J, I)``; sorted by source then target index. No words on either side: no links."""
    if weights.numel() == 0:
        return []
    best = weights.argmax(dim=1).tolist()  # (J,)
    return sorted((src_index, tgt_index) for tgt_index, src_index in enumerate(best))


def diagonal_links(src_words: int, tgt_words: int) -> list[Link]:
    """The position-only baseline: target word ``j`` of ``J`` linked to source word
    ``floor((j + 0.5) * I / J)`` of ``I``, the one whose share of the source holds the target
    word's centre (``j`` itself when ``I == J``)."""
    if src_words == 0:
        return []
    return sorted(
        (math.floor((tgt_index + 0.5) * src_words / tgt_words), tgt_index)
        for tgt_index in range(tgt_words)
    )


def align(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    layer: int | None = None,
    head: int | None = None,
    max_tokens: int = 4096,
    device: torch.device | str = "cpu",
    output_words: bool = False,
) -> list[list[Link]]:
    """Argmax links of each (source, target) id pair from the teacher-forced attention of
    decoder ``layer`` and ``head`` (None: the average over them; see :func:`select_heads`);
    ``output_words``: targets are search outputs (see :func:`word_attention`)."""
    found = iter_word_attention(
        model, tokenizer, src_ids, tgt_ids, max_tokens, device, output_words
    )
    links: list[list[Link]] = [[] for _ in src_ids]
    for index, words in found:  # one batch's attention at a time in memory
        links[index] = argmax_links(select_heads(words, layer, head))
    return links


def format_pharaoh(links: Sequence[Link]) -> str:
    """Links as one Pharaoh line, ``"i-j i-j ..."`` (empty for no links)."""
    return " ".join(f"{src_index}-{tgt_index}" for src_index, tgt_index in links)


@dataclass(frozen=True)
class GoldAlignment:
    """One sentence's gold links: ``sure`` (``i-j``) and ``possible`` (``i-j`` and ``ipj``:
    every sure link is also possible)."""

    sure: frozenset[Link]
    possible: frozenset[Link]


def parse_pharaoh(line: str, origin: str) -> GoldAlignment:
    """One Pharaoh line: ``i-j`` sure links, ``ipj`` possible-only links, separated by
    whitespace. A malformed item raises ``TextFileError`` naming ``origin`` (``file:line``)."""
    sure: set[Link] = set()
    possible: set[Link] = set()
    for item in line.split():
        separator = "-" if "-" in item else "p"
        parts = item.split(separator)
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise TextFileError(
                f"{origin}: {item!r} is not an alignment link; write 'i-j' (sure) or 'ipj' "
                "(possible), i and j being 0-based source and target word indices"
            )
        link = (int(parts[0]), int(parts[1]))
        (sure if separator == "-" else possible).add(link)
    return GoldAlignment(frozenset(sure), frozenset(possible | sure))


def read_pharaoh(path: str | Path) -> list[GoldAlignment]:
    """The alignments of a Pharaoh file, one line per sentence (:func:`parse_pharaoh`);
    errors name the file and line."""
    return [parse_pharaoh(line, f"{path}:{number}") for number, line in iter_lines(path)]


def alignment_error_rate(
    predicted: Sequence[Sequence[Link]],
    sure: Sequence[Sequence[Link]],
    possible: Sequence[Sequence[Link]] | None = None,
) -> tuple[float, float, float]:
    """``(AER, precision, recall)`` of the predicted links ``A`` of a corpus against gold sure
    ``S`` and possible ``P`` links (one collection per sentence; ``possible`` None: none besides
    the sure ones; every sure link counts as possible whether listed or not). Och & Ney (2003):
    ``AER = 1 - (|A∩S| + |A∩P|) / (|A| + |S|)``, precision ``|A∩P| / |A|``, recall
    ``|A∩S| / |S|``, counted over the whole corpus. An empty denominator gives 0."""
    if len(predicted) != len(sure) or (possible is not None and len(possible) != len(sure)):
        raise ValueError(
            f"alignment_error_rate: {len(predicted)} predicted, {len(sure)} sure and "
            f"{'no' if possible is None else len(possible)} possible alignments; give one per "
            "sentence for each"
        )
    hits_sure = hits_possible = predicted_count = sure_count = 0
    for index, (links, sure_links) in enumerate(zip(predicted, sure, strict=True)):
        found, gold_sure = set(links), set(sure_links)
        gold_possible = gold_sure | (set(possible[index]) if possible is not None else set())
        hits_sure += len(found & gold_sure)
        hits_possible += len(found & gold_possible)
        predicted_count += len(found)
        sure_count += len(gold_sure)
    total = predicted_count + sure_count
    aer = 1.0 - (hits_sure + hits_possible) / total if total else 0.0
    precision = hits_possible / predicted_count if predicted_count else 0.0
    recall = hits_sure / sure_count if sure_count else 0.0
    return aer, precision, recall


def check_gold(
    gold: Sequence[GoldAlignment], src_texts: Sequence[str], tgt_texts: Sequence[str], path: str
) -> None:
    """Raise ``TextFileError`` naming ``path`` and the line when the gold alignments are not
    one per sentence pair or a link points past its sentence's whitespace words."""
    if len(gold) != len(src_texts) or len(tgt_texts) != len(src_texts):
        raise TextFileError(
            f"{path} has {len(gold)} lines but the source has {len(src_texts)} and the target "
            f"{len(tgt_texts)}; give one alignment line per sentence pair"
        )
    pairs = zip(gold, src_texts, tgt_texts, strict=True)
    for number, (links, src, tgt) in enumerate(pairs, start=1):
        src_words, tgt_words = len(src.split()), len(tgt.split())
        for src_index, tgt_index in sorted(links.possible):
            if src_index >= src_words or tgt_index >= tgt_words:
                raise TextFileError(
                    f"{path}:{number}: link {src_index}-{tgt_index} is outside the pair of "
                    f"{src_words} source and {tgt_words} target words; indices count "
                    "whitespace words from 0 (is the file aligned with --src and --ref?)"
                )


@dataclass(frozen=True)
class QualityRow:
    """AER, precision and recall of one alignment rule: decoder ``layer`` and ``head`` (None:
    averaged over them), or the position-only diagonal baseline (``diagonal``)."""

    layer: int | None
    head: int | None
    aer: float
    precision: float
    recall: float
    diagonal: bool = False

    @property
    def name(self) -> str:
        """``layer 1 head 0``, ``layer 1 mean``, ``all layers mean`` or ``diagonal``."""
        if self.diagonal:
            return "diagonal"
        head = "mean" if self.head is None else f"head {self.head}"
        return f"all layers {head}" if self.layer is None else f"layer {self.layer} {head}"


def alignment_quality(maps: Sequence[Tensor], gold: Sequence[GoldAlignment]) -> list[QualityRow]:
    """:class:`QualityRow` of every decoder layer and head of the word attention ``maps`` (one
    ``(L, H, J, I)`` per sentence, from :func:`word_attention`), each layer's head average
    (with several heads), the all-layers average (with several layers) and the diagonal
    baseline, against ``gold`` (one per sentence). An RNN's one attention is ``layer 0 head 0``."""
    if not maps:
        raise ValueError("alignment_quality: no sentences to score")
    layers, heads = maps[0].shape[:2]
    rules: list[tuple[int | None, int | None]] = []
    for layer in range(layers):
        rules += [(layer, head) for head in range(heads)] + [(layer, None)] * (heads > 1)
    rules += [(None, None)] * (layers > 1)
    sure = [links.sure for links in gold]
    possible = [links.possible for links in gold]
    rows = []
    for layer, head in rules:
        predicted = [argmax_links(select_heads(words, layer, head)) for words in maps]
        rows.append(QualityRow(layer, head, *alignment_error_rate(predicted, sure, possible)))
    diagonal = [diagonal_links(words.size(-1), words.size(-2)) for words in maps]
    scores = alignment_error_rate(diagonal, sure, possible)
    return [*rows, QualityRow(None, None, *scores, diagonal=True)]


def mismatched_lines(
    maps: Sequence[Tensor], src_texts: Sequence[str], tgt_texts: Sequence[str]
) -> list[int]:
    """Line numbers (from 1) whose word attention ``(L, H, J, I)`` does not have as many words
    as the texts' whitespace split (a source or target cut at the model's length limit, or a
    text that SentencePiece normalises into other words): their links may not match gold."""
    triples = zip(maps, src_texts, tgt_texts, strict=True)
    return [
        number
        for number, (words, src, tgt) in enumerate(triples, start=1)
        if tuple(words.shape[-2:]) != (len(tgt.split()), len(src.split()))
    ]


def format_quality_table(rows: Sequence[QualityRow]) -> str:
    """``rows`` as a Markdown table (AER, precision, recall in percent), the attention rule
    with the lowest AER marked ``*``."""
    best = min((row.aer for row in rows if not row.diagonal), default=None)
    lines = ["| rule | AER % | precision % | recall % |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        mark = " *" if row.aer == best and not row.diagonal else ""
        lines.append(
            f"| {row.name}{mark} | {100 * row.aer:.1f} | {100 * row.precision:.1f} "
            f"| {100 * row.recall:.1f} |"
        )
    return "\n".join(lines)
