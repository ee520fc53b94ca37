"""Multi30k (task 1, raw): the official files, checked, as plain line-aligned text.

:func:`prepare` writes ``{split}.{lang}`` files for a language pair from a local copy of the raw
files (``train.de.gz`` or a plain ``train.de``) or a download of the official release
(github.com/multi30k/dataset, ``data/task1/raw``). Each file is checked against the SHA-256 of
its *decompressed* text, so a copy that was re-gzipped (another gzip header) still verifies and a
corrupted or different file does not. ``scripts/prepare_multi30k.py`` is its command line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .corpus import (
    MisalignedError,
    TextFileError,
    check_aligned,
    gunzipped,
    line_count,
    read_parallel,
)
from .fileio import write_atomic

logger = logging.getLogger(__name__)

LANGS = ("en", "de", "fr", "cs")
TEST_SPLITS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
SPLITS = ("train", "val", *TEST_SPLITS)
BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"

# SHA-256 of the decompressed files, computed from the raw task-1 files (gzipped) of the
# multi30k/dataset repository: `zcat train.de.gz | sha256sum`.
SHA256 = {
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test_2016_flickr.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
    "test_2017_flickr.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test_2017_flickr.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test_2017_flickr.fr": "6f3764e31dac41e9455e612958bcfd4e877c5e15cd66df2c2b2be6d9bd83e5b6",
    "test_2017_mscoco.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
    "test_2017_mscoco.de": "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22",
    "test_2017_mscoco.fr": "39cde3f43f32b0a6bf29ce4917a46329ff32e53070c2fac87506695a740ae0a0",
}

Opener = Callable[[str], IO[bytes]]


class PrepareError(RuntimeError):
    """A missing, corrupted or misaligned Multi30k file; the message says what to do."""


def parse_pair(pair: str) -> tuple[str, str]:
    """'de-en' -> ('de', 'en'), checking both languages."""
    parts = pair.split("-")
    if len(parts) != 2 or parts[0] == parts[1] or any(p not in LANGS for p in parts):
        raise PrepareError(f"--pair {pair!r}: use SRC-TGT with two of {LANGS}, e.g. de-en")
    return parts[0], parts[1]


def _verified(name: str, data: bytes, origin: str) -> bytes:
    """The decompressed text of ``name``, after checking its SHA-256."""
    text = gunzipped(data)
    digest = hashlib.sha256(text).hexdigest()
    if digest != SHA256[name]:
        raise PrepareError(
            f"{origin}: SHA-256 of the decompressed text is {digest}, expected {SHA256[name]}; "
            "the file is corrupted or not the official Multi30k release: fetch it again"
        )
    return text


def read_local(directory: Path, name: str) -> bytes | None:
    """Verified text of ``name`` from ``directory`` (``name.gz`` or ``name``), None if absent."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return _verified(name, candidate.read_bytes(), str(candidate))
    return None


def read_remote(base_url: str, name: str, opener: Opener = urllib.request.urlopen) -> bytes:
    """Verified text of ``name`` downloaded from ``{base_url}/{name}.gz``."""
    url = f"{base_url}/{name}.gz"
    try:
        with opener(url) as response:
            data = response.read()
    except OSError as error:
        raise PrepareError(
            f"{url}: download failed ({error}); use a local copy of the raw files instead "
            "(MULTI30K_DIR=DIR, or --from DIR for scripts/prepare_multi30k.py)"
        ) from error
    return _verified(name, data, url)


def prepare(
    src: str,
    tgt: str,
    out: Path,
    source_dir: Path | None = None,
    base_url: str = BASE_URL,
    opener: Opener = urllib.request.urlopen,
) -> list[Path]:
    """Write ``{split}.{src}`` and ``{split}.{tgt}`` under ``out`` for every split that has both."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split in SPLITS:
        names = [f"{split}.{lang}" for lang in (src, tgt)]
        if split not in pair_splits(src, tgt):
            logger.warning("skip %s: Multi30k has no %s-%s data for it", split, src, tgt)
            continue
        texts = []
        for name in names:
            text = read_local(source_dir, name) if source_dir else None
            if text is None and source_dir is not None:
                raise PrepareError(f"{source_dir}: neither {name}.gz nor {name} is there")
            texts.append(text if text is not None else read_remote(base_url, name, opener))
        try:
            check_aligned(names[0], line_count(texts[0]), names[1], line_count(texts[1]))
        except MisalignedError as error:
            raise PrepareError(str(error)) from None
        for name, text in zip(names, texts, strict=True):
            write_atomic(out / name, text)
            written.append(out / name)
    return written


def source_dir(explicit: Path | None = None, fallback: Path | None = None) -> Path | None:
    """Where the raw files come from: ``explicit`` (``--from DIR``), else the ``MULTI30K_DIR``
    variable, else ``fallback`` when it is a folder, else None (download the official files).
    A folder that was asked for but is not there is a :class:`PrepareError`."""
    asked = explicit or (
        Path(os.environ["MULTI30K_DIR"]) if os.environ.get("MULTI30K_DIR") else None
    )
    if asked is None:
        return fallback if fallback is not None and fallback.is_dir() else None
    if not asked.is_dir():
        origin = "--from" if explicit else "MULTI30K_DIR"
        raise PrepareError(
            f"{origin}={asked}: not a directory; name the folder that holds the raw Multi30k files "
            "(train.de.gz ...), or unset it to download them"
        )
    return asked


def pair_splits(src: str, tgt: str) -> list[str]:
    """The splits Multi30k has for the pair, in order (the 2017 test sets have no Czech)."""
    return [split for split in SPLITS if f"{split}.{src}" in SHA256 and f"{split}.{tgt}" in SHA256]


def pair_test_splits(src: str, tgt: str) -> list[str]:
    """The test splits Multi30k has for the pair."""
    return [split for split in pair_splits(src, tgt) if split in TEST_SPLITS]


def missing_files(directory: Path, src: str, tgt: str) -> list[str]:
    """The pair's prepared files (``train.de`` ...) that ``directory`` does not hold."""
    return [
        f"{split}.{lang}"
        for split in pair_splits(src, tgt)
        for lang in (src, tgt)
        if not (directory / f"{split}.{lang}").is_file()
    ]


def read_split(directory: Path, split: str, src: str, tgt: str) -> tuple[list[str], list[str]]:
    """The source and reference lines of a prepared split, checked to be line-aligned UTF-8."""
    source_file, reference_file = directory / f"{split}.{src}", directory / f"{split}.{tgt}"
    try:
        return read_parallel(source_file, reference_file)
    except MisalignedError as error:
        raise PrepareError(
            f"{error}; prepare the data again (delete both files and run again)"
        ) from None
    except TextFileError as error:
        raise PrepareError(f"{error}; prepare the data again") from None
