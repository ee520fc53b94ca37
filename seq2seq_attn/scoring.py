"""Forced decoding: a model's log-probability of given translations, token by token.

:func:`score_pairs` scores (source, target) text pairs with a model in memory (what
``attn-score`` runs through :meth:`Translator.score`); :func:`score_ids` does the same for id
lists (a search's own outputs, validation). Both backends encode pairs with
:func:`encode_pairs` and batch them with :func:`scoring_batches`, so that a checkpoint and its
exported folder score the same tokens.

A pair's scores are the log-probabilities of each target token and of the final EOS (BOS is
given, never scored), teacher forced. Blank lines: a pair whose source is blank gets no score,
an empty list (like translation, a blank source never reaches the model; its total and mean
are undefined, so a filter on the per-token mean drops it); a blank target with a real source
scores the EOS alone (one value).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from .batching import Batch, collate, length_batches
from .models.common import Seq2Seq
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def encode_lines(
    encode: Callable[[list[str]], list[list[int]]],
    texts: Sequence[str],
    max_positions: int | None,
    side: str,
) -> list[list[int]]:
    """Ids per line (without BOS and EOS; ``[]`` for a blank line) by ``encode``, cut to
    ``max_positions - 1`` tokens (room for EOS or BOS; None: no limit), with one warning that
    names the ``side`` ("source", "target") and the lines. The rule translation cuts sources by.
    """
    ids_per_line = [
        ids if text.strip() else [] for text, ids in zip(texts, encode(list(texts)), strict=True)
    ]
    if max_positions is None:
        return ids_per_line
    limit = max_positions - 1
    long_lines = [number for number, ids in enumerate(ids_per_line, start=1) if len(ids) > limit]
    if long_lines:
        shown = ", ".join(map(str, long_lines[:10])) + (" ..." if len(long_lines) > 10 else "")
        logger.warning(
            "%d %s line(s) exceed the model's limit of %d %s tokens and were scored with their "
            "first %d tokens only (lines %s)",
            len(long_lines), side, limit, side, limit, shown,
        )  # fmt: skip
    return [ids[:limit] for ids in ids_per_line]


def encode_pairs(
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    max_positions: int | None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Source and target ids of each pair (:func:`encode_lines`): what both backends score."""
    return (
        encode_lines(tokenizer.encode_src, src_texts, max_positions, "source"),
        encode_lines(tokenizer.encode_tgt, tgt_texts, max_positions, "target"),
    )


def scoring_batches(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    max_tokens: int,
    max_sentences: int | None = None,
) -> list[list[int]]:
    """Indices of the pairs that have a source, sorted by size and cut into batches of at most
    ``max_tokens`` padded slots (``B *`` the largest size; a pair's size is
    ``max(len(src), len(tgt)) + 1``, EOS or BOS included) and ``max_sentences`` pairs; a
    ``ValueError`` when there are not as many targets as sources."""
    if len(src_ids) != len(tgt_ids):
        raise ValueError(
            f"{len(src_ids)} sources but {len(tgt_ids)} targets: give one target per source"
        )
    scored = [index for index, ids in enumerate(src_ids) if ids]
    sizes = [max(len(src_ids[index]), len(tgt_ids[index])) + 1 for index in scored]
    return [
        [scored[position] for position in batch]
        for batch in length_batches(sizes, max_tokens, max_sentences)
    ]


def batch_log_probs(model: Seq2Seq, batch: Batch, lengths: Sequence[int]) -> list[list[float]]:
    """Teacher-forced log-probabilities (fp32) of each row's first ``lengths[row]`` ``tgt_out``
    tokens (the target and its EOS). The lengths are given, not read from ``batch.tgt_mask``:
    a search may output the PAD id, which the mask would take for padding."""
    logits = model(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, V)
    log_probs = logits.log_softmax(dim=-1, dtype=torch.float32)  # (B, T, V)
    picked = log_probs.gather(2, batch.tgt_out.unsqueeze(2)).squeeze(2)  # (B, T)
    return [row[:length] for row, length in zip(picked.cpu().tolist(), lengths, strict=True)]


def score_ids(
    model: Seq2Seq,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
) -> list[list[float]]:
    """Per pair of id lists (without BOS and EOS, already cut to the model's limits), the
    log-probability of each target token and of the final EOS, in input order; ``[]`` for a
    pair without source ids.

    Pairs run in length-sorted batches (:func:`scoring_batches`); ``amp_dtype``
    (``torch.bfloat16``...) runs the model under autocast, the log-softmax stays fp32. The
    model is put in eval mode and restored afterwards.
    """
    device = torch.device(device)
    scores: list[list[float]] = [[] for _ in src_ids]
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
        ):
            for indices in scoring_batches(src_ids, tgt_ids, max_tokens, max_sentences):
                targets = [tgt_ids[i] for i in indices]
                batch = collate([src_ids[i] for i in indices], targets, indices).to(device)
                lengths = [len(ids) + 1 for ids in targets]  # EOS included
                for index, values in zip(
                    indices, batch_log_probs(model, batch, lengths), strict=True
                ):
                    scores[index] = values
    finally:
        model.train(was_training)
    return scores


def score_pairs(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
) -> list[list[float]]:
    """Per (source, target) text pair, the log-probability of each target token and of the
    final EOS, in input order (see the module docstring for blank lines).

    Both sides are encoded and cut to the model's limit by :func:`encode_pairs` (sources as
    translation cuts them), then scored by :func:`score_ids`.
    """
    src_ids, tgt_ids = encode_pairs(tokenizer, src_texts, tgt_texts, model.max_positions)
    return score_ids(model, src_ids, tgt_ids, max_tokens, device, amp_dtype, max_sentences)
