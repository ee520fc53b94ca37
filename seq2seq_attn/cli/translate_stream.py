"""How ``attn-translate`` reads and writes as it goes: input lines in chunks (a chunk ends early
when a pipe has nothing more ready, so a slow producer's lines are translated as they come),
and output files opened before any work (a wrong path fails first), each written chunk by chunk
and flushed, a regular file whole or not at all."""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import typer

from ..corpus import TextFileError, decode_lines
from ..fileio import open_atomic
from .console import fail

CHUNK_LINES = 1000
"""Input lines translated together at most: the memory bound, and how much output waits for one
search call (tests lower it to exercise several chunks)."""
READ_BLOCK = 1 << 16  # bytes asked for per read
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left


@contextlib.contextmanager
def open_input(path: Path | None) -> Iterator[IO[bytes]]:
    """The binary input: ``path``, or stdin when None (left open); a file that cannot be
    opened exits 2 naming it."""
    if path is None:
        yield sys.stdin.buffer
        return
    try:
        handle = path.open("rb")
    except OSError as error:
        raise fail(f"{path}: cannot read ({error.strerror})", code=2) from None
    with handle:
        yield handle


def line_chunks(handle: IO[bytes], origin: str) -> Iterator[list[str]]:
    """The lines of ``handle`` (the line rule of :func:`~seq2seq_attn.corpus.decode_lines`), at
    most :data:`CHUNK_LINES` at a time, read as they are needed. A chunk also ends, once it holds
    a line, when no more input is ready right now (a pipe or a terminal waiting for its
    producer). Invalid UTF-8 exits 1 naming ``origin`` and the line's number in the whole
    input; a read error exits 2."""
    buffer, first, at_end = bytearray(), 1, False
    while buffer or not at_end:
        end, whole_lines = _line_ends(buffer, CHUNK_LINES)
        if at_end and whole_lines < CHUNK_LINES:
            end = len(buffer)  # the rest, a last line without a line end included
        if end and (whole_lines == CHUNK_LINES or at_end or not _more_ready(handle)):
            try:
                lines = decode_lines(bytes(buffer[:end]), origin, first)
            except TextFileError as error:
                raise fail(str(error), code=1) from None
            del buffer[:end]
            first += len(lines)
            yield lines
            continue
        data = _read_some(handle, origin)
        at_end = not data
        buffer += data


def _line_ends(buffer: bytearray, limit: int) -> tuple[int, int]:
    """``(end, count)``: the offset just past the ``count``-th line end of ``buffer``, for the
    first ``limit`` line ends at most (``(0, 0)`` without one)."""
    end, count = 0, 0
    while count < limit:
        found = buffer.find(b"\n", end)
        if found == -1:
            break
        end, count = found + 1, count + 1
    return end, count


def _more_ready(handle: IO[bytes]) -> bool:
    """Whether reading ``handle`` now returns without waiting: always for a stream without a
    file descriptor (in memory), else what ``select`` says with a zero timeout (a regular
    file is always ready)."""
    try:
        descriptor = handle.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return True
    ready, _, _ = select.select([descriptor], [], [], 0)
    return bool(ready)


def _read_some(handle: IO[bytes], origin: str) -> bytes:
    """What one read of ``handle`` gives (``b""``: the end); ``read1`` empties a buffered
    reader's buffer, so ``select`` on its descriptor tells the truth afterwards."""
    try:
        if isinstance(handle, io.BufferedIOBase):
            return handle.read1(READ_BLOCK)
        return handle.read(READ_BLOCK)
    except OSError as error:
        raise fail(f"{origin}: cannot read ({error.strerror})", code=2) from None


def cannot_write(path: Path | str, error: OSError) -> typer.Exit:
    """The one-line exit 1 for an output that cannot be written."""
    return fail(f"{path}: cannot write ({error.strerror or error})", code=1)


class OutputFile:
    """A file written as the translation goes, opened when created so that a wrong path (a
    missing or read-only folder, a folder) fails before any work. A regular file is written
    whole or not at all (:func:`~seq2seq_attn.fileio.open_atomic`: its temporary is renamed
    over ``path`` when the ``with`` block ends without an error, deleted otherwise); a pipe or
    device is written straight through. Every error exits 1 naming ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._atomic = open_atomic(path)
        try:
            self._handle = self._atomic.__enter__()
        except OSError as error:
            raise cannot_write(path, error) from None

    def write(self, text: str) -> None:
        """Write ``text`` as UTF-8 and flush it."""
        try:
            self._handle.write(text.encode("utf-8"))
            self._handle.flush()
        except OSError as error:
            raise cannot_write(self.path, error) from None

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool:
        try:
            return bool(self._atomic.__exit__(kind, error, trace))
        except OSError as failure:  # the final flush, fsync or rename (the block's own error
            raise cannot_write(self.path, failure) from None  # passes through unchanged)


class StandardOutput:
    """The translations on stdout, flushed after each chunk."""

    def write(self, text: str) -> None:
        """Write ``text`` and flush it. When the reader has gone (``| head``) translation
        stops quietly with status 141, as ``cat`` would (SIGPIPE); another error exits 1."""
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            raise typer.Exit(code=EXIT_BROKEN_PIPE) from None
        except OSError as error:
            raise cannot_write("stdout", error) from None


@dataclass(frozen=True)
class Outputs:
    """Where one run writes: the translations (a file, or stdout), and the alignments and
    the attention JSON when asked for (None: not asked)."""

    translations: OutputFile | StandardOutput
    alignments: OutputFile | None = None
    attention: OutputFile | None = None
