"""Atomic writes: the one place every file (and every folder) the project writes goes through.

A write goes to a temporary file in the target's folder, is flushed and fsync'ed, renamed over
the target and the folder is fsync'ed, so a crash or a kill at any moment leaves the previous
file or the new one, never a partial file; :func:`write_folder_atomic` does the same for a
folder, and :func:`replace_files_atomic` for the files a writer owns in a folder it shares
with others. Standard library only, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path) as handle:
        _write(handle, content)


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """``path`` open for writing bytes, whole or not at all: the block writes into a temporary
    file beside it (its folder must exist), which is flushed, fsync'ed and renamed over
    ``path`` when the block ends without an error, and deleted on any error.

    A target that exists and is not a regular file (``/dev/stdout``, a named pipe) cannot be
    replaced and is written straight through instead. Opening raises ``OSError`` (a missing
    or read-only folder, a folder as ``path``) before the block runs.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        with path.open("wb") as handle:
            yield handle
        return
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
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


STAGING_KINDS = ("new", "old")
"""The folders :func:`write_folder_atomic` and :func:`replace_files_atomic` keep beside a
``TARGET`` while they work, left behind only by a kill: ``.TARGET.new-XXXXXXXX`` (the new files
being written) and ``.TARGET.old-XXXXXXXX`` (what they replace, kept until the new files are in
place; same ``XXXXXXXX`` as its ``.new-`` twin). :func:`sweep_staging` clears them."""


@contextlib.contextmanager
def write_folder_atomic(target: Path) -> Iterator[Path]:
    """A staging folder beside ``target`` to fill; when the block ends without an error it
    takes ``target``'s place (with the permissions a new folder gets), else it is deleted. An
    earlier ``target`` is set aside first and deleted only once the new one is in place, so a
    crash leaves the old folder or the new one, never a partial one (after
    :func:`sweep_staging`). ``target`` must not be a symbolic link: resolve it first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_staging(target)
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            old = _staging_path(target, "old", _token(staging))
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def replace_files_atomic(folder: Path, owned: Collection[str]) -> Iterator[Path]:
    """A staging folder beside ``folder`` to fill with files; when the block ends without an
    error each of them replaces its namesake in ``folder``, and the ``owned`` names it did not
    write are removed: every other file in ``folder`` stays. A ``folder`` that does not exist
    yet is put in place whole (:func:`write_folder_atomic`).

    The files replaced stay (hard links) in ``.FOLDER.old-XXXXXXXX`` until every new file is in
    place and the staging folder is gone; an error puts them back, and so does
    :func:`sweep_staging` after a kill, so ``folder`` holds the old files or the new ones.
    ``folder`` must not be a symbolic link: resolve it first.
    """
    if not folder.exists():
        with write_folder_atomic(folder) as staging:
            yield staging
        return
    staging = _new_staging(folder)
    old = _staging_path(folder, "old", _token(staging))
    names = set(owned)
    try:
        yield staging
        written = {entry.name for entry in staging.iterdir()}
        names |= written
        _keep_aside(folder, names, old)
        for name in sorted(written):
            os.replace(staging / name, folder / name)
        for name in names - written:
            _remove_file(folder / name)
        fsync_directory(folder)
        staging.rmdir()  # the commit: an .old- folder without its .new- twin is obsolete
        fsync_directory(folder.parent)
    except BaseException:
        if old.is_dir():
            _restore_files(folder, old, names)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def sweep_staging(target: Path, owned: Collection[str] = ()) -> None:
    """Clear what a killed :func:`write_folder_atomic` or :func:`replace_files_atomic` left
    beside ``target`` (only folders named as :data:`STAGING_KINDS` says, for this ``target``).

    An ``.old-`` folder becomes ``target`` again when ``target`` is missing (killed between
    two renames); while its ``.new-`` twin remains (killed while replacing files) its files go
    back into ``target`` and the other ``owned`` names there are removed; otherwise (killed
    once the new files were in place) it is deleted. Every ``.new-`` folder is deleted.
    """
    new, old = _staging_folders(target, "new"), _staging_folders(target, "old")
    for token, kept in sorted(old.items()):
        if not target.exists() and not target.is_symlink():
            kept.rename(target)
            continue
        if token in new and target.is_dir():
            _restore_files(target, kept, owned)
        shutil.rmtree(kept)
    for staging in new.values():
        shutil.rmtree(staging)


def _staging_path(target: Path, kind: str, token: str) -> Path:
    """Where a ``kind`` (:data:`STAGING_KINDS`) folder of ``target`` is: ``.NAME.kind-token``."""
    return target.parent / f".{target.name}.{kind}-{token}"


def _new_staging(target: Path) -> Path:
    """A new, empty ``.NAME.new-XXXXXXXX`` folder beside ``target`` (private: 0700)."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))


def _token(staging: Path) -> str:
    """The random ``XXXXXXXX`` that ends a staging folder's name."""
    return staging.name.rsplit("-", 1)[1]


def _staging_folders(target: Path, kind: str) -> dict[str, Path]:
    """``token -> folder`` for the ``kind`` staging folders beside ``target`` (real folders
    only, never links)."""
    name = re.compile(re.escape(f".{target.name}.{kind}-") + r"(?P<token>[a-z0-9_]{8})")
    if not target.parent.is_dir():
        return {}
    found = {}
    for entry in target.parent.iterdir():
        match = name.fullmatch(entry.name)
        if match is not None and entry.is_dir() and not entry.is_symlink():
            found[match.group("token")] = entry
    return found


def _keep_aside(folder: Path, names: Collection[str], old: Path) -> None:
    """Hard-link (or copy) ``folder``'s files among ``names`` into a folder that becomes
    ``old`` once complete, so that an ``.old-`` folder always holds every one of them."""
    building = _new_staging(folder)
    try:
        for name in names:
            path = folder / name
            if path.is_symlink() or path.is_file():
                try:
                    os.link(path, building / name, follow_symlinks=False)
                except (OSError, NotImplementedError):  # a file system without hard links
                    shutil.copy2(path, building / name, follow_symlinks=False)
        building.rename(old)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _restore_files(folder: Path, old: Path, names: Collection[str]) -> None:
    """Undo an unfinished replacement: ``old``'s files back into ``folder`` and the other
    ``names`` (new files moved in) removed from it."""
    kept = {entry.name for entry in old.iterdir()}
    for name in kept:
        os.replace(old / name, folder / name)
    for name in set(names) - kept:
        _remove_file(folder / name)
    fsync_directory(folder)


def _remove_file(path: Path) -> None:
    """Delete ``path`` when it is a file or a link; a folder of that name is left alone."""
    if path.is_symlink() or path.is_file():
        path.unlink()


def _umask() -> int:
    """The process's file creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
