"""Typed configuration: one dataclass per section of the YAML config, and the whole config.

Each section validates its own values in ``__post_init__`` and raises :class:`ConfigError`
naming the key, the bad value and how to fix it. The ``model`` section lives in
:mod:`seq2seq_attn.config.model`; the generic YAML walk in :mod:`seq2seq_attn.config.loader`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .loader import (
    ConfigError,
    apply_overrides,
    closest,
    from_mapping,
    read_yaml,
    require,
)
from .model import ModelConfig

# ---- data and tokenizer sections ----------------------------------------------------------

DATA_KINDS = ("plain", "tsv", "jsonl", "hub")
SPLITS = ("train", "dev", "test")
TOKENIZER_TYPES = ("unigram", "bpe")
MAX_SEED = 2**32 - 1  # SentencePiece's seed is 32-bit; torch's and Python's take it too
MAX_DDP_TIMEOUT_MINUTES = 10080  # a week: beyond, a hung process is never noticed


@dataclass
class CleanConfig:
    """``data.clean``: opt-in filters that drop bad pairs from the training split (all off by
    default; dev and test are never cleaned, so that they are scored on every sentence).

    - ``max_length_ratio``: drop a pair whose longer side has more than this many times the
      whitespace-separated words of the shorter side (as Moses' ``clean-corpus-n.perl``; leave
      it off for a language written without spaces);
    - ``drop_identical``: drop a pair whose source equals its target (surrounding whitespace
      ignored): untranslated copies;
    - ``drop_duplicates``: drop every later copy of an exact pair, keeping the first (found by
      a 64-bit hash of each pair, so the text is never held in memory);
    - ``drop_control_chars``: drop a pair with a control (Cc, tab excepted), format (Cf, the
      zero-width joiner and non-joiner and a leading byte order mark excepted), surrogate or
      private-use character, or U+FFFD (the trace of a bad decoding) on either side;
    - ``max_non_letter_share``: drop a pair where more than this share of one side's
      non-whitespace characters are not letters or combining marks (digits, punctuation,
      symbols: tables, URLs, markup).
    """

    max_length_ratio: float | None = None
    drop_identical: bool = False
    drop_duplicates: bool = False
    drop_control_chars: bool = False
    max_non_letter_share: float | None = None

    def __post_init__(self) -> None:
        ratio, share = self.max_length_ratio, self.max_non_letter_share
        require(
            ratio is None or 1 <= ratio < math.inf, "data.clean.max_length_ratio", ratio,
            "use a finite ratio >= 1 (3.0 drops a pair whose one side has 3x the words of the "
            "other) or null",
        )  # fmt: skip
        require(
            share is None or 0 < share < 1, "data.clean.max_non_letter_share", share,
            "use a share in (0, 1) such as 0.5, or null",
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        """Whether any filter is on."""
        return self != CleanConfig()


@dataclass
class DataConfig:
    """Where the parallel corpus comes from, how it is filtered and how batches are sized.

    ``train``/``dev``/``test`` name each split; what they hold depends on ``kind``:

    - ``plain``: a path prefix read as ``{prefix}.{src_lang}`` and ``{prefix}.{tgt_lang}``
      (``data/multi30k/train`` -> ``train.de`` + ``train.en``); ``{file}.gz`` is read when the
      plain file is absent, and gzip is recognised by its magic bytes;
    - ``tsv`` / ``jsonl``: one file holding both sides in the columns ``src_column`` and
      ``tgt_column`` (a TSV file starts with a header row naming its columns);
    - ``hub``: a split name (``train``, ``validation``...) of ``datasets.load_dataset(hub_name,
      hub_config)`` (or of a directory written by ``save_to_disk``); rows hold a ``translation``
      dict keyed by ``src_lang``/``tgt_lang``, else the columns ``src_column``/``tgt_column``.

    An empty ``dev`` or ``test`` means the corpus has no such split. ``max_length`` (tokens per
    side, without BOS/EOS) filters the training split only; ``max_tokens`` bounds the padded slots
    of one batch. Derived Arrow files (tokenized ids, filters) are cached under ``cache_dir``.
    ``num_workers`` > 0 collates training batches in that many DataLoader worker processes, ahead
    of the step (pinned memory on CUDA); the batches and their order stay the same.
    ``num_proc`` processes tokenize and filter a split (0: every core for a split of 100,000
    pairs or more, one process below); the cached result is the same whatever the number.
    ``clean`` (:class:`CleanConfig`) drops bad training pairs before they are tokenized; its
    settings are part of the cache key.
    """

    kind: str = "plain"
    src_lang: str = "de"
    tgt_lang: str = "en"
    train: str = "data/multi30k/train"
    dev: str = "data/multi30k/val"
    test: str = "data/multi30k/test_2016_flickr"
    src_column: str = "src"
    tgt_column: str = "tgt"
    hub_name: str = ""
    hub_config: str = ""
    max_length: int = 100
    max_tokens: int = 4096
    cache_dir: str = "data/cache"
    num_workers: int = 0  # DataLoader worker processes that collate batches ahead of the step
    num_proc: int = 0  # processes that tokenize a split (0: every core for >= 100k pairs)
    clean: CleanConfig = field(default_factory=CleanConfig)  # opt-in cleaning of the train split

    def __post_init__(self) -> None:
        require(self.kind in DATA_KINDS, "data.kind", self.kind, f"use one of {DATA_KINDS}")
        require(bool(self.src_lang), "data.src_lang", self.src_lang, "set a language code: de")
        require(bool(self.tgt_lang), "data.tgt_lang", self.tgt_lang, "set a language code: en")
        require(
            self.src_lang != self.tgt_lang,
            "data.tgt_lang",
            self.tgt_lang,
            "source and target languages must differ (data.src_lang is the same)",
        )
        require(bool(self.train), "data.train", self.train, "name the training split or files")
        require(
            bool(self.src_column) and self.src_column != self.tgt_column,
            "data.src_column",
            self.src_column,
            "name the source column; it must differ from data.tgt_column",
        )
        require(bool(self.tgt_column), "data.tgt_column", self.tgt_column, "name the target column")
        require(
            self.kind != "hub" or bool(self.hub_name),
            "data.hub_name",
            self.hub_name,
            "data.kind is hub: name the dataset (wmt14) or a save_to_disk directory",
        )
        for split in SPLITS if self.kind == "hub" else ():
            value = getattr(self, split)
            require(
                "/" not in value,
                f"data.{split}",
                value,
                "data.kind is hub: name a split of the dataset (train, validation, test)",
            )
        require(self.max_length >= 1, "data.max_length", self.max_length, "use a positive int")
        require(
            self.max_tokens >= self.max_length + 1,
            "data.max_tokens",
            self.max_tokens,
            f"a batch must hold one longest pair: use at least data.max_length + 1 = "
            f"{self.max_length + 1}",
        )
        require(bool(self.cache_dir), "data.cache_dir", self.cache_dir, "name a directory")
        require(
            self.num_workers >= 0, "data.num_workers", self.num_workers,
            "use 0 (collate in the training process) or a number of worker processes",
        )  # fmt: skip
        require(
            self.num_proc >= 0, "data.num_proc", self.num_proc,
            "use 0 (automatic) or a number of tokenizing processes",
        )  # fmt: skip

    def split_spec(self, split: str) -> str:
        """The prefix, file or split name configured for ``split`` (train, dev or test)."""
        require(split in SPLITS, "split", split, f"use one of {SPLITS}")
        return str(getattr(self, split))


@dataclass
class SubwordSamplingConfig:
    """``tokenizer.sampling``: subword regularization of the training pairs (off by default).

    With ``enabled``, every epoch gives each training pair a new segmentation of both sides,
    sampled over the SentencePiece model (as its ``enable_sampling``, but reproducibly: see
    :mod:`~seq2seq_attn.subword_sampling`): for ``tokenizer.type: unigram`` from the lattice of
    all segmentations (``nbest_size: -1``) or from the ``nbest_size`` best ones, with ``alpha``
    the smoothing exponent (small: near uniform, large: near the best segmentation; Kudo 2018);
    for ``bpe``, BPE-dropout with ``alpha`` the probability of dropping each merge (Provilkov et
    al. 2020; ``nbest_size`` is not used). See :class:`~seq2seq_attn.loaders.SubwordSampling`
    for the batches it makes.
    """

    enabled: bool = False
    alpha: float = 0.1
    nbest_size: int = -1


@dataclass
class TokenizerConfig:
    """SentencePiece training: model type, vocabulary size, coverage, one joint model or two.

    PAD=0, UNK=1, BOS=2, EOS=3 are fixed. ``max_sentences`` caps the sentences (per model) that
    SentencePiece samples for training; ``seed`` seeds that sampling.

    ``sampling`` (:class:`SubwordSamplingConfig`) is subword regularization for training only:
    a new sampled segmentation of each training pair every epoch, a function of ``train.seed``,
    the epoch and the pair alone (so resuming is exact and ``data.num_workers`` changes
    nothing). Validation, the dev loss, translation and the tokenized cache always use the
    deterministic segmentation, and the batches are still bucketed by its lengths: a batch
    whose sampled (longer) segmentations no longer fit ``data.max_tokens`` is collated as
    several pieces trained in the same step, and a side whose sample is longer than
    ``data.max_length`` keeps its deterministic ids.
    """

    type: str = "unigram"
    vocab_size: int = 8000
    character_coverage: float = 1.0
    joint: bool = True
    max_sentences: int = 1_000_000
    seed: int = 0
    sampling: SubwordSamplingConfig = field(default_factory=SubwordSamplingConfig)

    def __post_init__(self) -> None:
        require(self.type in TOKENIZER_TYPES, "tokenizer.type", self.type, f"use {TOKENIZER_TYPES}")
        require(
            self.vocab_size >= 16,
            "tokenizer.vocab_size",
            self.vocab_size,
            "use at least 16 (4 ids are reserved for pad/unk/bos/eos)",
        )
        require(
            0.0 < self.character_coverage <= 1.0,
            "tokenizer.character_coverage",
            self.character_coverage,
            "use a fraction in (0, 1]: 1.0 for small alphabets, 0.9995 for CJK",
        )
        require(
            self.max_sentences >= 1,
            "tokenizer.max_sentences",
            self.max_sentences,
            "use a positive int (1000000 is plenty)",
        )
        require(
            0 <= self.seed <= MAX_SEED, "tokenizer.seed", self.seed,
            f"use a whole number in [0, {MAX_SEED}] (SentencePiece takes a 32-bit seed)",
        )  # fmt: skip
        self._check_sampling()

    def _check_sampling(self) -> None:
        """The sampling values this ``type`` accepts (checked even while sampling is off)."""
        alpha, nbest_size = self.sampling.alpha, self.sampling.nbest_size
        if self.type == "bpe":
            require(
                0 < alpha < 1, "tokenizer.sampling.alpha", alpha,
                "with tokenizer.type bpe it is the BPE-dropout probability: use a value in "
                "(0, 1) such as 0.1",
            )  # fmt: skip
        else:
            require(
                alpha > 0, "tokenizer.sampling.alpha", alpha,
                "with tokenizer.type unigram it is the smoothing exponent: use a value > 0 "
                "such as 0.1 (sampling from the whole lattice) or 0.5",
            )  # fmt: skip
        require(
            nbest_size == -1 or nbest_size >= 2, "tokenizer.sampling.nbest_size", nbest_size,
            "use -1 (sample from every segmentation) or a number >= 2 of best segmentations "
            "to sample from (1 would always give the best one, no sampling)",
        )  # fmt: skip


# ---- train and decode sections, the whole config, YAML loading -----------------------------


@dataclass
class TrainConfig:
    """The ``train`` section: optimisation, precision, limits, validation and checkpoints."""

    seed: int = 1234
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    schedule: Literal["inverse_sqrt", "plateau", "constant", "cosine"] = "inverse_sqrt"
    warmup_steps: int = 4000
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = 1.0
    ema_decay: float | None = None  # validate and save a moving average of the weights
    accumulate_steps: int = 1
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    validate_every: int = 1000
    save_every: int = 500
    keep_last: int = 3
    early_stopping_patience: int | None = None
    log_every: int = 50
    tensorboard: bool = False  # TensorBoard event files in RUN_DIR/tensorboard/ (rank 0)
    max_nonfinite_in_a_row: int = 5
    ddp_backend: Literal["auto", "gloo", "nccl"] = "auto"  # under torchrun: auto = NCCL on CUDA
    ddp_timeout_minutes: float = 30.0  # how long a process waits for the others (validation!)

    def __post_init__(self) -> None:
        require(
            0 <= self.seed <= MAX_SEED, "train.seed", self.seed,
            f"use a whole number in [0, {MAX_SEED}]",
        )  # fmt: skip
        require(
            0 < self.lr < math.inf, "train.lr", self.lr,
            "use a positive learning rate such as 5e-4",
        )  # fmt: skip
        self._check_weight_decay()
        require(
            all(0 <= beta < 1 for beta in self.betas), "train.betas", self.betas,
            "both Adam betas must lie in [0, 1), e.g. [0.9, 0.98]",
        )  # fmt: skip
        require(
            0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing,
            "use a value in [0, 1), e.g. 0.1",
        )  # fmt: skip
        for key in ("warmup_steps", "validate_every", "save_every", "log_every"):
            value = getattr(self, key)
            require(value >= 0, f"train.{key}", value, "use a number of steps >= 0")
        for key in ("accumulate_steps", "keep_last", "max_nonfinite_in_a_row"):
            value = getattr(self, key)
            require(value >= 1, f"train.{key}", value, "use a whole number >= 1")
        for key in ("max_steps", "max_epochs", "early_stopping_patience", "plateau_patience"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"train.{key}", value, "use >= 1 or null")
        require(
            0 < self.ddp_timeout_minutes <= MAX_DDP_TIMEOUT_MINUTES, "train.ddp_timeout_minutes",
            self.ddp_timeout_minutes,
            f"use minutes > 0, longer than a validation takes, and at most "
            f"{MAX_DDP_TIMEOUT_MINUTES} (a week)",
        )  # fmt: skip
        require(
            self.ema_decay is None or 0 < self.ema_decay < 1, "train.ema_decay", self.ema_decay,
            "use a decay in (0, 1) such as 0.998 (the average's memory is about 1 / (1 - decay) "
            "steps), or null for no moving average",
        )  # fmt: skip
        for key in ("clip_grad_norm", "max_minutes"):
            value = getattr(self, key)
            require(value is None or value > 0, f"train.{key}", value, "use a value > 0 or null")
        require(
            0 < self.plateau_factor < 1, "train.plateau_factor", self.plateau_factor,
            "the learning rate is multiplied by it on a plateau: use a value in (0, 1)",
        )  # fmt: skip
        require(
            self.schedule != "cosine"
            or (self.max_steps is not None and self.max_steps > self.warmup_steps),
            "train.max_steps", self.max_steps,
            f"train.schedule cosine decays to 0 at train.max_steps: set it above "
            f"train.warmup_steps ({self.warmup_steps})",
        )  # fmt: skip

    def _check_weight_decay(self) -> None:
        """``weight_decay`` >= 0; with AdamW also ``lr * weight_decay`` < 1, since each step
        multiplies every weight by ``1 - lr * weight_decay`` (the peak rate is ``lr``): at 1 or
        more it zeroes or flips the weights."""
        decay = self.weight_decay
        require(decay >= 0, "train.weight_decay", decay, "use 0 (none) or a positive value")
        require(
            self.optimizer != "adamw" or self.lr * decay < 1, "train.weight_decay", decay,
            f"with adamw each step multiplies the weights by 1 - train.lr * weight_decay: keep "
            f"the product below 1 (train.lr is {self.lr}; 0.01 or 0.1 are usual)",
        )  # fmt: skip


@dataclass
class DecodeConfig:
    """The ``decode`` section: search settings for validation and ``attn-translate``.

    ``n_best`` is how many hypotheses a search returns per input, best first (at most
    ``beam_size``); validation and plain translation read the first.
    """

    beam_size: int = 5
    length_penalty: float = 0.6
    min_length: int = 0
    max_length: int = 256
    max_length_ratio: float = 2.0
    max_length_offset: int = 10
    n_best: int = 1

    def __post_init__(self) -> None:
        require(self.beam_size >= 1, "decode.beam_size", self.beam_size, "use 1 (greedy) or more")
        require(
            1 <= self.n_best <= self.beam_size, "decode.n_best", self.n_best,
            f"use 1 .. decode.beam_size ({self.beam_size})",
        )  # fmt: skip
        require(
            0 <= self.length_penalty < math.inf, "decode.length_penalty", self.length_penalty,
            "use 0 (none) or a finite positive GNMT alpha such as 0.6",
        )  # fmt: skip
        require(self.min_length >= 0, "decode.min_length", self.min_length, "use 0 or more")
        require(
            self.max_length > self.min_length, "decode.max_length", self.max_length,
            f"it must exceed decode.min_length ({self.min_length})",
        )  # fmt: skip
        require(
            0 < self.max_length_ratio < math.inf, "decode.max_length_ratio", self.max_length_ratio,
            "target length limit = ratio * source length + offset: use a finite ratio > 0",
        )  # fmt: skip
        require(
            self.max_length_offset >= 0, "decode.max_length_offset", self.max_length_offset,
            "target length limit = ratio * source length + offset: use an offset >= 0 (a "
            "negative one empties the translations of short sources)",
        )  # fmt: skip


@dataclass
class Config:
    """The whole YAML config: one typed section each for data, tokenizer, model, train, decode."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        require(
            self.model.family != "transformer" or self.model.max_positions > self.data.max_length,
            "model.max_positions",
            self.model.max_positions,
            f"a Transformer needs room for data.max_length ({self.data.max_length}) tokens plus "
            "EOS: raise it or lower data.max_length",
        )


def config_from_plain(values: object, source: str = "config") -> Config:
    """Build a :class:`Config` from plain data (a YAML mapping or a checkpoint's ``config``).

    Missing sections and keys keep their defaults; an unknown section is an error naming it and
    the closest valid one (``source`` names the file in that message).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {values!r}")
    names = [item.name for item in dataclasses.fields(Config)]
    for key in values:
        if key not in names:
            hint = closest(str(key), names)
            suggestion = f"did you mean '{hint}'? " if hint else ""
            raise ConfigError(
                f"{source}: unknown section '{key}'; {suggestion}valid sections: {', '.join(names)}"
            )
    hints = typing.get_type_hints(Config)
    sections = {
        key: from_mapping(hints[key], {} if value is None else value, key)
        for key, value in values.items()
    }
    return Config(**sections)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read the YAML config at ``path``, apply ``--set section.key=value`` ``overrides`` and
    validate everything once, raising :class:`ConfigError` naming the key, value and fix."""
    raw = apply_overrides(read_yaml(Path(path)), overrides)
    return config_from_plain(raw, str(path))
