"""The torch backend: translate with models in memory, checkpoints and ensembles.

:func:`translate_n_best` is what validation, ``attn-translate`` and the benchmarks run: it
encodes, sorts by length into token-bounded batches, searches (greedy or beam) and returns the
hypotheses of every input in input order. :class:`TorchTranslator` holds a loaded model for the
:class:`~seq2seq_attn.translation.common.Translator` protocol; :func:`open_checkpoints` loads
one from checkpoint files (several: an ensemble).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..alignment import align, format_pharaoh
from ..batching import collate, length_batches
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..config import Config, DecodeConfig
from ..constrained import constrained_beam_search
from ..decoding import Hypothesis, Seq2Seq, beam_search, greedy_search
from ..device import (
    Precision,
    cpu_has_fast_bf16,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
)
from ..models.ensemble import Ensemble
from ..models.int8 import int8_supported, quantize_int8
from ..sampling import Sampling, sample_search
from ..scoring import score_pairs
from ..streaming import StreamingSearch
from ..tokenizer import BOS_ID, EOS_ID, Tokenizer
from .attention_views import attention_views
from .common import (
    Capabilities,
    TranslationError,
    TranslationSettings,
    TranslationStream,
    Translator,
    blank_output,
    encode_sources,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchGuides:
    """What steers a search besides the decode settings, per input in input order (None: no
    such guide): ``prefixes`` (target ids each output starts with), ``constraints`` (target-id
    phrases each output must contain) and ``sampling`` (sample ``decode.n_best`` outputs
    instead of searching; the input's index plus ``first_index`` keys its random numbers)."""

    prefixes: Sequence[Sequence[int]] | None = None
    constraints: Sequence[Sequence[Sequence[int]]] | None = None
    sampling: Sampling | None = None
    first_index: int = 0  # the first input's index in the caller's whole input


def _search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    decode: DecodeConfig,
    guides: SearchGuides,
    indices: list[int],
) -> list[list[Hypothesis]]:
    """The hypotheses of each row of a ``(B, S)`` batch whose rows are the inputs ``indices``:
    constrained beam search where a row has constraints, sampling, greedy (beam size 1) or
    beam search."""
    prefixes = None if guides.prefixes is None else [guides.prefixes[i] for i in indices]
    constraints = None if guides.constraints is None else [guides.constraints[i] for i in indices]
    if constraints is not None and any(constraints):
        return constrained_beam_search(
            model, src, src_mask, BOS_ID, EOS_ID, decode, constraints, prefixes
        )
    if guides.sampling is not None:
        keys = torch.tensor(indices, device=src.device) + guides.first_index  # (B,)
        return sample_search(
            model, src, src_mask, BOS_ID, EOS_ID, decode, guides.sampling, keys, decode.n_best,
            prefixes,
        )  # fmt: skip
    if decode.beam_size == 1:
        found = greedy_search(model, src, src_mask, BOS_ID, EOS_ID, decode, prefixes=prefixes)
        return [[hypothesis] for hypothesis in found]
    return beam_search(model, src, src_mask, BOS_ID, EOS_ID, decode, prefixes=prefixes)


def translate_n_best(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    decode: DecodeConfig,
    max_tokens: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    max_sentences: int | None = None,
    guides: SearchGuides | None = None,
) -> list[list[Hypothesis]]:
    """Translate ``src_texts`` in length-sorted batches of at most ``max_tokens`` source slots
    (and at most ``max_sentences`` sentences, when given), steered by ``guides`` (prefixes,
    constraints, sampling) when given.

    Returns, per input and in input order, its ``decode.n_best`` hypotheses, best first. A
    blank input gets one empty hypothesis and never reaches the model; an input longer than
    ``model.max_positions`` is translated from its first tokens, with a warning. ``amp_dtype``
    (``torch.bfloat16``...) runs the search under autocast. The model is put in eval mode and
    restored afterwards.
    """
    device = torch.device(device)
    first_index = 0 if guides is None else guides.first_index
    src_ids = encode_sources(tokenizer, src_texts, model.max_positions, first_index)
    outputs = [blank_output() for _ in src_ids]
    nonempty = [index for index, ids in enumerate(src_ids) if ids]
    with evaluating(model, device, amp_dtype):
        lengths = [len(src_ids[i]) + 1 for i in nonempty]
        for rows in length_batches(lengths, max_tokens, max_sentences):
            indices = [nonempty[row] for row in rows]
            src, src_mask = source_batch([src_ids[i] for i in indices], device)  # (B, S)
            found = _search(model, src, src_mask, decode, guides or SearchGuides(), indices)
            for index, hypotheses in zip(indices, found, strict=True):
                outputs[index] = hypotheses
    return outputs


@contextlib.contextmanager
def evaluating(
    model: Seq2Seq, device: torch.device, amp_dtype: torch.dtype | None
) -> Iterator[None]:
    """``model`` in eval mode (restored afterwards) under autocast to ``amp_dtype`` (None:
    none), for a search. A model in eval mode already is left alone: setting the mode walks
    every submodule, a cost a running search would pay at each of its steps."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            yield
    finally:
        if was_training:
            model.train()


def source_batch(
    src_ids: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source id lists (without EOS) as a padded ``(B, S)`` batch and its mask on ``device``."""
    batch = collate(src_ids, [[] for _ in src_ids], list(range(len(src_ids))))
    return batch.src.to(device), batch.src_mask.to(device)


class TorchStream(TranslationStream):
    """:class:`~seq2seq_attn.streaming.StreamingSearch` over a translator's model: text in,
    hypotheses out, under the translator's device and precision, holding at most the
    translator's ``max_tokens`` source token slots (sentences times the longest source, EOS
    included) and ``max_sentences`` sentences, as a batch of ``attn-translate`` does."""

    def __init__(self, translator: TorchTranslator, decode: DecodeConfig) -> None:
        self.translator = translator
        self.search = StreamingSearch(translator.model, decode, BOS_ID, EOS_ID)
        self.added = 0  # the next key
        self.keys: dict[int, int] = {}  # the search's key of each live sentence -> ours
        self.lengths: dict[int, int] = {}  # the search's key -> source length with EOS
        self.blank: list[int] = []  # keys of blank lines, answered at the next step
        self.holds_cast_weights = False  # see _hold_cast_weights

    def add(self, src_texts: Sequence[str], force: bool = False) -> list[int] | None:
        """Encode ``src_texts`` and let them join at the next step: their keys, or None (and
        nothing added) where they would not fit beside the live sentences, unless ``force``."""
        translator = self.translator
        src_ids = encode_sources(translator.tokenizer, src_texts, translator.model.max_positions)
        searched = [ids for ids in src_ids if ids]
        if searched and not force and not self._fits([len(ids) + 1 for ids in searched]):
            return None
        keys = list(range(self.added, self.added + len(src_ids)))
        self._hold_cast_weights()
        if searched:  # first: when this fails, the stream is left as it was
            src, src_mask = source_batch(searched, translator.device)
            with evaluating(translator.model, translator.device, translator.precision.dtype):
                search_keys = self.search.add(src, src_mask)
            ours = [key for key, ids in zip(keys, src_ids, strict=True) if ids]
            self.keys.update(zip(search_keys, ours, strict=True))
            self.lengths.update(
                (key, len(ids) + 1) for key, ids in zip(search_keys, searched, strict=True)
            )
        self.blank += [key for key, ids in zip(keys, src_ids, strict=True) if not ids]
        self.added += len(src_ids)
        return keys

    def _hold_cast_weights(self) -> None:
        """Under autocast, keep the weights cast to the low precision from one step to the
        next (each step's autocast context would drop them on leaving, and casting every weight
        again each step made a bf16 stream slower than whole-batch searches) until
        :meth:`close`: one more level of autocast nesting, in this (the worker's) thread."""
        if self.translator.precision.dtype is not None and not self.holds_cast_weights:
            torch.autocast_increment_nesting()
            self.holds_cast_weights = True

    def close(self) -> None:
        """Let go of the cast weights (see :meth:`_hold_cast_weights`); the stream may go on
        and take them again."""
        if self.holds_cast_weights:
            self.holds_cast_weights = False
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()

    def _fits(self, lengths: list[int]) -> bool:
        """Whether sources of ``lengths`` fit beside the live ones."""
        count = len(self.lengths) + len(lengths)
        slots = count * max([*self.lengths.values(), *lengths])  # a batch padded to the longest
        limit = self.translator.max_sentences
        return slots <= self.translator.max_tokens and (limit is None or count <= limit)

    def step(self) -> list[tuple[int, list[Hypothesis]]]:
        """One search step; each sentence it finished (and every blank line waiting)."""
        done = [(key, blank_output()) for key in self.blank]
        self.blank = []
        translator = self.translator
        with evaluating(translator.model, translator.device, translator.precision.dtype):
            finished = self.search.step()
        for key, _ in finished:
            del self.lengths[key]
        return done + [(self.keys.pop(key), hypotheses) for key, hypotheses in finished]


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
    sampling: Sampling | None = None  # sample instead of searching
    capabilities: ClassVar[Capabilities] = Capabilities(attention=True, constraints=True)

    def n_best(
        self,
        src_texts: Sequence[str],
        prefixes: Sequence[str] | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        first_index: int = 0,
    ) -> list[list[Hypothesis]]:
        """The ``decode.n_best`` hypotheses of each input, best first (samples: in the order
        drawn), in input order; see :meth:`Translator.n_best`."""
        encode = self.tokenizer.encode_tgt
        guides = SearchGuides(
            prefixes=None if prefixes is None else encode(list(prefixes)),
            constraints=None if constraints is None else [
                encode(list(phrases)) if phrases else [] for phrases in constraints
            ],
            sampling=self.sampling,
            first_index=first_index,
        )  # fmt: skip
        return translate_n_best(
            self.model, self.tokenizer, src_texts, self.decode, self.max_tokens, self.device,
            self.precision.dtype, self.max_sentences, guides,
        )  # fmt: skip

    def stream(self, decode: DecodeConfig) -> TorchStream | None:
        """A :class:`TorchStream` searching with ``decode`` (no sampling: samples are drawn
        in whole batches)."""
        return None if self.sampling is not None else TorchStream(self, decode)

    def score(self, src_texts: Sequence[str], tgt_texts: Sequence[str]) -> list[list[float]]:
        """Forced decoding (:func:`~seq2seq_attn.scoring.score_pairs`): the log-probability of
        each target token and of the final EOS per pair, in input order; ``[]`` for a blank
        source."""
        return score_pairs(
            self.model, self.tokenizer, src_texts, tgt_texts, self.max_tokens, self.device,
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

    def attention_views(self, src_text: str, hypothesis: Hypothesis) -> dict:
        """:func:`~seq2seq_attn.translation.attention_views.attention_views` of one translated
        sentence: every cross- and self-attention map (an ensemble's first model's)."""
        return attention_views(self.model, self.tokenizer, src_text, hypothesis, self.device)

    def alignments(
        self, src_texts: Sequence[str], hypotheses: Sequence[Hypothesis],
        layer: int | None = None, head: int | None = None,
    ) -> list[str]:  # fmt: skip
        """One Pharaoh line per (source, hypothesis) pair: ``i-j`` links source word ``i`` to
        target word ``j`` (0-based over the whitespace words of the source line and of the
        detokenized hypothesis), each target word to the source word it attended to most
        (:func:`~seq2seq_attn.alignment.align`), teacher-forced in batches of ``max_tokens``
        source slots. ``layer`` and ``head`` pick a decoder layer and head (negative counts from
        the last; None: the average, the rule chosen on the toy dev set, docs/alignments.md); one
        out of range raises ``ValueError``. An ensemble aligns with its first model."""
        if len(src_texts) != len(hypotheses):
            raise ValueError(f"{len(src_texts)} sources but {len(hypotheses)} hypotheses")
        links = align(
            self.model, self.tokenizer, self.tokenizer.encode_src(list(src_texts)),
            [hypothesis.tokens for hypothesis in hypotheses], layer, head, self.max_tokens,
            self.device, output_words=True,
        )  # fmt: skip
        return [format_pharaoh(line) for line in links]


def open_checkpoints(paths: Sequence[Path], settings: TranslationSettings) -> TorchTranslator:
    """The checkpoint files ``paths`` loaded for translation: one model, or an
    :class:`~seq2seq_attn.models.ensemble.Ensemble` of all of them (averaged log-probabilities)
    with the first one's decode settings and attention, on one device and precision. On the
    CPU the process's allocator then keeps the memory it frees, for good and for the whole
    process (:func:`~seq2seq_attn.device.keep_freed_memory`: freed memory is reused, not given
    back to the system): a search allocates logits as large as the last step's at every step,
    and fresh pages for them each time made an fp32 search 0.9x as fast here.

    Raises ``CheckpointError`` for a damaged checkpoint, ``ConfigError`` (a ``ValueError``)
    for an impossible setting and ``ValueError`` naming both checkpoints for an ensemble member
    whose tokenizer differs from the first model's.
    """
    model, tokenizer, config = model_from_checkpoint(load_checkpoint(paths[0], mmap=True), paths[0])
    if len(paths) > 1:
        model = _ensemble(paths, model, tokenizer)
    decode = settings.decode_settings(config.decode)
    device = resolve_device(settings.device, "--device")
    if device.type == "cpu":
        keep_freed_memory()  # every search step allocates logits as large as the last ones
    if settings.precision == "int8":
        precision = _quantized(model, device)
    else:
        precision = resolve_precision(settings.precision or "fp32", device, "--precision")
    return TorchTranslator(
        model.to(device), tokenizer, config, decode, device, precision, settings.max_tokens,
        settings.max_sentences, settings.sampling,
    )  # fmt: skip


def _quantized(model: Seq2Seq, device: torch.device) -> Precision:
    """Quantize ``model``'s linear layers to int8 in place (:func:`quantize_int8`; decoding
    caches and attention in bf16 where the CPU computes it natively); the precision to report.
    Int8 runs on the CPU only: another device is refused."""
    if device.type != "cpu":
        raise TranslationError(
            f"--precision int8: int8 search runs on the CPU, not {device}; add --device cpu, "
            "or use bf16 or fp16 on CUDA"
        )
    if not int8_supported():
        raise TranslationError(
            "--precision int8: this torch build has no quantized CPU engine; use fp32 or bf16"
        )
    model.eval()
    attention_dtype = torch.bfloat16 if cpu_has_fast_bf16() else None
    layers = quantize_int8(model, attention_dtype)
    logger.info(
        "int8: %d linear layers quantized (weights per output row, dynamic inputs); decoding "
        "caches and attention in %s",
        layers,
        "bf16 (native on this CPU)" if attention_dtype else "fp32",
    )
    return Precision("int8", device.type)


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
