"""The CTranslate2 backend: translate with a folder written by ``attn-export``.

:class:`CT2Translator` keeps the project's search rules around CTranslate2's: GNMT's length
penalty (CTranslate2's is ``length ** alpha``) by rescoring the ``beam`` finished hypotheses it
returns unpenalised, one output limit per sentence (CTranslate2 takes one per batch) by batching
sentences of equal limit together, the forced EOS's log-probability at the length limit, and a
target prefix's log-probability (CTranslate2's scores leave it out). Samples are CTranslate2's
own draws, scored again as ours (see :meth:`CT2Translator._sample` for what differs).

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
from ..decoding import Hypothesis, length_penalty, output_limits, prefix_table
from ..device import resolve_device
from ..export import ExportError, import_ctranslate2, read_info
from ..sampling import Sampling
from ..scoring import encode_pairs, scoring_batches
from ..tokenizer import EOS_ID, Tokenizer
from .common import (
    Capabilities,
    TranslationError,
    TranslationSettings,
    Translator,
    blank_output,
    encode_sources,
)

if TYPE_CHECKING:
    import ctranslate2

GIVEN_UP_SCORE = -1e9  # CTranslate2 scores beams it has given up (inside a prefix) at -1e10
NO_ATTENTION = (
    "a CTranslate2 folder keeps no attention weights; use the .pt checkpoint it was exported from"
)


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
    sampling: Sampling | None = None  # sample instead of searching (see _sample)
    capabilities: ClassVar[Capabilities] = Capabilities(attention=False, constraints=False)

    def n_best(
        self,
        src_texts: Sequence[str],
        prefixes: Sequence[str] | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        first_index: int = 0,
    ) -> list[list[Hypothesis]]:
        """The ``decode.n_best`` hypotheses of each input, best first (samples: see
        :meth:`_sample`), in input order; a blank line gets one empty hypothesis.
        ``first_index`` numbers the lines in warnings only (CTranslate2's samples depend on
        the batching anyway).

        ``prefixes`` (one text per input; empty: none) become CTranslate2's ``target_prefix``:
        each output starts with its prefix, which counts in the log-probability as in the
        checkpoint's search (CTranslate2 leaves it out: it is added back). ``constraints``: a
        CTranslate2 folder has no constrained search, and any phrase is refused.
        """
        if constraints is not None and any(constraints):
            raise TranslationError(
                "a CTranslate2 folder cannot search with lexical constraints (--constraints, "
                "--glossary): translate with the .pt checkpoint it was exported from"
            )
        src_ids = encode_sources(self.tokenizer, src_texts, self.max_positions, first_index)
        prefix_ids = self._prefix_ids(src_texts, prefixes)
        outputs = [blank_output() for _ in src_ids]
        nonempty = [index for index, ids in enumerate(src_ids) if ids]
        lengths = [len(src_ids[i]) + 1 for i in nonempty]  # EOS included, as the model sees
        limits = output_limits(
            torch.tensor(lengths).unsqueeze(1) > torch.arange(max(lengths, default=1)),
            self.decode, self.max_positions,
        )  # fmt: skip
        _, limits = prefix_table(  # raised to fit the prefixes, as the checkpoint's search does
            [prefix_ids[i] for i in nonempty], limits, self.max_positions, EOS_ID
        )
        if self.sampling is not None:  # CTranslate2's seed takes 32 bits
            import_ctranslate2().set_random_seed(self.sampling.seed % 2**32)
        by_limit: dict[int, list[int]] = {}  # CTranslate2 takes one length limit per call
        for row, limit in enumerate(limits.tolist()):
            by_limit.setdefault(limit, []).append(row)
        for limit, rows in by_limit.items():
            group_lengths = [lengths[row] for row in rows]
            for batch in length_batches(group_lengths, self.max_tokens, self.max_sentences):
                indices = [nonempty[rows[position]] for position in batch]
                sources = [self.tokenizer.src_pieces(src_ids[i]) for i in indices]
                targets = [self.tokenizer.tgt_pieces(prefix_ids[i][: limit - 1]) for i in indices]
                search = self._search if self.sampling is None else self._sample
                for index, hypotheses in zip(indices, search(sources, targets, limit), strict=True):
                    outputs[index] = hypotheses
        return outputs

    def _prefix_ids(
        self, src_texts: Sequence[str], prefixes: Sequence[str] | None
    ) -> list[list[int]]:
        """Target ids of each input's prefix (``[]``: none)."""
        if prefixes is None:
            return [[] for _ in src_texts]
        if len(prefixes) != len(src_texts):
            raise TranslationError(
                f"{len(prefixes)} target prefixes for {len(src_texts)} input lines: give one "
                "per input line (an empty one for no prefix)"
            )
        return self.tokenizer.encode_tgt(list(prefixes))

    def _search(
        self, sources: list[list[str]], prefixes: list[list[str]], limit: int
    ) -> list[list[Hypothesis]]:
        """One CTranslate2 beam search for sentences (source pieces) that share the output
        ``limit`` (EOS included), each output starting with its ``prefixes`` pieces.

        CTranslate2 stops a hypothesis at its length limit without an EOS, where ours forces
        the EOS and counts its log-probability: such hypotheses are scored again with it. Its
        scores leave the prefix out: the prefix's log-probability is added to the others. Inside
        a prefix it keeps a sentence's other beams at -1e10 (ours: -inf) and returns them when
        the prefix fills the limit: they are dropped.

        One difference remains: at the first step after a prefix, CTranslate2 lets only the
        best continuation be EOS, where ours finishes an EOS ranked in the top ``beam`` as at
        any step; where an output that is just the prefix ranks there, the two searches
        differ from that step on."""
        decode = self.decode
        results = self.engine.translate_batch(
            sources,
            prefixes if any(prefixes) else None,
            beam_size=decode.beam_size,
            num_hypotheses=decode.beam_size,
            length_penalty=0.0,  # raw log-probabilities; GNMT's penalty is applied below
            patience=1.0,  # like ours: a sentence is done with `beam` finished hypotheses
            max_input_length=0,  # sources are already cut to max_positions
            max_decoding_length=limit - 1,  # tokens before the EOS, the prefix included
            min_decoding_length=decode.min_length,
            return_scores=True,
            return_end_token=True,
        )
        found = [  # per sentence: [pieces, log-probability] of each finished hypothesis
            [
                [pieces, float(score)]
                for pieces, score in zip(r.hypotheses, r.scores, strict=True)
                if score > GIVEN_UP_SCORE
            ]
            for r in results
        ]
        prefix_log_probs = self._prefix_log_probs(sources, prefixes)
        for row, hypotheses in enumerate(found):
            for hypothesis in hypotheses:
                hypothesis[1] += prefix_log_probs[row]
        cut = [  # (sentence, hypothesis) pairs that reached the limit: no EOS at their end
            (row, rank)
            for row, hypotheses in enumerate(found)
            for rank, (pieces, _) in enumerate(hypotheses)
            if pieces[-1:] != [self._eos]
        ]
        if cut:  # the whole output again, with the forced EOS's log-probability, as ours
            rescored = self._log_probs([sources[row] for row, _ in cut],
                                       [found[row][rank][0] for row, rank in cut])  # fmt: skip
            for (row, rank), log_prob in zip(cut, rescored, strict=True):
                found[row][rank][1] = log_prob
        outputs = []
        for hypotheses in found:
            ranked = [self._hypothesis(pieces, log_prob) for pieces, log_prob in hypotheses]
            ranked.sort(key=lambda hypothesis: -hypothesis.score)
            outputs.append(ranked[: decode.n_best])
        return outputs

    def _sample(
        self, sources: list[list[str]], prefixes: list[list[str]], limit: int
    ) -> list[list[Hypothesis]]:
        """``decode.n_best`` samples per sentence drawn by CTranslate2 (``sampling_topk``,
        ``sampling_topp``, ``sampling_temperature``; one call for sentences of the same output
        ``limit``), each scored again with ``score_batch`` so that ``log_prob`` is the model's
        log-probability of the whole output, prefix and EOS included (as ours).

        Where CTranslate2 differs from :func:`~seq2seq_attn.sampling.sample_search`: the
        filters agree (its top-k comes before the temperature, which keeps the same tokens;
        its nucleus keeps tokens while the mass before them is below ``top_p``, as ours), the
        random numbers do not. CTranslate2 draws from one generator per worker thread, seeded
        (``ctranslate2.set_random_seed``) only before that thread's first draw: the first
        ``n_best`` of a freshly opened folder is reproducible for a seed with the same inputs
        and batch settings (``max_tokens``, ``max_sentences``), a later call continues the
        stream, and a sentence's samples depend on its batch. Samples come back ordered by
        CTranslate2's own score, not as drawn. ``top_k`` 1 is greedy search there (which
        returns one hypothesis): it is repeated ``n_best`` times, as ours would sample it.
        """
        sampling, decode = self.sampling, self.decode
        vocab_size = self.tokenizer.tgt_vocab_size  # CTranslate2 refuses a top-k beyond it
        greedy = sampling.top_k == 1
        results = self.engine.translate_batch(
            sources,
            prefixes if any(prefixes) else None,
            beam_size=1,
            num_hypotheses=1 if greedy else decode.n_best,
            sampling_topk=sampling.top_k if sampling.top_k < vocab_size else 0,  # 0: all
            sampling_topp=sampling.top_p,
            sampling_temperature=sampling.temperature,
            max_input_length=0,  # sources are already cut to max_positions
            max_decoding_length=limit - 1,  # tokens before the EOS, the prefix included
            min_decoding_length=decode.min_length,
            return_end_token=True,
        )
        drawn = [r.hypotheses * (decode.n_best if greedy else 1) for r in results]
        rows = [row for row, samples in enumerate(drawn) for _ in samples]
        pieces = [p[:-1] if p[-1:] == [self._eos] else p for samples in drawn for p in samples]
        log_probs = iter(self._log_probs([sources[row] for row in rows], pieces))
        return [[self._hypothesis(p, next(log_probs)) for p in samples] for samples in drawn]

    @property
    def _eos(self) -> str:
        """The EOS piece, as CTranslate2 writes it."""
        return self.tokenizer.tgt_pieces([EOS_ID])[0]

    def _log_probs(self, sources: list[list[str]], targets: list[list[str]]) -> list[float]:
        """The model's log-probability of each target (pieces without EOS) and its EOS."""
        results = self.engine.score_batch(sources, targets, max_input_length=0)
        return [float(sum(result.log_probs)) for result in results]

    def _prefix_log_probs(self, sources: list[list[str]], prefixes: list[list[str]]) -> list[float]:
        """The log-probability of each sentence's prefix tokens (0 without a prefix)."""
        with_prefix = [row for row, prefix in enumerate(prefixes) if prefix]
        totals = [0.0] * len(sources)
        if with_prefix:
            results = self.engine.score_batch(
                [sources[row] for row in with_prefix], [prefixes[row] for row in with_prefix],
                max_input_length=0,
            )  # fmt: skip
            for row, result in zip(with_prefix, results, strict=True):
                totals[row] = float(sum(result.log_probs[:-1]))  # the EOS after it left out
        return totals

    def _hypothesis(self, pieces: list[str], log_prob: float) -> Hypothesis:
        """A hypothesis of CTranslate2's output ``pieces`` (EOS at the end or not) and its
        ``log_prob``, scored with GNMT's length penalty."""
        tokens = self.tokenizer.tgt_ids(pieces[:-1] if pieces[-1:] == [self._eos] else pieces)
        penalty = length_penalty(len(tokens) + 1, self.decode.length_penalty)
        return Hypothesis(tokens, log_prob, log_prob / penalty)

    def attention(
        self, index: int, src_text: str, hypothesis: Hypothesis, layer: int = -1,
        head: int | None = None,
    ) -> dict:  # fmt: skip
        """Not available: a CTranslate2 folder keeps no attention weights."""
        raise TranslationError(NO_ATTENTION)

    def attention_views(self, src_text: str, hypothesis: Hypothesis) -> dict:
        """Not available: a CTranslate2 folder keeps no attention weights."""
        raise TranslationError(NO_ATTENTION)

    def score(self, src_texts: Sequence[str], tgt_texts: Sequence[str]) -> list[list[float]]:
        """Forced decoding with CTranslate2's ``score_batch``: the log-probability of each
        target token and of the final EOS per pair (BOS is given, not scored: as the
        checkpoint's), in input order; ``[]`` for a blank source. Pairs are encoded, cut and
        batched as the checkpoint's are (:mod:`~seq2seq_attn.scoring`)."""
        src_ids, tgt_ids = encode_pairs(self.tokenizer, src_texts, tgt_texts, self.max_positions)
        scores: list[list[float]] = [[] for _ in src_ids]
        for indices in scoring_batches(src_ids, tgt_ids, self.max_tokens, self.max_sentences):
            results = self.engine.score_batch(
                [self.tokenizer.src_pieces(src_ids[i]) for i in indices],
                [self.tokenizer.tgt_pieces(tgt_ids[i]) for i in indices],
                max_input_length=0,  # both sides are already cut to max_positions
            )
            for index, result in zip(indices, results, strict=True):
                scores[index] = list(result.log_probs)
        return scores


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
            "--attention, --show-attention, --plot-attention and --alignments need the .pt "
            "checkpoint it was exported from"
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
        settings.max_tokens, settings.max_sentences, settings.sampling,
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
