"""The torch backend: translate with models in memory, checkpoints and ensembles.

:func:`translate_n_best` is what validation, ``attn-translate`` and the benchmarks run: it
encodes, sorts by length into token-bounded batches, searches (greedy or beam) and returns the
hypotheses of every input in input order. :class:`TorchTranslator` holds a loaded model for the
:class:`~seq2seq_attn.translation.common.Translator` protocol; :func:`open_checkpoints` loads
one from checkpoint files (several: an ensemble).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..batching import collate, length_batches
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..config import Config, DecodeConfig
from ..decoding import Hypothesis, Seq2Seq, beam_search, greedy_search
from ..device import Precision, resolve_device, resolve_precision
from ..models.ensemble import Ensemble
from ..tokenizer import BOS_ID, EOS_ID, Tokenizer
from .common import Capabilities, TranslationSettings, Translator, encode_sources

logger = logging.getLogger(__name__)


def _search(
    model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor, decode: DecodeConfig
) -> list[list[Hypothesis]]:
    """The ``n_best`` hypotheses of each row of a ``(B, S)`` batch (greedy: beam_size == 1)."""
    if decode.beam_size == 1:
        return [[found] for found in greedy_search(model, src, src_mask, BOS_ID, EOS_ID, decode)]
    return beam_search(model, src, src_mask, BOS_ID, EOS_ID, decode)


def translate_n_best(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    decode: DecodeConfig,
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
) -> list[list[Hypothesis]]:
    """Translate ``src_texts`` in length-sorted batches of at most ``max_tokens`` source slots
    (and at most ``max_sentences`` sentences, when given).

    Returns, per input and in input order, its ``decode.n_best`` hypotheses, best first. A
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
                found = _search(model, src, src_mask, decode)
                for index, hypotheses in zip(indices, found, strict=True):
                    outputs[index] = hypotheses
    finally:
        model.train(was_training)
    return outputs


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
class TorchTranslator(Translator):
    """A trained model ready to translate: the model (eval mode, on ``device``), its tokenizer
    and training config, the decode settings and the autocast precision."""

    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config
    decode: DecodeConfig
    device: torch.device
    precision: Precision
    max_tokens: int = 4096  # source token slots per batch
    max_sentences: int | None = None  # sentences per batch (None: as many as fit)
    capabilities: ClassVar[Capabilities] = Capabilities(attention=True)

    def n_best(self, src_texts: Sequence[str]) -> list[list[Hypothesis]]:
        """The ``decode.n_best`` hypotheses of each input, best first, in input order."""
        return translate_n_best(
            self.model, self.tokenizer, src_texts, self.decode, self.max_tokens, self.device,
            self.precision.dtype, self.max_sentences,
        )  # fmt: skip

    def attention(
        self, index: int, src_text: str, hypothesis: Hypothesis, layer: int = -1,
        head: int | None = None,
    ) -> dict:  # fmt: skip
        """:func:`attention_record` of one translated sentence (an ensemble's first model)."""
        return attention_record(
            self.model, self.tokenizer, index, src_text, hypothesis, self.device, layer, head
        )


def open_checkpoints(paths: Sequence[Path], settings: TranslationSettings) -> TorchTranslator:
    """The checkpoint files ``paths`` loaded for translation: one model, or an
    :class:`~seq2seq_attn.models.ensemble.Ensemble` of all of them (averaged log-probabilities)
    with the first one's decode settings and attention, on one device and precision.

    Raises ``CheckpointError`` for a damaged checkpoint, ``ConfigError`` (a ``ValueError``)
    for an impossible setting and ``ValueError`` naming both checkpoints for an ensemble member
    whose tokenizer differs from the first model's.
    """
    model, tokenizer, config = model_from_checkpoint(load_checkpoint(paths[0], mmap=True), paths[0])
    if len(paths) > 1:
        model = _ensemble(paths, model, tokenizer)
    decode = settings.decode_settings(config.decode)
    device = resolve_device(settings.device, "--device")
    precision = resolve_precision(settings.precision or "fp32", device, "--precision")
    return TorchTranslator(
        model.to(device), tokenizer, config, decode, device, precision, settings.max_tokens,
        settings.max_sentences,
    )  # fmt: skip


def _ensemble(paths: Sequence[Path], model: Seq2Seq, tokenizer: Tokenizer) -> Ensemble:
    """``model`` (loaded from ``paths[0]``) and the models of the other paths as one ensemble,
    each checked to have ``tokenizer``."""
    members = [model]
    for path in paths[1:]:
        member, member_tokenizer, _ = model_from_checkpoint(load_checkpoint(path, mmap=True), path)
        check_same_tokenizer(paths[0], tokenizer, path, member_tokenizer)
        members.append(member)
    logger.info(
        "ensemble of %d models (%s and %s); decode settings and attention come from the first",
        len(members), paths[0], ", ".join(str(other) for other in paths[1:]),
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
