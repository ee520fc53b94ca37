"""Parallel data: load a corpus as a ``datasets.Dataset``, validate it and tokenize it (cached).

Flow: :func:`load_pairs` (text columns ``src``/``tgt``, read by :mod:`~seq2seq_attn.corpus` or
from the hub) -> :func:`tokenize_pairs` (adds ``src_ids``/``tgt_ids``/``src_len``/``tgt_len``;
drops empty, unclean (``data.clean``, train only) and over-long pairs with a
:class:`SplitReport`). :func:`load_split` runs both for a configured split;
:mod:`~seq2seq_attn.loaders` cuts the result into batches.

Everything stays in memory-mapped Arrow files under ``DataConfig.cache_dir``; only one batch at
a time becomes Python lists, so corpora larger than memory work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError

from .config import CleanConfig, DataConfig
from .corpus import (
    CLEAN_FILTERS,
    CleanReport,
    MisalignedError,
    TextFileError,
    check_parallel_files,
    clean_marks,
    header_columns,
    jsonl_pairs,
    plain_pairs,
    tsv_pairs,
)
from .data_cache import cached_filter, cached_map, files_fingerprint
from .tokenizer import Tokenizer

__all__ = [
    "DataError",
    "SplitReport",
    "disable_progress_bars",
    "load_pairs",
    "load_split",
    "normalise_columns",
    "texts",
    "tokenize_pairs",
    "tokenizing_processes",
]

logger = logging.getLogger(__name__)

LARGE_SPLIT = 100_000  # pairs from which a split is tokenized in parallel, with progress bars
LARGE_TEXT_BYTES = 10_000_000  # text files from which reading them shows progress bars
TEXT_FEATURES = datasets.Features(
    {"src": datasets.Value("string"), "tgt": datasets.Value("string")}
)
ID_FEATURES = datasets.Features(
    {
        **TEXT_FEATURES,
        "src_ids": datasets.List(datasets.Value("int32")),
        "tgt_ids": datasets.List(datasets.Value("int32")),
        "src_len": datasets.Value("int32"),
        "tgt_len": datasets.Value("int32"),
    }
)
CLEAN_MARKS = datasets.Features(
    {"drop": datasets.Value("int8"), "pair_hash": datasets.Value("int64")}
)


class DataError(ValueError):
    """A corpus that cannot be used as given; the message names the file, line or column."""


@dataclass(frozen=True)
class SplitReport:
    """How many pairs a split had and why some were dropped (``cleaned``: None when
    ``data.clean`` was off)."""

    split: str
    total: int
    empty: int
    too_long: int
    cleaned: CleanReport | None = None

    @property
    def kept(self) -> int:
        """Pairs left after dropping empty, unclean and over-long ones."""
        cleaned = self.cleaned.dropped if self.cleaned else 0
        return self.total - self.empty - cleaned - self.too_long

    def __str__(self) -> str:
        cleaned = f", {self.cleaned.dropped} by cleaning" if self.cleaned else ""
        return (
            f"{self.split}: {self.total} pairs, dropped {self.empty} empty{cleaned} and "
            f"{self.too_long} over the length limit, kept {self.kept}"
        )


# ---- finding files -------------------------------------------------------------------------


def _available(path: Path) -> str:
    """The files next to ``path``, for error messages."""
    parent = path.parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    names = sorted(p.name for p in parent.iterdir())
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"{parent} holds: {shown or 'nothing'}"


def _resolve(prefix: str, lang: str) -> Path:
    """``{prefix}.{lang}``, else ``{prefix}.{lang}.gz``; a DataError naming both when neither."""
    path = Path(f"{prefix}.{lang}")
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: no such file (nor {path.name}.gz); {_available(path)}")


def _existing(path_text: str) -> Path:
    """``path_text`` as a Path, or a DataError naming it and its directory's files."""
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"{path}: no such file; {_available(path)}")
    return path


def _check_header(path: Path, cfg: DataConfig) -> None:
    """Fail early when a TSV header or the first JSONL row lacks a configured column."""
    columns = header_columns(path, cfg.kind)
    if columns is None:
        raise DataError(f"{path}: the file is empty; point data.train/dev/test at a corpus")
    for key, column in (("data.src_column", cfg.src_column), ("data.tgt_column", cfg.tgt_column)):
        if column not in columns:
            raise DataError(
                f"{path}: no column {column!r} ({key}); the available columns are {columns}"
            )


def _file_source(cfg: DataConfig, spec: str) -> tuple[Callable[..., Iterator], dict, list[Path]]:
    """Generator, its kwargs and the files it reads for a plain, TSV or JSONL split."""
    if cfg.kind == "plain":
        src_path, tgt_path = _resolve(spec, cfg.src_lang), _resolve(spec, cfg.tgt_lang)
        try:
            check_parallel_files(src_path, tgt_path)
        except MisalignedError as error:
            raise DataError(
                f"{error}; the files must be line-aligned (one sentence per line, same order)"
            ) from None
        kwargs = {"src_path": str(src_path), "tgt_path": str(tgt_path)}
        return plain_pairs, kwargs, [src_path, tgt_path]
    path = _existing(spec)
    _check_header(path, cfg)
    reader = tsv_pairs if cfg.kind == "tsv" else jsonl_pairs
    kwargs = {"path": str(path), "src_column": cfg.src_column, "tgt_column": cfg.tgt_column}
    return reader, kwargs, [path]


# ---- loading -------------------------------------------------------------------------------


def _translation_to_pairs(batch: dict[str, list], src_lang: str, tgt_lang: str) -> dict:
    """Rows holding ``translation={lang: text}`` -> ``src``/``tgt`` columns."""
    rows = batch["translation"]
    return {"src": [row[src_lang] for row in rows], "tgt": [row[tgt_lang] for row in rows]}


def normalise_columns(ds: datasets.Dataset, cfg: DataConfig, source: str) -> datasets.Dataset:
    """A hub-style dataset -> exactly the string columns ``src`` and ``tgt``.

    Rows hold a ``translation`` dict keyed by ``cfg.src_lang``/``cfg.tgt_lang``, or the two
    columns ``cfg.src_column``/``cfg.tgt_column``. ``source`` names the dataset in errors.
    """
    if "translation" in ds.column_names:
        feature = ds.features["translation"]
        languages = list(getattr(feature, "languages", None) or feature)
        for key, lang in (("data.src_lang", cfg.src_lang), ("data.tgt_lang", cfg.tgt_lang)):
            if lang not in languages:
                raise DataError(
                    f"{source}: no language {lang!r} ({key}) in its 'translation' column; "
                    f"the available languages are {languages}"
                )
        return cached_map(
            ds,
            cfg.cache_dir,
            "translation-to-pairs",
            (cfg.src_lang, cfg.tgt_lang),
            tokenizing_processes(cfg.num_proc, len(ds)),
            function=_translation_to_pairs,
            fn_kwargs={"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang},
            remove_columns=ds.column_names,
            features=TEXT_FEATURES,
        )
    for key, column in (("data.src_column", cfg.src_column), ("data.tgt_column", cfg.tgt_column)):
        if column not in ds.column_names:
            raise DataError(
                f"{source}: no column {column!r} ({key}) and no 'translation' column; "
                f"the available columns are {ds.column_names}"
            )
    ds = ds.select_columns([cfg.src_column, cfg.tgt_column])
    ds = ds.rename_columns({cfg.src_column: "src_tmp", cfg.tgt_column: "tgt_tmp"})
    ds = ds.rename_columns({"src_tmp": "src", "tgt_tmp": "tgt"})
    return ds if ds.features == TEXT_FEATURES else ds.cast(TEXT_FEATURES)


def _load_hub(cfg: DataConfig, split_name: str) -> datasets.Dataset:
    """A split of a hub dataset (``load_dataset``) or of a ``save_to_disk`` directory."""
    path = Path(cfg.hub_name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split_name not in loaded:
                raise DataError(
                    f"{path}: no split {split_name!r}; the available splits are {list(loaded)}"
                )
            loaded = loaded[split_name]
    else:
        loaded = datasets.load_dataset(
            cfg.hub_name,
            cfg.hub_config or None,
            split=split_name,
            cache_dir=str(Path(cfg.cache_dir) / "hub"),
        )
    return normalise_columns(loaded, cfg, f"{cfg.hub_name}[{split_name}]")


def load_pairs(cfg: DataConfig, split: str) -> datasets.Dataset:
    """The ``split`` (train, dev or test) of the configured corpus as ``src``/``tgt`` text.

    Raises :class:`DataError` for a missing file or column, line counts that differ, or invalid
    UTF-8 (naming the file and line). Rows keep the corpus order; nothing is dropped here.
    """
    spec = cfg.split_spec(split)
    if not spec:
        raise DataError(f"data.{split} is empty: the corpus has no {split} split; set data.{split}")
    if cfg.kind == "hub":
        return _load_hub(cfg, spec)
    try:
        return _load_files(cfg, spec)
    except TextFileError as error:
        raise DataError(str(error)) from None


def _load_files(cfg: DataConfig, spec: str) -> datasets.Dataset:
    """The plain, TSV or JSONL files ``spec`` names, read into a text dataset (cached)."""
    reader, kwargs, files = _file_source(cfg, spec)
    large = sum(path.stat().st_size for path in files) >= LARGE_TEXT_BYTES
    try:
        with _progress_bars(large):
            return datasets.Dataset.from_generator(
                reader,
                features=TEXT_FEATURES,
                gen_kwargs=kwargs,
                cache_dir=str(Path(cfg.cache_dir) / "text"),
                fingerprint=files_fingerprint(cfg.kind, kwargs, files),
            )
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, TextFileError):
            raise error.__cause__ from None
        raise


def texts(ds: datasets.Dataset, column: str, batch_size: int = 10_000) -> Iterator[str]:
    """Stream one text column (``src`` or ``tgt``), e.g. to train a tokenizer."""
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]


def _nonempty(src: list[str], tgt: list[str]) -> list[bool]:
    """Keep pairs whose two sides both hold more than whitespace."""
    return [bool(s.strip()) and bool(t.strip()) for s, t in zip(src, tgt, strict=True)]


def _unmarked(indices: list[int], drop: np.ndarray) -> list[bool]:
    """Keep the rows at ``indices`` whose ``drop`` code is 0."""
    return (drop[indices] == 0).tolist()


def _clean(
    ds: datasets.Dataset, clean: CleanConfig, cache_dir: str, split: str, processes: int
) -> tuple[datasets.Dataset, CleanReport]:
    """Drop the pairs ``clean`` rejects: each pair is marked (the filter that drops it, its
    hash) in one cached step in ``processes`` processes; one sort of the hashes of the pairs
    still kept then marks every copy after the first as a duplicate (about 25 bytes a pair in
    memory, never the text); a cached filter keyed by the settings keeps the unmarked pairs."""
    if len(ds) == 0:
        return ds, CleanReport()
    settings = json.dumps(dataclasses.asdict(clean), sort_keys=True)
    filters = {k: v for k, v in dataclasses.asdict(clean).items() if k != "drop_duplicates"}
    marks = cached_map(
        ds, cache_dir, "clean-marks", (settings,), processes, function=clean_marks,
        input_columns=["src", "tgt"], remove_columns=ds.column_names, features=CLEAN_MARKS,
        fn_kwargs={"filters": filters, "hashed": clean.drop_duplicates},
    )  # fmt: skip
    drop = marks.data.column("drop").to_numpy().copy()  # (N,) int8, from Arrow at C speed
    if clean.drop_duplicates:
        candidates = np.flatnonzero(drop == 0)  # (K,) rows no other filter drops
        hashes = marks.data.column("pair_hash").to_numpy()[candidates]  # (K,) int64
        _, first = np.unique(hashes, return_index=True)  # (U,) first copy of each pair
        later = np.ones(len(candidates), dtype=bool)  # (K,)
        later[first] = False
        drop[candidates[later]] = 1 + CLEAN_FILTERS.index("duplicate")
    counts = np.bincount(drop, minlength=1 + len(CLEAN_FILTERS))
    report = CleanReport(**{name: int(counts[1 + i]) for i, name in enumerate(CLEAN_FILTERS)})
    kept = cached_filter(
        ds, cache_dir, "clean", (settings,), processes, function=_unmarked,
        fn_kwargs={"drop": drop}, with_indices=True, input_columns=[],
    )  # fmt: skip
    logger.info(
        "%s: cleaning dropped %s (%d pairs), kept %d", split, report, report.dropped, len(kept)
    )
    return kept, report


def _encode(batch: dict[str, list], tokenizer: Tokenizer) -> dict[str, list]:
    """Add ``src_ids``/``tgt_ids`` and their lengths to a batch of text pairs."""
    src_ids, tgt_ids = tokenizer.encode_src(batch["src"]), tokenizer.encode_tgt(batch["tgt"])
    return {
        "src_ids": src_ids,
        "tgt_ids": tgt_ids,
        "src_len": [len(ids) for ids in src_ids],
        "tgt_len": [len(ids) for ids in tgt_ids],
    }


def _short_enough(src_len: list[int], tgt_len: list[int], max_length: int) -> list[bool]:
    """Keep pairs whose two sides have at most ``max_length`` tokens."""
    return [s <= max_length and t <= max_length for s, t in zip(src_len, tgt_len, strict=True)]


def tokenizing_processes(requested: int, pairs: int) -> int:
    """How many processes tokenize ``pairs`` pairs: ``requested``, or with 0 every core this
    process may use for a split of :data:`LARGE_SPLIT` pairs or more (one below: starting
    processes costs more than it saves)."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) if pairs >= LARGE_SPLIT else 1


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """Show the datasets library's progress bars inside the block when ``shown`` (a large split
    takes minutes to tokenize), whatever the caller chose; restore its choice afterwards."""
    hidden = not datasets.is_progress_bar_enabled()
    if shown and hidden:
        datasets.enable_progress_bars()
    try:
        yield
    finally:
        if shown and hidden:
            datasets.disable_progress_bars()


def tokenize_pairs(
    ds: datasets.Dataset,
    tokenizer: Tokenizer,
    cache_dir: str | Path,
    max_length: int | None = None,
    split: str = "data",
    num_proc: int = 0,
    clean: CleanConfig | None = None,
) -> tuple[datasets.Dataset, SplitReport]:
    """Drop empty pairs, then those ``clean`` rejects (None or all off: none), add
    ``src_ids``/``tgt_ids``/``src_len``/``tgt_len``, drop pairs over ``max_length`` tokens
    (``None``: keep all). Each step is cached under ``cache_dir``, keyed by the input's
    fingerprint, the cleaning settings and the tokenizer's bytes, so a second run skips them.
    The steps run in :func:`tokenizing_processes` processes, with progress bars on a large split.
    """
    cache_dir = str(cache_dir)
    processes = tokenizing_processes(num_proc, len(ds))
    if len(ds) >= LARGE_SPLIT:
        logger.info("%s: tokenizing %d pairs in %d process(es)", split, len(ds), processes)
    with _progress_bars(len(ds) >= LARGE_SPLIT):
        nonempty = cached_filter(
            ds, cache_dir, "drop-empty", (), processes, function=_nonempty,
            input_columns=["src", "tgt"],
        )  # fmt: skip
        cleaned, clean_report = nonempty, None
        if clean is not None and clean.enabled:
            cleaned, clean_report = _clean(nonempty, clean, cache_dir, split, processes)
        encoded = cached_map(
            cleaned, cache_dir, "tokenize", (tokenizer.fingerprint,), processes,
            function=_encode, fn_kwargs={"tokenizer": tokenizer}, features=ID_FEATURES,
        )  # fmt: skip
        kept = encoded
        if max_length is not None:
            kept = cached_filter(
                encoded, cache_dir, "drop-long", (max_length,), processes,
                function=_short_enough, fn_kwargs={"max_length": max_length},
                input_columns=["src_len", "tgt_len"],
            )  # fmt: skip
    empty, too_long = len(ds) - len(nonempty), len(encoded) - len(kept)
    report = SplitReport(split, len(ds), empty, too_long, clean_report)
    logger.info("%s", report)
    return kept, report


def load_split(
    cfg: DataConfig, split: str, tokenizer: Tokenizer
) -> tuple[datasets.Dataset, SplitReport]:
    """:func:`load_pairs` then :func:`tokenize_pairs`; ``max_length`` and ``clean`` filter
    train only, so that dev and test scores cover every sentence."""
    train = split == "train"
    return tokenize_pairs(
        load_pairs(cfg, split), tokenizer, cfg.cache_dir, cfg.max_length if train else None,
        split, cfg.num_proc, cfg.clean if train else None,
    )  # fmt: skip


def disable_progress_bars() -> None:
    """Silence the datasets library's own progress bars (the CLI draws its own progress)."""
    datasets.disable_progress_bars()
