"""The tokenized cache of :mod:`seq2seq_attn.data`: Arrow files under ``data.cache_dir`` named by
fingerprints that change with the content of the files read (never their size and mtime, which
an edit may keep) and with every step applied to them, so a changed corpus is never served from
a stale cache, and a resume can tell that its training data changed (:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

# Bump when the readers or derived columns change, so that old caches are not reused.
CACHE_VERSION = "1"


def fingerprint(ds: datasets.Dataset) -> str:
    """What identifies a dataset's rows: the content of the files read and every step applied
    since (tokenizer, filters)."""
    return ds._fingerprint  # private, but what datasets chains its own caching on


def files_fingerprint(kind: str, kwargs: dict, files: list[Path]) -> str:
    """A cache key over the kind, the columns and each file's bytes (not size and mtime)."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, kind, sorted(kwargs.items())]).encode())
    for path in files:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
            digest.update(b"\0%d" % handle.tell())  # each file's length ends it
    return digest.hexdigest()[:40]


def _cache_file(cache_dir: str | Path, fingerprint: str) -> str:
    """Where a derived Arrow file with this fingerprint lives."""
    directory = Path(cache_dir) / "processed"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"{fingerprint}.arrow")


def _derived_fingerprint(ds: datasets.Dataset, step: str, *parts: object) -> str:
    """Fingerprint of ``step`` applied to ``ds`` with ``parts`` as its arguments."""
    text = json.dumps([CACHE_VERSION, fingerprint(ds), step, [str(p) for p in parts]])
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


def cached_map(
    ds: datasets.Dataset, cache_dir: str, step: str, parts: tuple, processes: int, **kwargs: Any
) -> datasets.Dataset:
    """``ds.map(**kwargs)`` in ``processes`` processes, cached under ``cache_dir`` and
    fingerprinted by ``step`` and ``parts``."""
    return _cached(ds.map, ds, cache_dir, step, parts, processes, kwargs)


def cached_filter(
    ds: datasets.Dataset, cache_dir: str, step: str, parts: tuple, processes: int, **kwargs: Any
) -> datasets.Dataset:
    """``ds.filter(**kwargs)`` cached like :func:`cached_map`."""
    return _cached(ds.filter, ds, cache_dir, step, parts, processes, kwargs)


def _cached(
    method: Callable[..., datasets.Dataset], ds: datasets.Dataset, cache_dir: str, step: str,
    parts: tuple, processes: int, kwargs: dict[str, Any],
) -> datasets.Dataset:  # fmt: skip
    """``method`` (``ds.map`` or ``ds.filter``) batched, cached and fingerprinted."""
    fingerprint = _derived_fingerprint(ds, step, *parts)
    cache_file = _cache_file(cache_dir, fingerprint)
    processes = _cached_processes(cache_file, processes)
    return method(
        batched=True,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file,
        desc=step,
        num_proc=processes if processes > 1 else None,
        **kwargs,
    )
