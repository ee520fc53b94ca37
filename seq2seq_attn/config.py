"""Typed configuration: one dataclass per section of the YAML config.

Each section validates its own values in ``__post_init__`` and raises :class:`ConfigError`
naming the key, the bad value and how to fix it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key, the value and the fix."""


def require(condition: bool, key: str, value: object, fix: str) -> None:
    """Raise :class:`ConfigError` for ``key = value`` unless ``condition``; ``fix`` says what to do.

    ``key`` is the dotted path the user writes (``model.num_heads``).
    """
    if not condition:
        raise ConfigError(f"{key}: invalid value {value!r}; {fix}")


# ---- model section -------------------------------------------------------------------------


# ---- data and tokenizer sections ----------------------------------------------------------

# Imported here, not at the top, so that this section stays self-contained for merging.
from dataclasses import dataclass  # noqa: E402

DATA_KINDS = ("plain", "tsv", "jsonl", "hub")
SPLITS = ("train", "dev", "test")
TOKENIZER_TYPES = ("unigram", "bpe")


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

    def split_spec(self, split: str) -> str:
        """The prefix, file or split name configured for ``split`` (train, dev or test)."""
        require(split in SPLITS, "split", split, f"use one of {SPLITS}")
        return str(getattr(self, split))


@dataclass
class TokenizerConfig:
    """SentencePiece training: model type, vocabulary size, coverage, one joint model or two.

    PAD=0, UNK=1, BOS=2, EOS=3 are fixed. ``max_sentences`` caps the sentences (per model) that
    SentencePiece samples for training; ``seed`` seeds that sampling.
    """

    type: str = "unigram"
    vocab_size: int = 8000
    character_coverage: float = 1.0
    joint: bool = True
    max_sentences: int = 1_000_000
    seed: int = 0

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
        require(self.seed >= 0, "tokenizer.seed", self.seed, "use a non-negative int")


# ---- train and decode sections, the whole config, YAML loading -----------------------------
