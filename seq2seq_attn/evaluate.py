"""Translate lists of sentences with a model and score them against references.

:func:`translate` is what validation, ``attn-translate`` and the benchmarks call: it encodes,
sorts by length into token-bounded batches, searches (greedy or beam), and returns exactly one
:class:`~seq2seq_attn.decoding.Hypothesis` per input, in input order. :func:`score_translations`
and :func:`evaluate_split` detokenize and score with sacreBLEU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import DataConfig, DecodeConfig
from .data import collate, load_pairs
from .decoding import Hypothesis, SearchOptions, Seq2Seq, beam_search, greedy_search
from .metrics import Score, corpus_scores
from .tokenizer import BOS_ID, EOS_ID, Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Translations of a split and their scores; every list is in corpus order."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]  # detokenized
    scores: dict[str, Score]


def search_options(decode: DecodeConfig, beam_size: int | None = None) -> SearchOptions:
    """The ``decode`` section as :class:`SearchOptions` (``beam_size`` overrides it; 1 = greedy)."""
    return SearchOptions(
        beam_size=decode.beam_size if beam_size is None else beam_size,
        length_penalty=decode.length_penalty,
        min_length=decode.min_length,
        max_length=decode.max_length,
        max_length_ratio=decode.max_length_ratio,
        max_length_offset=decode.max_length_offset,
    )


def length_batches(
    lengths: Sequence[int], max_tokens: int, max_sentences: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` sorted ascending and cut into batches of at most ``max_tokens``
    padded slots (``B * longest``) and at most ``max_sentences`` items; a single longer item
    gets a batch of its own."""
    batches: list[list[int]] = []
    room = max_sentences or len(lengths)
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        last = batches[-1] if batches else []
        if last and len(last) < room and (len(last) + 1) * lengths[index] <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _encode_sources(
    model: Seq2Seq, tokenizer: Tokenizer, src_texts: Sequence[str]
) -> list[list[int]]:
    """Source ids per line (``[]`` for a blank line), cut to the model's ``max_positions``
    (EOS included) with one warning naming the lines."""
    src_ids = [
        ids if text.strip() else []
        for text, ids in zip(src_texts, tokenizer.encode_src(src_texts), strict=True)
    ]
    if model.max_positions is None:
        return src_ids
    limit = model.max_positions - 1  # room for EOS
    long_lines = [number for number, ids in enumerate(src_ids, start=1) if len(ids) > limit]
    if long_lines:
        shown = ", ".join(map(str, long_lines[:10])) + (" ..." if len(long_lines) > 10 else "")
        logger.warning(
            "%d input line(s) exceed the model's limit of %d source tokens and were translated "
            "from their first %d tokens only (lines %s)",
            len(long_lines), limit, limit, shown,
        )  # fmt: skip
    return [ids[:limit] for ids in src_ids]


def _search(
    model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The ``n_best`` hypotheses of each row of a ``(B, S)`` batch (greedy: beam_size == 1)."""
    if options.beam_size == 1:
        return [[found] for found in greedy_search(model, src, src_mask, BOS_ID, EOS_ID, options)]
    return beam_search(model, src, src_mask, BOS_ID, EOS_ID, options)


def translate(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    options: SearchOptions,
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
) -> list[Hypothesis]:
    """The best translation of each of ``src_texts``; see :func:`translate_n_best`."""
    found = translate_n_best(
        model, tokenizer, src_texts, options, max_tokens, device, amp_dtype, max_sentences
    )
    return [hypotheses[0] for hypotheses in found]


def translate_n_best(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    options: SearchOptions,
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
) -> list[list[Hypothesis]]:
    """Translate ``src_texts`` in length-sorted batches of at most ``max_tokens`` source slots
    (and at most ``max_sentences`` sentences, when given).

    Returns, per input and in input order, its ``options.n_best`` hypotheses, best first. A
    blank input gets one empty hypothesis and never reaches the model; an input longer than
    ``model.max_positions`` is translated from its first tokens, with a warning. ``amp_dtype``
    (``torch.bfloat16``...) runs the search under autocast. The model is put in eval mode and
    restored afterwards.
    """
    device = torch.device(device)
    src_ids = _encode_sources(model, tokenizer, src_texts)
    outputs = [[Hypothesis(tokens=[], log_prob=0.0, score=0.0)] for _ in src_ids]
    nonempty = [index for index, ids in enumerate(src_ids) if ids]
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            lengths = [len(src_ids[i]) + 1 for i in nonempty]
            for rows in length_batches(lengths, max_tokens, max_sentences):
                indices = [nonempty[row] for row in rows]
                batch = collate([src_ids[i] for i in indices], [[] for _ in indices], indices)
                src, src_mask = batch.src.to(device), batch.src_mask.to(device)  # (B, S)
                found = _search(model, src, src_mask, options)
                for index, hypotheses in zip(indices, found, strict=True):
                    outputs[index] = hypotheses
    finally:
        model.train(was_training)
    return outputs


def score_translations(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    ref_texts: Sequence[str],
    options: SearchOptions,
    max_tokens: int,
    device: torch.device | str,
    metrics: Sequence[str] = ("bleu", "chrf"),
    amp_dtype: torch.dtype | None = None,
) -> Evaluation:
    """Translate ``src_texts``, detokenize, and score against ``ref_texts`` with sacreBLEU."""
    if len(src_texts) != len(ref_texts):
        raise ValueError(
            f"{len(src_texts)} source lines but {len(ref_texts)} references: they must be "
            "line-aligned"
        )
    hypotheses = translate(model, tokenizer, src_texts, options, max_tokens, device, amp_dtype)
    detokenized = tokenizer.decode_tgt([hypothesis.tokens for hypothesis in hypotheses])
    scores = corpus_scores(detokenized, ref_texts, metrics)
    return Evaluation(list(src_texts), list(ref_texts), detokenized, scores)


def evaluate_split(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    data: DataConfig,
    split: str,
    options: SearchOptions,
    device: torch.device | str,
    metrics: Sequence[str] = ("bleu", "chrf"),
    amp_dtype: torch.dtype | None = None,
) -> Evaluation:
    """Translate and score every pair of the configured ``split`` (``dev`` or ``test``), blank
    lines included, in batches of ``data.max_tokens`` source slots."""
    pairs = load_pairs(data, split)
    return score_translations(
        model, tokenizer, pairs["src"], pairs["tgt"], options, data.max_tokens, device, metrics,
        amp_dtype,
    )  # fmt: skip


def attention_matrix(
    model: Seq2Seq,
    src_ids: Sequence[int],
    tgt_ids: Sequence[int],
    device: torch.device | str = "cpu",
    layer: int = -1,
    head: int | None = None,
) -> torch.Tensor:
    """Cross-attention of one sentence pair for pictures: ``(T + 1, S + 1)`` weights, one row
    per target token and the final EOS, one column per source token and the source EOS.

    The pair is run teacher-forced (for a search output this equals what the search saw). For a
    Transformer, ``layer`` picks the decoder layer and ``head`` one head (``None``: their mean);
    an RNN has one alignment.
    """
    src = torch.tensor([[*src_ids, EOS_ID]], device=device)  # (1, S + 1)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]], device=device)  # (1, T + 1)
    with torch.inference_mode():
        maps = model.attention_maps(src, torch.ones_like(src, dtype=torch.bool), tgt_in)
    chosen = maps[0, layer]  # (H, T + 1, S + 1)
    return (chosen.mean(dim=0) if head is None else chosen[head]).float().cpu()
