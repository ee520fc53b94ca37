"""Score a model's translations of a list of sentences, or of a configured split, against
references with sacreBLEU, and draw one sentence's attention: what validation runs during
training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .config import DataConfig, DecodeConfig
from .decoding import Seq2Seq
from .metrics import Score, corpus_scores
from .tokenizer import Tokenizer
from .translation.torch_backend import attention_record, translate_n_best


@dataclass
class Evaluation:
    """Translations of a split and their scores; every list is in corpus order."""

    sources: list[str]
    references: list[str]
    hypotheses: list[str]  # detokenized
    scores: dict[str, Score]


def score_translations(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    ref_texts: Sequence[str],
    decode: DecodeConfig,
    max_tokens: int,
    device: torch.device | str,
    metrics: Sequence[str] = ("bleu", "chrf"),
    amp_dtype: torch.dtype | None = None,
) -> Evaluation:
    """Translate ``src_texts`` (the best hypothesis of each), detokenize, and score against
    ``ref_texts`` with sacreBLEU."""
    if len(src_texts) != len(ref_texts):
        raise ValueError(
            f"{len(src_texts)} source lines but {len(ref_texts)} references: they must be "
            "line-aligned"
        )
    found = translate_n_best(model, tokenizer, src_texts, decode, max_tokens, device, amp_dtype)
    detokenized = tokenizer.decode_tgt([hypotheses[0].tokens for hypotheses in found])
    scores = corpus_scores(detokenized, ref_texts, metrics)
    return Evaluation(list(src_texts), list(ref_texts), detokenized, scores)


def first_sentence_attention(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    decode: DecodeConfig,
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
) -> dict | None:
    """The cross-attention of the first non-blank of ``src_texts`` for the model's greedy
    translation of it, in eval mode (the model's mode is restored), as
    :func:`~seq2seq_attn.translation.torch_backend.attention_record` returns it (``index`` is the
    sentence's position in ``src_texts``); None when every text is blank."""
    index = next((i for i, text in enumerate(src_texts) if text.strip()), None)
    if index is None:
        return None
    greedy = replace(decode, beam_size=1, n_best=1)
    found = translate_n_best(
        model, tokenizer, [src_texts[index]], greedy, max_tokens, device, amp_dtype
    )
    was_training = model.training
    model.eval()
    try:
        return attention_record(model, tokenizer, index, src_texts[index], found[0][0], device)
    finally:
        model.train(was_training)


def evaluate_split(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    data: DataConfig,
    split: str,
    decode: DecodeConfig,
    device: torch.device | str,
    metrics: Sequence[str] = ("bleu", "chrf"),
    amp_dtype: torch.dtype | None = None,
) -> Evaluation:
    """Translate and score every pair of the configured ``split`` (``dev`` or ``test``), blank
    lines included, in batches of ``data.max_tokens`` source slots."""
    from .data import load_pairs  # here, not at the top: HF datasets is slow to import

    pairs = load_pairs(data, split)
    return score_translations(
        model, tokenizer, pairs["src"], pairs["tgt"], decode, data.max_tokens, device, metrics,
        amp_dtype,
    )  # fmt: skip
