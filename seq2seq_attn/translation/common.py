"""What every translation backend shares: the :class:`Translator` protocol, the one
:class:`TranslationSettings` dataclass a caller fills in, the one error type, and how source
lines become model input (:func:`encode_sources`).

A backend implements :meth:`Translator.n_best` (with target prefixes, and with lexical
constraints when its :class:`Capabilities` say so), :meth:`Translator.score` (forced decoding),
:meth:`Translator.attention` and :meth:`Translator.attention_views` (when its capabilities say
so); ``translate`` and ``detokenize`` come from the protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..config import DecodeConfig
from ..decoding import Hypothesis
from ..tokenizer import Tokenizer

if TYPE_CHECKING:
    from ..sampling import Sampling

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # what --precision takes (checkpoints)


class TranslationError(ValueError):
    """A model that cannot be opened for translation, or settings it cannot honour; the
    message names the path or option and says how to fix it.

    ``unreadable`` tells a model file that is missing or cannot be read (a truncated
    checkpoint, an export missing its tokenizer) from a request that is wrong (no checkpoint in
    a folder, an option the backend does not take).
    """

    def __init__(self, message: str, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond n-best search, prefixes, sampling and scoring:
    ``attention`` (cross-attention records and word alignments) and ``constraints`` (lexically
    constrained search)."""

    attention: bool
    constraints: bool


@dataclass(frozen=True)
class TranslationSettings:
    """How to open and run a translator, for every backend.

    The decode fields (``beam_size`` ... ``n_best``) that are None keep the model's own
    ``decode`` section (``beam_size=1``: greedy). ``precision`` (fp32, bf16, fp16, auto;
    None: fp32) is for checkpoints; ``compute_type`` (CTranslate2's: float32, int8...; None:
    the exported one) and ``threads`` (None: torch's thread count) for exported folders;
    :func:`~seq2seq_attn.translation.open_translator` refuses the other kind's arithmetic.
    ``attention``: the caller will ask for attention records, which a backend without them
    (``capabilities.attention`` False) refuses before it loads anything. ``sampling`` (None:
    search) samples ``n_best`` outputs per input instead of searching; the beam size is then
    not used. An impossible value raises :class:`TranslationError` naming the command-line
    option, the value and the fix.
    """

    device: str = "auto"
    precision: str | None = None
    compute_type: str | None = None
    beam_size: int | None = None
    length_penalty: float | None = None
    max_length_ratio: float | None = None
    n_best: int | None = None
    max_tokens: int = 4096  # source token slots per batch
    max_sentences: int | None = None  # sentences per batch (None: as many as fit)
    threads: int | None = None
    attention: bool = False  # attention records will be asked for
    sampling: Sampling | None = None  # sample instead of searching

    def __post_init__(self) -> None:
        """Refuse values no backend can honour (a typo, inf, nan), naming the option."""
        _require(
            self.precision is None or self.precision in PRECISIONS, "--precision",
            self.precision, "use auto, fp32, bf16, fp16 or int8",
        )  # fmt: skip
        _require(
            self.length_penalty is None or 0 <= self.length_penalty < math.inf,
            "--length-penalty", self.length_penalty,
            "use 0 (none) or a positive GNMT alpha such as 0.6",
        )  # fmt: skip
        _require(
            self.max_length_ratio is None or 0 < self.max_length_ratio < math.inf,
            "--max-length-ratio", self.max_length_ratio,
            "use a finite number > 0 (output length limit = ratio * source length + offset)",
        )  # fmt: skip
        _require(
            self.max_tokens >= 1, "--batch-tokens", self.max_tokens,
            "use 1 or more source token slots per batch",
        )  # fmt: skip

    def decode_settings(self, model_decode: DecodeConfig) -> DecodeConfig:
        """``model_decode`` with this object's decode fields that are not None in its place;
        a ``ConfigError`` (a ``ValueError``) names an impossible value's key."""
        overrides = {"beam_size": self.beam_size, "length_penalty": self.length_penalty,
                     "max_length_ratio": self.max_length_ratio}  # fmt: skip
        changes = {key: value for key, value in overrides.items() if value is not None}
        decode = dataclasses.replace(model_decode, **changes, n_best=1)
        if self.n_best is None:  # the model's own, as many as the beam keeps
            return dataclasses.replace(decode, n_best=min(model_decode.n_best, decode.beam_size))
        n_best = self.n_best
        if self.sampling is not None:  # n_best samples; no beam to fit them in
            if n_best < 1:
                raise TranslationError(f"--n-best {n_best}: ask for 1 or more samples")
            return dataclasses.replace(
                decode, beam_size=max(decode.beam_size, n_best), n_best=n_best
            )
        if not 1 <= n_best <= decode.beam_size:
            raise TranslationError(
                f"--n-best {n_best}: need 1 <= n_best <= beam_size, got beam_size="
                f"{decode.beam_size}; raise --beam or lower --n-best"
            )
        return dataclasses.replace(decode, n_best=n_best)


def _require(condition: bool, option: str, value: object, fix: str) -> None:
    """Raise :class:`TranslationError` for ``option value`` unless ``condition``."""
    if not condition:
        raise TranslationError(f"{option}: invalid value {value!r}; {fix}")


@runtime_checkable
class Translator(Protocol):
    """A model ready to translate: its tokenizer, the decode settings it searches with, what
    it can do, and n-best search over lists of source lines."""

    tokenizer: Tokenizer
    decode: DecodeConfig
    capabilities: Capabilities

    def n_best(
        self,
        src_texts: Sequence[str],
        prefixes: Sequence[str] | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        first_index: int = 0,
    ) -> list[list[Hypothesis]]:
        """The ``decode.n_best`` hypotheses of each input, best first (samples: in the order
        drawn), in input order; a blank line gets one empty hypothesis and never reaches the
        model. ``first_index``: the index of ``src_texts[0]`` in the caller's whole input when
        it translates that in parts; sampling keys its random numbers by the whole input's
        indices (each part gets the samples the whole would), and warnings name its lines.

        ``prefixes`` (one text per input, may be empty): each output starts with it, and its
        tokens count in the log-probability. ``constraints`` (per input, target phrases): each
        must appear in the output (only where ``capabilities.constraints``); a phrase that did
        not fit in the length limit leaves ``unmet_constraints`` above 0.
        """
        ...

    def score(self, src_texts: Sequence[str], tgt_texts: Sequence[str]) -> list[list[float]]:
        """Forced decoding: the log-probability of each target token and of the final EOS,
        per (source, target) pair, in input order."""
        ...

    def attention(
        self, index: int, src_text: str, hypothesis: Hypothesis, layer: int = -1,
        head: int | None = None,
    ) -> dict:  # fmt: skip
        """One translated sentence's subword tokens and cross-attention weights as plain JSON
        data (``index`` numbers the sentence); only where ``capabilities.attention``."""
        ...

    def attention_views(self, src_text: str, hypothesis: Hypothesis) -> dict:
        """Every attention map of one translated sentence as plain JSON data (the serve API's
        ``"attention"`` object): ``src_tokens``, ``tgt_tokens``, ``cross``
        ``[layer][head][T + 1][S + 1]``, ``encoder`` ``[layer][head][S + 1][S + 1]`` and
        ``decoder`` ``[layer][head][T + 1][T + 1]`` (``None`` both for a model without
        self-attention); only where ``capabilities.attention``."""
        ...

    def stream(self, decode: DecodeConfig) -> TranslationStream | None:
        """A running search with ``decode`` settings that sentences join between its steps
        (what a server keeps busy), or None where the backend searches whole batches only."""
        return None

    def translate(self, src_texts: Sequence[str]) -> list[Hypothesis]:
        """The best hypothesis of each input, in input order."""
        return [hypotheses[0] for hypotheses in self.n_best(src_texts)]

    def detokenize(self, hypotheses: Sequence[Hypothesis]) -> list[str]:
        """The target text of each hypothesis."""
        return self.tokenizer.decode_tgt([hypothesis.tokens for hypothesis in hypotheses])


class TranslationStream(Protocol):
    """Sentences translated by one running search (:meth:`Translator.stream`): they join it
    with :meth:`add` and come out of :meth:`step` when finished, each with its ``decode.n_best``
    hypotheses, best first (what :meth:`Translator.n_best` gives it)."""

    def add(self, src_texts: Sequence[str], force: bool = False) -> list[int] | None:
        """Let ``src_texts`` join the search at its next step: their keys, in input order, or
        None (nothing added) where the search has no room for them beside its live sentences
        (its batch bound), unless ``force`` (for what must run even alone over the bound)."""
        ...

    def step(self) -> list[tuple[int, list[Hypothesis]]]:
        """One search step; ``(key, hypotheses)`` of each sentence it finished (a blank line:
        at the first step after it was added, one empty hypothesis)."""
        ...

    def close(self) -> None:
        """Free what the search keeps between steps beyond its sentences (called in the
        thread that stepped it, when it has none left or is given up)."""
        ...


def blank_output() -> list[Hypothesis]:
    """What a blank input line gets, without reaching the model: one empty hypothesis."""
    return [Hypothesis(tokens=[], log_prob=0.0, score=0.0)]


def encode_sources(
    tokenizer: Tokenizer, src_texts: Sequence[str], max_positions: int | None,
    first_index: int = 0,
) -> list[list[int]]:  # fmt: skip
    """Source ids per line (``[]`` for a blank line), cut to ``max_positions`` tokens (EOS
    included; None: no limit) with one warning naming the lines (numbered from 1 in the
    caller's whole input, where ``src_texts[0]`` has the index ``first_index``)."""
    src_ids = [
        ids if text.strip() else []
        for text, ids in zip(src_texts, tokenizer.encode_src(src_texts), strict=True)
    ]
    if max_positions is None:
        return src_ids
    limit = max_positions - 1  # room for EOS
    long_lines = [
        number for number, ids in enumerate(src_ids, start=first_index + 1) if len(ids) > limit
    ]
    if long_lines:
        shown = ", ".join(map(str, long_lines[:10])) + (" ..." if len(long_lines) > 10 else "")
        logger.warning(
            "%d input line(s) exceed the model's limit of %d source tokens and were translated "
            "from their first %d tokens only (lines %s)",
            len(long_lines), limit, limit, shown,
        )  # fmt: skip
    return [ids[:limit] for ids in src_ids]
