"""What ``attn-serve`` accepts and answers: the request body of ``POST /v1/translate`` as a
pydantic model (types and ranges checked field by field, unknown fields refused), the server's
limits, and :func:`request_options`, which turns a checked request into the decode settings,
sampling and guides one translation job runs with, or a :class:`RequestError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ..config import DecodeConfig
from ..constrained_phrases import MAX_PHRASES
from ..sampling import Sampling
from ..translation import Capabilities, TranslationSettings

MAX_BEAM = 64  # the widest beam (and longest n-best list) one request may ask for
MAX_ATTENTION_SENTENCES = 8  # every map of every layer and head is large: a few sentences a request


class RequestError(ValueError):
    """A request the server refuses: ``field`` names the offending JSON field (``text[3]``,
    ``n_best``; None: the request as a whole) and ``status`` the HTTP status (a 4xx)."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold: ``max_sentences`` sentences of at most ``max_chars``
    characters each, in a body of at most ``max_body_bytes`` bytes."""

    max_sentences: int = 64
    max_chars: int = 1000
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_sentences", "max_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} {getattr(self, name)}: use 1 or more")


class TranslateRequest(BaseModel):
    """The body of ``POST /v1/translate``: the sentences and the options of
    ``attn-translate`` (None: the server's defaults, themselves the model's decode section
    unless ``attn-serve`` was given others)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    text: list[str] = Field(description="Source sentences, one per item (no line breaks).")
    beam: int | None = Field(None, ge=1, le=MAX_BEAM, description="Beam size; 1 = greedy.")
    n_best: int | None = Field(
        None, ge=1, le=MAX_BEAM, description="Hypotheses per sentence (<= beam; samples)."
    )
    length_penalty: float | None = Field(None, ge=0, le=100, description="GNMT alpha.")
    max_length_ratio: float | None = Field(
        None, gt=0, le=100, description="Output length limit = ratio * source length + offset."
    )
    prefix: list[str] | None = Field(
        None, description="One target prefix per sentence (may be empty): outputs start with it."
    )
    constraints: list[list[str]] | None = Field(
        None, description="Per sentence, target phrases its translation must contain."
    )
    sample: bool = Field(False, description="Sample n_best translations instead of searching.")
    temperature: float = Field(1.0, ge=0.01, le=1000, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Sample among the k most probable tokens (0: all).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Sampling seed (any integer, as attn-translate --seed).")
    attention: bool = Field(False, description="Return every attention map of the best output.")
    alignments: bool = Field(False, description="Return Pharaoh word alignments.")


@dataclass(frozen=True)
class JobOptions:
    """How the sentences of one request are translated: ``decode`` settings, ``sampling``
    (None: search), per-sentence ``prefixes`` and ``constraints`` (None: not asked for), and
    whether attention maps and word alignments are wanted."""

    decode: DecodeConfig
    sampling: Sampling | None
    prefixes: list[str] | None
    constraints: list[list[str]] | None
    attention: bool
    alignments: bool

    def streamable(self) -> bool:
        """Whether the job's sentences may join a running search: a plain search (no
        prefixes, constraints or sampling, which take whole batches)."""
        return self.sampling is None and self.prefixes is None and self.constraints is None

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a search: the same decode settings, and the same
        kind of guides (constrained search or not, prefixes or not). Sampling keys its random
        numbers by the sentence's place in its request, so a sampling job never shares."""
        decode = tuple(sorted(vars(self.decode).items()))
        return decode, self.sampling, self.prefixes is not None, self.constraints is not None


def check_limits(request: TranslateRequest, limits: ServeLimits) -> None:
    """Raise :class:`RequestError` for a request beyond ``limits`` or with guides that do
    not line up with its sentences."""
    count = len(request.text)
    if not 1 <= count <= limits.max_sentences:
        raise RequestError(
            f"text: {count} sentences; send 1 to {limits.max_sentences} per request "
            "(attn-serve --max-sentences)",
            "text",
        )
    for index, sentence in enumerate(request.text):
        field = f"text[{index}]"
        if len(sentence) > limits.max_chars:
            raise RequestError(
                f"{field}: {len(sentence)} characters; at most {limits.max_chars} per sentence "
                "(attn-serve --max-chars)",
                field,
            )
        if "\n" in sentence or "\r" in sentence:
            raise RequestError(f"{field}: one sentence per item, without line breaks", field)
    for name in ("prefix", "constraints"):
        guides = getattr(request, name)
        if guides is not None and len(guides) != count:
            raise RequestError(
                f"{name}: {len(guides)} items for {count} sentences; give one per sentence "
                "(an empty string or list where a sentence has none)",
                name,
            )
    _check_text(request)
    if request.attention and count > MAX_ATTENTION_SENTENCES:
        raise RequestError(
            f"attention: asked for {count} sentences; at most {MAX_ATTENTION_SENTENCES} per "
            "request carry attention maps (send the others without attention)",
            "attention",
        )


def _check_text(request: TranslateRequest) -> None:
    """Refuse text the tokenizer cannot take (a lone UTF-16 surrogate such as ``\\ud800``)
    and more constraint phrases for one sentence than the constrained search holds."""
    fields = [(f"text[{i}]", text) for i, text in enumerate(request.text)]
    fields += [(f"prefix[{i}]", text) for i, text in enumerate(request.prefix or [])]
    for i, phrases in enumerate(request.constraints or []):
        if len(phrases) > MAX_PHRASES:
            raise RequestError(
                f"constraints[{i}]: {len(phrases)} phrases; at most {MAX_PHRASES} per sentence",
                f"constraints[{i}]",
            )
        fields += [(f"constraints[{i}][{j}]", phrase) for j, phrase in enumerate(phrases)]
    for field, text in fields:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                f"{field}: not valid Unicode text (a lone surrogate)", field
            ) from None


def request_options(
    request: TranslateRequest, defaults: DecodeConfig, capabilities: Capabilities
) -> JobOptions:
    """The :class:`JobOptions` of a request (checked against the server's limits first),
    with ``defaults`` (the served model's decode settings) for the options it leaves out; a
    combination the backend cannot honour raises :class:`RequestError` naming the field."""
    if request.sample and request.beam is not None:
        raise RequestError("beam: sampling draws n_best samples; leave out beam or sample", "beam")
    if request.sample and request.constraints is not None:
        raise RequestError("constraints: cannot be combined with sample", "constraints")
    if request.constraints is not None and not capabilities.constraints:
        raise RequestError(
            "constraints: this model (a CTranslate2 folder) has no constrained search; serve "
            "the .pt checkpoint it was exported from",
            "constraints",
        )
    for wanted in ("attention", "alignments"):
        if getattr(request, wanted) and not capabilities.attention:
            raise RequestError(
                f"{wanted}: this model (a CTranslate2 folder) keeps no attention weights; "
                "serve the .pt checkpoint it was exported from",
                wanted,
            )
    sampling = None
    if request.sample:
        sampling = Sampling(request.temperature, request.top_k, request.top_p, request.seed)
    beam = defaults.beam_size if request.beam is None else request.beam
    if sampling is None and request.n_best is not None and request.n_best > beam:
        raise RequestError(
            f"n_best {request.n_best}: at most the beam size ({beam}); raise beam or lower n_best",
            "n_best",
        )
    decode = TranslationSettings(
        beam_size=request.beam, length_penalty=request.length_penalty,
        max_length_ratio=request.max_length_ratio, n_best=request.n_best, sampling=sampling,
    ).decode_settings(defaults)  # fmt: skip
    return JobOptions(
        decode, sampling, request.prefix, request.constraints, request.attention,
        request.alignments,
    )  # fmt: skip
