"""Atomic writes: the one place every file (and every folder) the project writes goes through.

A write goes to a temporary file in the target's folder, is flushed and fsync'ed, renamed over
the target and the folder is fsync'ed, so a crash or a kill at any moment leaves the previous
file or the new one, never a partial file; :func:`write_folder_atomic` does the same for a
folder. Standard library only, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

FILE_MODE = 0o644  # temporary files are private (0600); what the project writes is plain data
TEMPORARY_SUFFIX = ".tmp"
# what tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") names a write's temporary file
TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX))


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
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
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


def temporary_target(name: str) -> str | None:
    """The file a temporary of :func:`write_atomic` named ``name`` was to replace (``last.pt``
    for ``.last.pt.k2j4x_9a.tmp``), or None when ``name`` is not such a temporary."""
    found = TEMPORARY_NAME.fullmatch(name)
    return None if found is None else found.group("target")


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


@contextlib.contextmanager
def write_folder_atomic(target: Path) -> Iterator[Path]:
    """A staging folder beside ``target`` to fill; when the block ends without an error it
    takes ``target``'s place (with the permissions a new folder gets), else it is deleted. An
    earlier ``target`` is set aside first and deleted only once the new one is in place, so a
    crash leaves the old folder or the new one, never a partial one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    """The process's file creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
