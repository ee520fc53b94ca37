"""Atomic file writes: the one helper that every file the project writes goes through.

A write goes to a temporary file in the target's folder, is flushed and fsync'ed, renamed over
the target and the folder is fsync'ed, so a crash or a kill at any moment leaves the previous
file or the new one, never a partial file. Standard library only, so every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

FILE_MODE = 0o644  # temporary files are private (0600); what the project writes is plain data


def write_atomic(path: str | Path, content: bytes | Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` (creating its folder) with ``content``: bytes, or a function that
    writes into the open binary file it is given (``lambda f: torch.save(state, f)``).

    A target that exists and is not a regular file (``/dev/stdout``, a named pipe) cannot be
    replaced and is written straight through instead.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        with path.open("wb") as handle:
            _write(handle, content)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _write(handle, content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _write(handle: IO[bytes], content: bytes | Callable[[IO[bytes]], object]) -> None:
    """Put ``content`` (bytes, or a function that writes them) into ``handle``."""
    if isinstance(content, bytes):
        handle.write(content)
    else:
        content(handle)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` of ``text`` encoded as UTF-8."""
    write_atomic(path, text.encode("utf-8"))


def fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory`` (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class TextFileError(ValueError):
    """A text input that cannot be read: the message names the file (and line) and the problem."""


def decode_lines(data: bytes, origin: str) -> list[str]:
    """UTF-8 ``data`` split into lines as sacreBLEU splits a file: on ``\\n``, a final line end
    closing the last line, a ``\\r`` before it dropped, blank lines kept. Invalid UTF-8 raises
    :class:`TextFileError` naming ``origin`` and the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TextFileError(f"{origin}:{line}: not valid UTF-8 ({error.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_lines(path: str | Path) -> list[str]:
    """The lines of the UTF-8 text file ``path`` (see :func:`decode_lines`); an unreadable file
    raises :class:`TextFileError` naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TextFileError(f"{path}: cannot read ({error.strerror})") from None
    return decode_lines(data, str(path))
