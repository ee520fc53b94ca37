"""Parallel data: load a corpus as a ``datasets.Dataset``, validate it, tokenize it (cached), and
cut it into token-bucketed, padded batches.

Flow: :func:`load_pairs` (text columns ``src``/``tgt``) -> :func:`tokenize_pairs` (adds
``src_ids``/``tgt_ids``/``src_len``/``tgt_len``; drops empty and over-long pairs with a
:class:`SplitReport`) -> :class:`TokenBatchSampler` (row indices per batch) -> :func:`collate`
(a :class:`Batch` of tensors). :func:`load_split` runs the first two steps for a configured split.

Everything stays in memory-mapped Arrow files under ``DataConfig.cache_dir``; only one batch at
a time becomes Python lists, so corpora larger than memory work.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import datasets
import torch
from datasets.exceptions import DatasetGenerationError

from .batching import Batch, BatchList, TokenBatchSampler, collate, rank_share
from .config import DataConfig
from .tokenizer import Tokenizer

__all__ = [
    "Batch",
    "DataError",
    "SplitReport",
    "StepShare",
    "TokenBatchSampler",
    "collate",
    "count_lines",
    "iter_batches",
    "iter_step_shares",
    "load_pairs",
    "load_split",
    "make_sampler",
    "normalise_columns",
    "texts",
    "tokenize_pairs",
]

logger = logging.getLogger(__name__)

# Bump when the readers or derived columns change, so that old caches are not reused.
CACHE_VERSION = "1"
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


class DataError(ValueError):
    """A corpus that cannot be used as given; the message names the file, line or column."""


@dataclass(frozen=True)
class SplitReport:
    """How many pairs a split had and why some were dropped."""

    split: str
    total: int
    empty: int
    too_long: int

    @property
    def kept(self) -> int:
        """Pairs left after dropping empty and over-long ones."""
        return self.total - self.empty - self.too_long

    def __str__(self) -> str:
        return (
            f"{self.split}: {self.total} pairs, dropped {self.empty} empty and "
            f"{self.too_long} over the length limit, kept {self.kept}"
        )


# ---- reading files -------------------------------------------------------------------------


def _available(path: Path) -> str:
    """The files next to ``path``, for error messages."""
    parent = path.parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    names = sorted(p.name for p in parent.iterdir())
    shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"{parent} holds: {shown or 'nothing'}"


def _open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing it when it starts with the gzip magic."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def count_lines(path: str | Path) -> int:
    """Lines in a (possibly gzipped) text file; a last line without newline counts."""
    count, last = 0, b"\n"
    with _open_binary(Path(path)) as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without the line break); invalid UTF-8 is a DataError."""
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number}: invalid UTF-8 at byte {error.start} of the line "
                    f"({raw[max(0, error.start - 8) : error.start + 8]!r}); re-encode the file "
                    "as UTF-8 (iconv -f LATIN1 -t UTF-8)"
                ) from None


def _read_plain(src_path: str, tgt_path: str) -> Iterator[dict[str, str]]:
    """Pairs from two line-aligned files (their line counts are checked beforehand)."""
    for (_, src), (_, tgt) in zip(_lines(Path(src_path)), _lines(Path(tgt_path)), strict=True):
        yield {"src": src, "tgt": tgt}


def _read_tsv(path: str, src_column: str, tgt_column: str) -> Iterator[dict[str, str]]:
    """Pairs from a TSV file whose first row names the columns."""
    lines = _lines(Path(path))
    _, header_line = next(lines)
    header = header_line.split("\t")
    src_at, tgt_at = header.index(src_column), header.index(tgt_column)
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{number}: {len(fields)} tab-separated fields, the header has "
                f"{len(header)} ({header}); remove tabs inside sentences or fix the row"
            )
        yield {"src": fields[src_at], "tgt": fields[tgt_at]}


def _read_jsonl(path: str, src_column: str, tgt_column: str) -> Iterator[dict[str, str]]:
    """Pairs from a JSON-lines file, one object per line."""
    for number, line in _lines(Path(path)):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: invalid JSON ({error.msg}); fix the line") from None
        missing = [c for c in (src_column, tgt_column) if not isinstance(row, dict) or c not in row]
        if missing:
            available = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"{path}:{number}: no column {missing[0]!r}; the row has {available}; "
                "set data.src_column / data.tgt_column"
            )
        yield {"src": str(row[src_column]), "tgt": str(row[tgt_column])}


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
    first = next((line for _, line in _lines(path) if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: the file is empty; point data.train/dev/test at a corpus")
    if cfg.kind == "tsv":
        columns = first.split("\t")
    else:
        try:
            row = json.loads(first)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: invalid JSON on the first row ({error.msg})") from None
        columns = list(row) if isinstance(row, dict) else []
    for key, column in (("data.src_column", cfg.src_column), ("data.tgt_column", cfg.tgt_column)):
        if column not in columns:
            raise DataError(
                f"{path}: no column {column!r} ({key}); the available columns are {columns}"
            )


def _file_source(cfg: DataConfig, spec: str) -> tuple[Callable[..., Iterator], dict, list[Path]]:
    """Generator, its kwargs and the files it reads for a plain, TSV or JSONL split."""
    if cfg.kind == "plain":
        src_path, tgt_path = _resolve(spec, cfg.src_lang), _resolve(spec, cfg.tgt_lang)
        src_count, tgt_count = count_lines(src_path), count_lines(tgt_path)
        if src_count != tgt_count:
            raise DataError(
                f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}; "
                "the files must be line-aligned (one sentence per line, same order)"
            )
        return (
            _read_plain,
            {"src_path": str(src_path), "tgt_path": str(tgt_path)},
            [
                src_path,
                tgt_path,
            ],
        )
    path = _existing(spec)
    _check_header(path, cfg)
    reader = _read_tsv if cfg.kind == "tsv" else _read_jsonl
    kwargs = {"path": str(path), "src_column": cfg.src_column, "tgt_column": cfg.tgt_column}
    return reader, kwargs, [path]


def _files_fingerprint(kind: str, kwargs: dict, files: list[Path]) -> str:
    """A cache key that changes when a file (path, size or mtime) or a column name changes."""
    stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps([CACHE_VERSION, kind, sorted(kwargs.items()), stamps])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


# ---- loading -------------------------------------------------------------------------------


def _cache_file(cache_dir: str | Path, fingerprint: str) -> str:
    """Where a derived Arrow file with this fingerprint lives."""
    directory = Path(cache_dir) / "processed"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"{fingerprint}.arrow")


def _derived_fingerprint(ds: datasets.Dataset, step: str, *parts: object) -> str:
    """Fingerprint of ``step`` applied to ``ds`` with ``parts`` as its arguments."""
    # Dataset._fingerprint is private, but it is what datasets chains its own caching on.
    text = json.dumps([CACHE_VERSION, ds._fingerprint, step, [str(p) for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _cached_processes(cache_file: str, wanted: int) -> int:
    """How many processes built the complete cached result in ``cache_file`` (one file: 1;
    pieces ``NAME_0000i_of_0000N.arrow``: N), else ``wanted``; so that a cache built on another
    number of cores is reused, not rebuilt."""
    path = Path(cache_file)
    if path.is_file():
        return 1
    for first in path.parent.glob(f"{path.stem}_00000_of_*{path.suffix}"):
        count = int(first.stem.rsplit("_of_", 1)[1])
        pieces = (f"{path.stem}_{index:05d}_of_{count:05d}{path.suffix}" for index in range(count))
        if all((path.parent / piece).is_file() for piece in pieces):
            return count
    return wanted


def _cached_map(
    ds: datasets.Dataset, cache_dir: str, step: str, parts: tuple, processes: int, **kwargs: Any
) -> datasets.Dataset:
    """``ds.map(**kwargs)`` in ``processes`` processes, cached under ``cache_dir`` and
    fingerprinted by ``step`` and ``parts``."""
    fingerprint = _derived_fingerprint(ds, step, *parts)
    cache_file = _cache_file(cache_dir, fingerprint)
    processes = _cached_processes(cache_file, processes)
    return ds.map(
        batched=True,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file,
        desc=step,
        num_proc=processes if processes > 1 else None,
        **kwargs,
    )


def _cached_filter(
    ds: datasets.Dataset, cache_dir: str, step: str, parts: tuple, processes: int, **kwargs: Any
) -> datasets.Dataset:
    """``ds.filter(**kwargs)`` cached like :func:`_cached_map`."""
    fingerprint = _derived_fingerprint(ds, step, *parts)
    cache_file = _cache_file(cache_dir, fingerprint)
    processes = _cached_processes(cache_file, processes)
    return ds.filter(
        batched=True,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file,
        desc=step,
        num_proc=processes if processes > 1 else None,
        **kwargs,
    )


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
        return _cached_map(
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
    reader, kwargs, files = _file_source(cfg, spec)
    large = sum(path.stat().st_size for path in files) >= LARGE_TEXT_BYTES
    try:
        with _progress_bars(large):
            return datasets.Dataset.from_generator(
                reader,
                features=TEXT_FEATURES,
                gen_kwargs=kwargs,
                cache_dir=str(Path(cfg.cache_dir) / "text"),
                fingerprint=_files_fingerprint(cfg.kind, kwargs, files),
            )
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise


def texts(ds: datasets.Dataset, column: str, batch_size: int = 10_000) -> Iterator[str]:
    """Stream one text column (``src`` or ``tgt``), e.g. to train a tokenizer."""
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]


def _nonempty(src: list[str], tgt: list[str]) -> list[bool]:
    """Keep pairs whose two sides both hold more than whitespace."""
    return [bool(s.strip()) and bool(t.strip()) for s, t in zip(src, tgt, strict=True)]


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
) -> tuple[datasets.Dataset, SplitReport]:
    """Drop empty pairs, add ``src_ids``/``tgt_ids``/``src_len``/``tgt_len``, drop pairs over
    ``max_length`` tokens (``None``: keep all). Each step is cached under ``cache_dir``, keyed
    by the input's fingerprint and the tokenizer's bytes, so a second run skips tokenization.
    The steps run in :func:`tokenizing_processes` processes, with progress bars on a large split.
    """
    cache_dir = str(cache_dir)
    processes = tokenizing_processes(num_proc, len(ds))
    if len(ds) >= LARGE_SPLIT:
        logger.info("%s: tokenizing %d pairs in %d process(es)", split, len(ds), processes)
    with _progress_bars(len(ds) >= LARGE_SPLIT):
        nonempty = _cached_filter(
            ds, cache_dir, "drop-empty", (), processes, function=_nonempty,
            input_columns=["src", "tgt"],
        )  # fmt: skip
        encoded = _cached_map(
            nonempty, cache_dir, "tokenize", (tokenizer.fingerprint,), processes,
            function=_encode, fn_kwargs={"tokenizer": tokenizer}, features=ID_FEATURES,
        )  # fmt: skip
        kept = encoded
        if max_length is not None:
            kept = _cached_filter(
                encoded, cache_dir, "drop-long", (max_length,), processes,
                function=_short_enough, fn_kwargs={"max_length": max_length},
                input_columns=["src_len", "tgt_len"],
            )  # fmt: skip
    report = SplitReport(split, len(ds), len(ds) - len(nonempty), len(encoded) - len(kept))
    logger.info("%s", report)
    return kept, report


def load_split(
    cfg: DataConfig, split: str, tokenizer: Tokenizer
) -> tuple[datasets.Dataset, SplitReport]:
    """:func:`load_pairs` then :func:`tokenize_pairs`; ``max_length`` filters train only, so
    that dev and test scores cover every sentence."""
    max_length = cfg.max_length if split == "train" else None
    return tokenize_pairs(
        load_pairs(cfg, split), tokenizer, cfg.cache_dir, max_length, split, cfg.num_proc
    )


# ---- batches -------------------------------------------------------------------------------


def disable_progress_bars() -> None:
    """Silence the datasets library's own progress bars (the CLI draws its own progress)."""
    datasets.disable_progress_bars()


def make_sampler(
    ds: datasets.Dataset, max_tokens: int, *, shuffle: bool = True, seed: int = 0
) -> TokenBatchSampler:
    """A :class:`TokenBatchSampler` over a dataset from :func:`tokenize_pairs`."""
    columns = ds.select_columns(["src_len", "tgt_len"]).with_format("torch")
    # In chunks: one ds[:] through a filter's indices mapping copies far more than two columns.
    chunks = list(columns.iter(batch_size=65_536))
    src_lengths, tgt_lengths = (
        torch.cat([chunk[name] for chunk in chunks]) if chunks else torch.zeros(0, dtype=torch.long)
        for name in ("src_len", "tgt_len")
    )
    return TokenBatchSampler(src_lengths, tgt_lengths, max_tokens, shuffle=shuffle, seed=seed)


class EpochBatches(torch.utils.data.Dataset):
    """Batches of row indices of a tokenized dataset, collated on request (in a DataLoader
    worker, or in the calling process)."""

    def __init__(self, ds: datasets.Dataset, batches: Sequence[list[int]]) -> None:
        self.ids = ds.select_columns(["src_ids", "tgt_ids"])
        self.batches = batches

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.batches)

    def __getitem__(self, index: int) -> Batch:
        """Batch ``index``, padded; only its rows are read from the Arrow files."""
        indices = self.batches[index]
        rows = self.ids[indices]
        return collate(rows["src_ids"], rows["tgt_ids"], indices)


def _as_is(batch: Batch) -> Batch:
    """The DataLoader's collate function: batches are collated by :class:`EpochBatches`."""
    return batch


def _collated(
    ds: datasets.Dataset,
    batches: Sequence[list[int]],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> Iterator[Batch]:
    """``batches`` (row indices) as padded batches, in order: collated here, or ahead of time in
    ``num_workers`` DataLoader worker processes. The workers draw their seed from a generator of
    their own, never from torch's global one (which would shift dropout masks with every new
    loader)."""
    epoch_batches = EpochBatches(ds, batches)
    if num_workers == 0:
        return (epoch_batches[i] for i in range(len(epoch_batches)))
    loader = torch.utils.data.DataLoader(
        epoch_batches, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return iter(loader)


def iter_batches(
    ds: datasets.Dataset, sampler: TokenBatchSampler, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """The rest of the sampler's current epoch as padded batches, in its order.

    With ``num_workers`` > 0, DataLoader worker processes collate the batches ahead of time;
    the sampler still advances only as batches are handed to the caller, so a checkpoint taken
    between two batches records the batches trained on, not the ones prefetched.
    """
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    produced = _collated(ds, remaining, num_workers, pin_memory, sampler.seed)
    for _handed_out, batch in zip(sampler, produced, strict=True):  # the sampler counts them
        yield batch


@dataclass
class StepShare:
    """One process's batches for one optimisation step."""

    batches: list[Batch]
    stand_in: bool  # the batches only keep this process in step: their loss is weighted 0


def iter_step_shares(
    ds: datasets.Dataset,
    sampler: TokenBatchSampler,
    accumulate_steps: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[StepShare]:
    """The rest of the sampler's current epoch, one optimisation step at a time, for process
    ``rank`` of ``world_size``.

    Each step takes the next ``accumulate_steps * world_size`` batches of the epoch (the last
    step of an epoch takes what is left) and :func:`~seq2seq_attn.batching.rank_share` cuts them
    between the processes, so every process runs the same number of steps per epoch and N
    processes train on exactly the batches one process accumulating N times as many would.
    The sampler's position counts the batches of the steps handed out, on every rank alike (a
    checkpoint records the batches trained on, not the ones prefetched by workers); it moves
    to the next epoch when the caller asks for a step past the last one.
    """
    group_size = accumulate_steps * world_size
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    groups = [
        remaining[start : start + group_size] for start in range(0, len(remaining), group_size)
    ]
    shares = [rank_share(group, rank, world_size) for group in groups]
    mine = BatchList.joined([share for share, _ in shares])  # no Python list per pair
    produced = _collated(ds, mine, num_workers, pin_memory, sampler.seed + rank)
    for group, (share, stand_in) in zip(groups, shares, strict=True):
        batches = [next(produced) for _ in share]
        sampler.advance(len(group))
        yield StepShare(batches, stand_in)
    sampler.next_epoch()
