"""Reading text: how every text file the project reads is opened and split into lines.

One rule, wherever text comes from (a corpus, a prepared split, a file to translate, stdin):

- a file that starts with the gzip magic is decompressed, whatever its name;
- lines are split on ``\\n`` only, as sacreBLEU reads a file (``open(..., newline="\\n")``): a
  lone ``\\r`` inside a line stays, ``\\r`` at the end of a line (a CRLF line end) is dropped, a
  last line without a line end counts, blank lines are kept; other trailing whitespace is text
  (sacreBLEU's command line strips it, its Python API does not);
- the text is UTF-8; an invalid byte raises :class:`TextFileError` naming ``file:line``.

On top of it: reading two line-aligned files (the counts checked, both files named when they
differ), the pair readers of plain, TSV and JSON-lines corpora, and the cleaning filters
(``data.clean``) that judge a pair by its text. Standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GZIP_MAGIC = b"\x1f\x8b"


class TextFileError(ValueError):
    """A text input that cannot be read: the message names the file (and line) and the problem."""


class MisalignedError(TextFileError):
    """Two files meant to be line-aligned have different line counts; the message names both."""


# ---- opening -------------------------------------------------------------------------------


def _is_gzip(head: bytes) -> bool:
    """Whether data starting with ``head`` (its first two bytes suffice) is gzip-compressed."""
    return head[:2] == GZIP_MAGIC


def gunzipped(data: bytes) -> bytes:
    """``data`` itself, or its decompressed content when it is gzip-compressed."""
    return gzip.decompress(data) if _is_gzip(data) else data


def _open_binary(path: str | Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, decompressing it when it is gzip-compressed."""
    path = Path(path)
    with path.open("rb") as probe:
        head = probe.read(2)
    return gzip.open(path, "rb") if _is_gzip(head) else path.open("rb")


def _unreadable(path: str | Path, error: Exception) -> TextFileError:
    """The error for a file that cannot be opened or decompressed."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return TextFileError(f"{path}: cannot read ({reason})")


# ---- the line rule -------------------------------------------------------------------------


def _invalid_utf8(origin: str, data: bytes, error: UnicodeDecodeError, first: int) -> TextFileError:
    """The error for invalid UTF-8 in ``data`` (lines numbered from ``first``), naming the
    line, the byte within it and the bytes around it."""
    start = data.rfind(b"\n", 0, error.start) + 1
    end = data.find(b"\n", error.start)
    end = len(data) if end == -1 else end
    near = data[max(start, error.start - 8) : min(end, error.start + 8)]
    number = first + data.count(b"\n", 0, error.start)
    return TextFileError(
        f"{origin}:{number}: not valid UTF-8 ({error.reason}) at byte {error.start - start} of "
        f"the line ({near!r}); re-encode it as UTF-8 (iconv -f LATIN1 -t UTF-8)"
    )


def decode_lines(data: bytes, origin: str, first: int = 1) -> list[str]:
    """UTF-8 ``data`` split into lines by the module's rule (on ``\\n``, a ``\\r`` before it
    dropped, a final line end closing the last line, blank lines kept). Invalid UTF-8 raises
    :class:`TextFileError` naming ``origin`` and the line (``data``'s first is line ``first``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _invalid_utf8(origin, data, error, first=first) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a (possibly gzipped) file, read as it goes, split and
    checked like :func:`decode_lines`; an unreadable file raises :class:`TextFileError`."""
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8").rstrip("\n").rstrip("\r")
                except UnicodeDecodeError as error:
                    raise _invalid_utf8(str(path), raw, error, first=number) from None
    except (OSError, EOFError) as error:  # EOFError: a truncated gzip file
        raise _unreadable(path, error) from None


def read_lines(path: str | Path) -> list[str]:
    """The lines of the (possibly gzipped) UTF-8 text file ``path`` (see :func:`decode_lines`);
    an unreadable file raises :class:`TextFileError` naming it."""
    try:
        with _open_binary(path) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise _unreadable(path, error) from None
    return decode_lines(data, str(path))


def line_count(data: bytes) -> int:
    """Lines in ``data`` by the module's rule: its line ends, and a last line without one."""
    return data.count(b"\n") + (data[-1:] not in (b"", b"\n"))


def count_lines(path: str | Path) -> int:
    """Lines in a (possibly gzipped) text file, read in chunks: :func:`line_count` of it."""
    count, last = 0, b"\n"
    try:
        with _open_binary(path) as handle:
            while chunk := handle.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except (OSError, EOFError) as error:
        raise _unreadable(path, error) from None
    return count + (last != b"\n")


# ---- parallel text -------------------------------------------------------------------------


def check_aligned(src: str | Path, src_count: int, tgt: str | Path, tgt_count: int) -> None:
    """Raise :class:`MisalignedError` naming both files and their counts when they differ."""
    if src_count != tgt_count:
        raise MisalignedError(f"{src} has {src_count} lines but {tgt} has {tgt_count}")


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """The lines of two line-aligned files (:func:`read_lines`), checked to be as many."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    check_aligned(src_path, len(src), tgt_path, len(tgt))
    return src, tgt


def check_parallel_files(src_path: str | Path, tgt_path: str | Path) -> int:
    """The line count two files share, counted without holding them in memory; a
    :class:`MisalignedError` when they differ."""
    src_count, tgt_count = count_lines(src_path), count_lines(tgt_path)
    check_aligned(src_path, src_count, tgt_path, tgt_count)
    return src_count


# ---- corpus readers: rows {"src": ..., "tgt": ...} -------------------------------------------


def plain_pairs(src_path: str, tgt_path: str) -> Iterator[dict[str, str]]:
    """Pairs from two line-aligned files (check them first: :func:`check_parallel_files`)."""
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    for (_, src), (_, tgt) in zip(src_lines, tgt_lines, strict=True):
        yield {"src": src, "tgt": tgt}


def tsv_pairs(path: str, src_column: str, tgt_column: str) -> Iterator[dict[str, str]]:
    """Pairs from a TSV file whose first row names the columns."""
    lines = iter_lines(path)
    _, header_line = next(lines)
    header = header_line.split("\t")
    src_at, tgt_at = header.index(src_column), header.index(tgt_column)
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise TextFileError(
                f"{path}:{number}: {len(fields)} tab-separated fields, the header has "
                f"{len(header)} ({header}); remove tabs inside sentences or fix the row"
            )
        yield {"src": fields[src_at], "tgt": fields[tgt_at]}


def jsonl_pairs(path: str, src_column: str, tgt_column: str) -> Iterator[dict[str, str]]:
    """Pairs from a JSON-lines file, one object per line; blank lines are skipped."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TextFileError(
                f"{path}:{number}: invalid JSON ({error.msg}); fix the line"
            ) from None
        missing = [c for c in (src_column, tgt_column) if not isinstance(row, dict) or c not in row]
        if missing:
            available = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise TextFileError(
                f"{path}:{number}: no column {missing[0]!r}; the row has {available}; "
                "set data.src_column / data.tgt_column"
            )
        yield {"src": str(row[src_column]), "tgt": str(row[tgt_column])}


def header_columns(path: str | Path, kind: str) -> list[str] | None:
    """The columns a TSV (``kind="tsv"``) or JSON-lines file names on its first non-blank row,
    or None when it has none; a first JSON row that does not parse is a :class:`TextFileError`."""
    first = next((line for _, line in iter_lines(path) if line.strip()), None)
    if first is None:
        return None
    if kind == "tsv":
        return first.split("\t")
    try:
        row = json.loads(first)
    except json.JSONDecodeError as error:
        raise TextFileError(f"{path}: invalid JSON on the first row ({error.msg})") from None
    return list(row) if isinstance(row, dict) else []


# ---- cleaning filters: which training pairs to drop (data.clean) -----------------------------

CLEAN_FILTERS = ("identical", "control_chars", "non_letters", "length_ratio", "duplicate")
"""The cleaning filters in the order they are tried; a pair is counted under the first that
drops it (duplicates last: a pair is a duplicate of an earlier pair that was kept)."""

JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiners: spelling in Persian, Indic, emoji
# no Cn (unassigned): which characters are assigned depends on Python's Unicode version, and a
# new emoji is not junk
INVALID_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co"))
BYTE_ORDER_MARK = "\ufeff"  # at the start of a text: what an editor left on a file's first line
REPLACEMENT_CHARACTER = "\ufffd"


def has_invalid_chars(text: str) -> bool:
    """Whether ``text`` holds a character no sentence should: a control (Unicode category Cc,
    tab excepted), format (Cf, the zero-width joiner and non-joiner excepted, and a byte order
    mark that starts the text), surrogate (Cs) or private-use (Co) character, or U+FFFD (the
    trace of a bad decoding). Unassigned characters pass: Python's Unicode version decides them.
    """
    if REPLACEMENT_CHARACTER in text:
        return True
    text = text.removeprefix(BYTE_ORDER_MARK)
    if text.isprintable():  # the common case, in C: none of Cc, Cf, Cs, Co, Cn, Z* but " "
        return False
    return any(
        unicodedata.category(char) in INVALID_CATEGORIES and char != "\t" and char not in JOINERS
        for char in text
    )


def non_letter_share(text: str) -> float:
    """The share of ``text``'s non-whitespace characters that are not letters (Unicode L*)
    nor combining marks (M*, the vowel signs of Indic scripts): digits, punctuation, symbols;
    0.0 for a text of whitespace only."""
    visible = "".join(text.split())
    if not visible:
        return 0.0
    others = itertools.filterfalse(str.isalpha, visible)  # str.isalpha: the categories L*
    return sum(unicodedata.category(char)[0] != "M" for char in others) / len(visible)


def length_ratio_exceeded(src: str, tgt: str, max_ratio: float) -> bool:
    """Whether the longer side has more than ``max_ratio`` times the whitespace-separated words
    of the shorter side (Moses' clean-corpus-n.perl counts the same way)."""
    src_words, tgt_words = len(src.split()), len(tgt.split())
    return max(src_words, tgt_words) > max_ratio * min(src_words, tgt_words)


def rejecting_filter(
    src: str,
    tgt: str,
    *,
    drop_identical: bool = False,
    drop_control_chars: bool = False,
    max_non_letter_share: float | None = None,
    max_length_ratio: float | None = None,
) -> str | None:
    """The name (from :data:`CLEAN_FILTERS`) of the first enabled filter that drops the pair,
    or None to keep it. Identical means equal once surrounding whitespace is stripped; the
    duplicate filter needs the whole corpus and is not applied here (see :func:`pair_hash`)."""
    if drop_identical and src.strip() == tgt.strip():
        return "identical"
    if drop_control_chars and (has_invalid_chars(src) or has_invalid_chars(tgt)):
        return "control_chars"
    if max_non_letter_share is not None and (
        max(non_letter_share(src), non_letter_share(tgt)) > max_non_letter_share
    ):
        return "non_letters"
    if max_length_ratio is not None and length_ratio_exceeded(src, tgt, max_length_ratio):
        return "length_ratio"
    return None


def pair_hash(src: str, tgt: str) -> int:
    """A 64-bit hash of the exact pair, to find duplicates without keeping the text (two
    different pairs collide with probability about n**2 / 2**65 in a corpus of n pairs); signed,
    to fit an int64 column."""
    src_bytes = src.encode("utf-8")
    digest = hashlib.blake2b(len(src_bytes).to_bytes(8, "little"), digest_size=8)
    digest.update(src_bytes)
    digest.update(tgt.encode("utf-8"))
    return int.from_bytes(digest.digest(), "little", signed=True)


def clean_marks(
    src: list[str], tgt: list[str], filters: dict[str, Any], hashed: bool
) -> dict[str, list[int]]:
    """For a batch of pairs: ``drop``, 1 + the index in :data:`CLEAN_FILTERS` of the filter
    that drops each pair (:func:`rejecting_filter` with ``filters``; 0: kept), and
    ``pair_hash``, its :func:`pair_hash` when ``hashed`` (else 0)."""
    pairs = list(zip(src, tgt, strict=True))
    reasons = [rejecting_filter(s, t, **filters) for s, t in pairs]
    return {
        "drop": [0 if reason is None else 1 + CLEAN_FILTERS.index(reason) for reason in reasons],
        "pair_hash": [pair_hash(s, t) if hashed else 0 for s, t in pairs],
    }


@dataclass(frozen=True)
class CleanReport:
    """How many pairs each cleaning filter dropped (see :data:`CLEAN_FILTERS`)."""

    identical: int = 0
    control_chars: int = 0
    non_letters: int = 0
    length_ratio: int = 0
    duplicate: int = 0

    @property
    def dropped(self) -> int:
        """Pairs dropped by all filters together."""
        return sum(getattr(self, name) for name in CLEAN_FILTERS)

    def __str__(self) -> str:
        return (
            f"{self.identical} identical, {self.duplicate} duplicate, {self.control_chars} with "
            f"invalid or control characters, {self.non_letters} over the non-letter share, "
            f"{self.length_ratio} over the length ratio"
        )
