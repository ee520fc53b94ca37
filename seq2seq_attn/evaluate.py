"""Translate lists of sentences with a model and score them against references.

:func:`translate` is what validation, ``attn-translate`` and the benchmarks call: it encodes,
sorts by length into token-bounded batches, searches (greedy or beam), and returns exactly one
:class:`~seq2seq_attn.decoding.Hypothesis` per input, in input order. :func:`score_translations`
and :func:`evaluate_split` detokenize and score with sacreBLEU. :func:`load_for_translation`
turns a checkpoint into a :class:`Translator` (what ``attn-translate`` and the benchmark use),
and :func:`attention_record` gives one sentence's attention for pictures.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .batching import collate, length_batches
from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from .config import Config, DataConfig, DecodeConfig
from .decoding import Hypothesis, SearchOptions, Seq2Seq, beam_search, greedy_search
from .device import Precision, resolve_device, resolve_precision
from .metrics import Score, corpus_scores
from .models.ensemble import Ensemble
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


def overridden_options(
    decode: DecodeConfig,
    beam_size: int | None,
    length_penalty: float | None,
    max_length_ratio: float | None,
    n_best: int,
) -> SearchOptions:
    """The ``decode`` section as :class:`SearchOptions`, with the settings that are not None
    in its place (what ``attn-translate``'s options override) and ``n_best``."""
    changes = {"beam_size": beam_size, "length_penalty": length_penalty,
               "max_length_ratio": max_length_ratio}  # fmt: skip
    decode = dataclasses.replace(
        decode, **{key: value for key, value in changes.items() if value is not None}
    )
    return dataclasses.replace(search_options(decode), n_best=n_best)


def encode_sources(
    tokenizer: Tokenizer, src_texts: Sequence[str], max_positions: int | None
) -> list[list[int]]:
    """Source ids per line (``[]`` for a blank line), cut to ``max_positions`` tokens (EOS
    included; None: no limit) with one warning naming the lines."""
    src_ids = [
        ids if text.strip() else []
        for text, ids in zip(src_texts, tokenizer.encode_src(src_texts), strict=True)
    ]
    if max_positions is None:
        return src_ids
    limit = max_positions - 1  # room for EOS
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
    src_ids = encode_sources(tokenizer, src_texts, model.max_positions)
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
    from .data import load_pairs  # here, not at the top: HF datasets is slow to import

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


def attention_record(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    index: int,
    src_text: str,
    hypothesis: Hypothesis,
    device: torch.device | str = "cpu",
    layer: int = -1,
    head: int | None = None,
) -> dict:
    """One sentence's subword tokens and cross-attention weights, as plain JSON data (what
    ``attn-translate --attention`` writes and :func:`~seq2seq_attn.plotting.plot_attention`
    draws); ``index`` numbers the sentence."""
    src_ids = tokenizer.encode_src([src_text])[0]
    if model.max_positions is not None:
        src_ids = src_ids[: model.max_positions - 1]
    weights = attention_matrix(model, src_ids, hypothesis.tokens, device, layer, head)
    return {
        "index": index,
        "src_tokens": [*tokenizer.src_pieces(src_ids), "</s>"],
        "tgt_tokens": [*tokenizer.tgt_pieces(hypothesis.tokens), "</s>"],
        "layer": layer,
        "head": "mean" if head is None else head,
        "weights": [[round(float(w), 5) for w in row] for row in weights],  # (T + 1, S + 1)
    }


@dataclass
class Translator:
    """A trained model ready to translate: the model (eval mode, on ``device``), its tokenizer
    and training config, the search settings and the autocast precision."""

    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config
    options: SearchOptions
    device: torch.device
    precision: Precision
    max_tokens: int = 4096  # source token slots per batch
    max_sentences: int | None = None  # sentences per batch (None: as many as fit)

    def n_best(self, src_texts: Sequence[str]) -> list[list[Hypothesis]]:
        """The ``options.n_best`` hypotheses of each input, best first, in input order."""
        return translate_n_best(
            self.model, self.tokenizer, src_texts, self.options, self.max_tokens, self.device,
            self.precision.dtype, self.max_sentences,
        )  # fmt: skip

    def translate(self, src_texts: Sequence[str]) -> list[Hypothesis]:
        """The best hypothesis of each input, in input order."""
        return [hypotheses[0] for hypotheses in self.n_best(src_texts)]

    def detokenize(self, hypotheses: Sequence[Hypothesis]) -> list[str]:
        """The target text of each hypothesis."""
        return self.tokenizer.decode_tgt([hypothesis.tokens for hypothesis in hypotheses])

    def attention(
        self,
        index: int,
        src_text: str,
        hypothesis: Hypothesis,
        layer: int = -1,
        head: int | None = None,
    ) -> dict:
        """:func:`attention_record` of one translated sentence."""
        return attention_record(
            self.model, self.tokenizer, index, src_text, hypothesis, self.device, layer, head
        )


def load_for_translation(
    checkpoint: str | Path,
    *,
    ensemble: Sequence[str | Path] = (),
    device: str = "auto",
    precision: str = "fp32",
    beam_size: int | None = None,
    length_penalty: float | None = None,
    max_length_ratio: float | None = None,
    n_best: int = 1,
    max_tokens: int = 4096,
    max_sentences: int | None = None,
) -> Translator:
    """A checkpoint file, or a run directory (its ``best.pt``, else ``last.pt``), loaded for
    translation with the run's ``decode`` settings; the keyword arguments that are not None
    override them (``beam_size=1``: greedy). ``precision``: fp32, bf16, fp16 (CUDA) or auto.

    ``ensemble``: more checkpoints or run directories; the model is then an
    :class:`~seq2seq_attn.models.ensemble.Ensemble` of all of them (averaged log-probabilities),
    with the first checkpoint's decode settings and attention, on one device and precision.

    Raises ``CheckpointError`` for a missing or damaged checkpoint and ``ConfigError`` (a
    ``ValueError``) for an impossible setting, each naming what is wrong; ``ValueError`` naming
    both checkpoints for an ensemble member with another tokenizer than the first model's.
    """
    path, model, tokenizer, config = _load_model(checkpoint)
    if ensemble:
        model = _load_ensemble(path, model, tokenizer, ensemble)
    options = overridden_options(config.decode, beam_size, length_penalty, max_length_ratio, n_best)
    run_device = resolve_device(device)
    return Translator(
        model.to(run_device), tokenizer, config, options, run_device,
        resolve_precision(precision, run_device), max_tokens, max_sentences,
    )  # fmt: skip


def _load_model(checkpoint: str | Path) -> tuple[Path, Seq2Seq, Tokenizer, Config]:
    """The checkpoint file a path names, and its model (eval mode, CPU), tokenizer and config."""
    path = find_checkpoint(Path(checkpoint))
    return path, *model_from_checkpoint(load_checkpoint(path, mmap=True), path)


def _load_ensemble(
    first: Path, model: Seq2Seq, tokenizer: Tokenizer, others: Sequence[str | Path]
) -> Ensemble:
    """``model`` (loaded from ``first``) and the models of ``others`` as one ensemble, each
    checked to have ``tokenizer``."""
    members = [model]
    for other in others:
        path, member, member_tokenizer, _ = _load_model(other)
        check_same_tokenizer(first, tokenizer, path, member_tokenizer)
        members.append(member)
    logger.info(
        "ensemble of %d models (%s and %s); decode settings and attention come from the first",
        len(members), first, ", ".join(str(other) for other in others),
    )  # fmt: skip
    return Ensemble(members)


def check_same_tokenizer(
    first: Path, first_tokenizer: Tokenizer, other: Path, other_tokenizer: Tokenizer
) -> None:
    """Raise ``ValueError`` naming both checkpoints and the side (target, then source) whose
    SentencePiece models differ: ensemble members must tokenize exactly alike."""
    pairs = {
        "target": (_tgt_model_bytes(first_tokenizer), _tgt_model_bytes(other_tokenizer)),
        "source": (first_tokenizer.src_model, other_tokenizer.src_model),
    }
    for side, (first_model, other_model) in pairs.items():
        if first_model != other_model:
            unsupported = (
                "" if side == "target" else "different source tokenizers are not supported; "
            )
            raise ValueError(
                f"cannot ensemble {first} and {other}: their {side} tokenizers (SentencePiece "
                f"models) differ; {unsupported}ensemble models trained with the same tokenizer "
                "(runs on the same training data with the same tokenizer section share it)"
            )


def _tgt_model_bytes(tokenizer: Tokenizer) -> bytes:
    """The target side's SentencePiece model (the one joint model when ``joint``)."""
    return tokenizer.src_model if tokenizer.tgt_model is None else tokenizer.tgt_model
