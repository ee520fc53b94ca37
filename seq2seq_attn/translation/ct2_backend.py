"""The CTranslate2 backend: translate with a folder written by ``attn-export``.

:class:`CT2Translator` keeps the project's search rules around CTranslate2's: GNMT's length
penalty (CTranslate2's is ``length ** alpha``) by rescoring the ``beam`` finished hypotheses it
returns unpenalised, one output limit per sentence (CTranslate2 takes one per batch) by batching
sentences of equal limit together, and the forced EOS's log-probability at the length limit.

``ctranslate2`` is an optional dependency, imported when a folder is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ..batching import length_batches
from ..config import DecodeConfig
from ..decoding import Hypothesis, length_penalty, output_limits
from ..device import resolve_device
from ..export import ExportError, import_ctranslate2, read_info
from ..tokenizer import EOS_ID, Tokenizer
from .common import Capabilities, TranslationError, TranslationSettings, Translator, encode_sources

if TYPE_CHECKING:
    import ctranslate2


@dataclass
class CT2Translator(Translator):
    """An exported folder ready to translate with CTranslate2, with the project's search rules
    (see the module docstring). It keeps no attention weights."""

    engine: ctranslate2.Translator
    tokenizer: Tokenizer
    decode: DecodeConfig
    max_positions: int | None
    compute_type: str
    max_tokens: int = 4096  # source token slots per batch
    max_sentences: int | None = None  # sentences per batch (None: as many as fit)
    capabilities: ClassVar[Capabilities] = Capabilities(attention=False)

    def n_best(self, src_texts: Sequence[str]) -> list[list[Hypothesis]]:
        """The ``decode.n_best`` hypotheses of each input, best first, in input order; a blank
        line gets one empty hypothesis."""
        src_ids = encode_sources(self.tokenizer, src_texts, self.max_positions)
        outputs = [[Hypothesis(tokens=[], log_prob=0.0, score=0.0)] for _ in src_ids]
        nonempty = [index for index, ids in enumerate(src_ids) if ids]
        lengths = [len(src_ids[i]) + 1 for i in nonempty]  # EOS included, as the model sees
        limits = output_limits(
            torch.tensor(lengths).unsqueeze(1) > torch.arange(max(lengths, default=1)),
            self.decode, self.max_positions,
        ).tolist()  # fmt: skip
        by_limit: dict[int, list[int]] = {}  # CTranslate2 takes one length limit per call
        for row, limit in enumerate(limits):
            by_limit.setdefault(limit, []).append(row)
        for limit, rows in by_limit.items():
            group_lengths = [lengths[row] for row in rows]
            for batch in length_batches(group_lengths, self.max_tokens, self.max_sentences):
                indices = [nonempty[rows[position]] for position in batch]
                found = self._search([src_ids[i] for i in indices], limit)
                for index, hypotheses in zip(indices, found, strict=True):
                    outputs[index] = hypotheses
        return outputs

    def _search(self, sources: list[list[int]], limit: int) -> list[list[Hypothesis]]:
        """One CTranslate2 call for sentences that share the output ``limit`` (EOS included).

        CTranslate2 stops a hypothesis at its length limit without an EOS, where ours forces
        the EOS and counts its log-probability: such hypotheses are scored again with it."""
        decode, tokenizer = self.decode, self.tokenizer
        beam, eos = decode.beam_size, tokenizer.tgt_pieces([EOS_ID])[0]
        source_pieces = [tokenizer.src_pieces(ids) for ids in sources]
        results = self.engine.translate_batch(
            source_pieces,
            beam_size=beam,
            num_hypotheses=beam,
            length_penalty=0.0,  # raw log-probabilities; GNMT's penalty is applied below
            patience=1.0,  # like ours: a sentence is done with `beam` finished hypotheses
            max_input_length=0,  # sources are already cut to max_positions
            max_decoding_length=limit - 1,  # tokens before the EOS
            min_decoding_length=decode.min_length,
            return_scores=True,
            return_end_token=True,
        )
        found = [  # per sentence: [pieces, log-probability] of each finished hypothesis
            [[pieces, float(score)] for pieces, score in zip(r.hypotheses, r.scores, strict=True)]
            for r in results
        ]
        cut = [  # (sentence, hypothesis) pairs that reached the limit: no EOS at their end
            (row, rank)
            for row, hypotheses in enumerate(found)
            for rank, (pieces, _) in enumerate(hypotheses)
            if pieces[-1:] != [eos]
        ]
        if cut:  # add the forced EOS's log-probability, as our search does
            rescored = self.engine.score_batch(
                [source_pieces[row] for row, _ in cut], [found[row][rank][0] for row, rank in cut]
            )
            for (row, rank), result in zip(cut, rescored, strict=True):
                found[row][rank][1] = float(sum(result.log_probs))
        outputs = []
        for hypotheses in found:
            ranked = []
            for pieces, log_prob in hypotheses:
                tokens = tokenizer.tgt_ids(pieces[:-1] if pieces[-1:] == [eos] else pieces)
                penalty = length_penalty(len(tokens) + 1, decode.length_penalty)
                ranked.append(Hypothesis(tokens, log_prob, log_prob / penalty))
            ranked.sort(key=lambda hypothesis: -hypothesis.score)
            outputs.append(ranked[: decode.n_best])
        return outputs

    def attention(
        self, index: int, src_text: str, hypothesis: Hypothesis, layer: int = -1,
        head: int | None = None,
    ) -> dict:  # fmt: skip
        """Not available: a CTranslate2 folder keeps no attention weights."""
        raise TranslationError(
            "a CTranslate2 folder keeps no attention weights; use the .pt checkpoint it was "
            "exported from"
        )

    def score(
        self, src_texts: Sequence[str], tgt_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Teacher-forced log-probabilities of each target token and the final EOS."""
        src_ids = encode_sources(self.tokenizer, src_texts, self.max_positions)
        results = self.engine.score_batch(
            [self.tokenizer.src_pieces(ids) for ids in src_ids],
            [self.tokenizer.tgt_pieces(ids) for ids in tgt_ids],
        )
        return [list(result.log_probs) for result in results]


def open_exported(directory: Path, settings: TranslationSettings) -> CT2Translator:
    """An exported folder loaded for translation with its decode settings (``settings``'
    decode fields that are not None override them); ``settings.compute_type`` None keeps the
    exported type, ``settings.threads`` None uses torch's thread count (``OMP_NUM_THREADS``).

    Raises :class:`TranslationError`: ``unreadable`` for a folder that cannot be loaded, else for
    an impossible setting (attention, precision, device, compute type) naming its option.
    """
    if settings.attention:
        raise TranslationError(
            f"{directory} is a CTranslate2 folder, which keeps no attention weights: "
            "--attention, --show-attention and --plot-attention need the .pt checkpoint it was "
            "exported from"
        )
    if settings.precision is not None:
        raise TranslationError(
            f"{directory} is a CTranslate2 folder: choose its arithmetic with --compute-type "
            "(float32, int8, ...), not --precision"
        )
    try:
        ctranslate2 = import_ctranslate2()
        info = read_info(directory)
    except ExportError as error:
        raise TranslationError(str(error), unreadable=True) from None
    decode = settings.decode_settings(DecodeConfig(**info["decode"]))
    device = resolve_device(settings.device, "--device", ctranslate2.get_cuda_device_count())
    engine = _engine(ctranslate2, directory, device, settings)
    try:
        tokenizer = Tokenizer.load(directory)
    except (OSError, ValueError, RuntimeError) as error:
        raise TranslationError(
            f"{directory}: its SentencePiece model(s) cannot be read ({error}); export the "
            "model again with attn-export",
            unreadable=True,
        ) from None
    return CT2Translator(
        engine, tokenizer, decode, info.get("max_positions"), engine.compute_type,
        settings.max_tokens, settings.max_sentences,
    )  # fmt: skip


def _engine(
    ctranslate2, directory: Path, device: torch.device, settings: TranslationSettings
) -> ctranslate2.Translator:
    """CTranslate2's translator for ``directory`` on ``device``, in the asked compute type."""
    supported = sorted(ctranslate2.get_supported_compute_types(device.type))
    if settings.compute_type not in (None, "default", "auto", *supported):
        raise TranslationError(
            f"--compute-type {settings.compute_type!r} is not available on {device.type} here; "
            f"choose one of {', '.join(supported)} (or leave it out to keep the exported type)"
        )
    try:
        return ctranslate2.Translator(
            str(directory),
            device=device.type,
            device_index=device.index or 0,
            compute_type=settings.compute_type or "default",
            intra_threads=settings.threads or torch.get_num_threads(),
        )
    except (RuntimeError, ValueError) as error:
        raise TranslationError(
            f"{directory}: CTranslate2 cannot load it: {error}", unreadable=True
        ) from None
