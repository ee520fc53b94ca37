"""A training run's directory: the name of every file in it, and reading back what training
wrote there (the summary of how the run ended, the metrics, the checkpoints by step).

Layout: ``config.yaml`` (the resolved config), the tokenizer's SentencePiece model(s) (named by
:mod:`seq2seq_attn.tokenizer`, the same in an exported folder), ``metrics.jsonl``, ``train.log``
(written by ``attn-train``), ``last.pt``, ``best.pt``, the last ``train.keep_last`` numbered
checkpoints ``step-00001234.pt``, the averaged checkpoints ``averaged-N.pt`` a benchmark may add,
the TensorBoard event files under ``tensorboard/`` (with ``train.tensorboard``), and
``summary.json``, written when a training session ends (a session stopped by a signal says
``stopped``: resume it) and removed when the run resumes, and the lock file ``.train.lock``.

A training holds the run directory's lock (:func:`locked_run_dir`, ``.train.lock``) for as long
as it runs: a second training of the same folder fails at once, naming the holder. What a run
that failed before its first ``last.pt`` left is set aside under ``failed-starts/`` when the
run starts again with ``resume="auto"`` (:func:`settle_resume`), and the temporaries of writes
that a kill cut short are swept when a run starts or resumes (:func:`sweep_temporaries`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .events import TrainSummary
from .fileio import temporary_target, write_atomic, write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
LAST_FILE = "last.pt"  # the newest checkpoint: what a run resumes from
BEST_FILE = "best.pt"  # the checkpoint of the best dev BLEU so far
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files (train.tensorboard)
STEP_PREFIX, CHECKPOINT_SUFFIX = "step-", ".pt"
STEP_PATTERN = f"{STEP_PREFIX}*{CHECKPOINT_SUFFIX}"  # the numbered checkpoints (kept keep_last)
LOCK_FILE = ".train.lock"  # locked by the training using the folder; says who that is
FAILED_STARTS_DIR = "failed-starts"  # what runs that failed before their first last.pt left
AUTO = "auto"  # resume="auto": resume when there is a last.pt, else start the run
# the files training writes atomically (their temporaries are swept), tokenizer models included
OWN_FILE_PATTERNS = (
    CONFIG_FILE, METRICS_FILE, LAST_FILE, BEST_FILE, SUMMARY_FILE, STEP_PATTERN,
    f"averaged-*{CHECKPOINT_SUFFIX}", "*.model",
)  # fmt: skip


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (non-empty without resume, or no last.pt)."""


def step_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Where the numbered checkpoint of ``step`` lives (``step-00001234.pt``)."""
    return Path(run_dir) / f"{STEP_PREFIX}{step:08d}{CHECKPOINT_SUFFIX}"


def averaged_checkpoint(run_dir: str | Path, count: int) -> Path:
    """Where the mean of the run's last ``count`` checkpoints lives (``averaged-4.pt``)."""
    return Path(run_dir) / f"averaged-{count}{CHECKPOINT_SUFFIX}"


def numbered_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """The run's ``step-*.pt`` checkpoints by step, oldest first."""
    found = {}
    for path in Path(run_dir).glob(STEP_PATTERN):
        with contextlib.suppress(ValueError):  # a stray file such as step-final.pt
            found[int(path.stem.removeprefix(STEP_PREFIX))] = path
    return dict(sorted(found.items()))


def number_last(run_dir: Path, step: int, keep: int) -> Path:
    """Give ``last.pt`` (just saved at ``step``) its numbered name too, then delete all but the
    ``keep`` newest numbered checkpoints. The numbered file is a hard link of ``last.pt`` (a
    copy where the filesystem has none), so the two cost the disk space of one and disk use
    peaks one checkpoint (the temporary of the next save) above the steady state."""
    numbered = step_checkpoint(run_dir, step)
    numbered.unlink(missing_ok=True)
    try:
        os.link(run_dir / LAST_FILE, numbered)
    except OSError:  # no hard links here (FAT, some network filesystems)
        write_atomic(numbered, (run_dir / LAST_FILE).read_bytes())
    prune_numbered(run_dir, keep)
    return numbered


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*.pt`` checkpoints."""
    numbered = list(numbered_checkpoints(run_dir).values())
    for path in numbered[: max(0, len(numbered) - keep)]:
        path.unlink()


def check_run_dir(run_dir: Path, resume: bool | str) -> None:
    """What can be said of ``run_dir`` before taking its lock (which creates the folder and a
    lock file): a new run needs an empty folder, ``resume=True`` a ``last.pt`` (``"auto"``
    takes either); a folder another training holds is refused naming it."""
    if holder := lock_holder(run_dir):
        raise RunDirError(_in_use(run_dir, holder))
    if resume == AUTO:
        check_folder(run_dir)
        if not (run_dir / LAST_FILE).is_file():
            check_only_training_files(run_dir)
    elif resume:
        prepare_run_dir(run_dir, True)
    else:
        check_new_run_dir(run_dir)


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create ``run_dir`` for a new run (refusing a non-empty one), or check that it has a
    ``last.pt`` to resume from."""
    check_folder(run_dir)
    if resume:
        if not (run_dir / LAST_FILE).is_file():
            raise RunDirError(
                f"{run_dir / LAST_FILE}: nothing to resume; start without --resume to begin a "
                "new run there (--auto-resume does either, setting aside what a failed start "
                "left)"
            )
        return
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_folder(run_dir: Path) -> None:
    """Refuse a ``run_dir`` that exists and is not a folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: not a folder; --run-dir names the folder a run writes into: choose "
            "another path"
        )


def leftovers(run_dir: Path) -> list[Path]:
    """What ``run_dir`` holds but its lock and the runs set aside there: files that make it a
    run directory in use."""
    if not run_dir.is_dir():
        return []
    own = (LOCK_FILE, FAILED_STARTS_DIR)
    return sorted(path for path in run_dir.iterdir() if path.name not in own)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a non-empty ``run_dir`` (nothing there is ever overwritten)."""
    check_folder(run_dir)
    if found := leftovers(run_dir):
        found = ", ".join(path.name for path in found[:5])
        raise RunDirError(
            f"{run_dir}: the run directory is not empty ({found}); pass --resume to continue "
            "that run, or choose another --run-dir"
        )


def settle_resume(run_dir: Path, resume: bool | str, is_main: bool = True) -> bool:
    """Whether the run resumes: ``resume`` as given, or for ``"auto"`` whether ``run_dir`` has
    a ``last.pt``. On ``is_main`` (rank 0, holding the lock), an ``"auto"`` run that starts
    anew first sets aside what a failed start left (under ``failed-starts/``), so that the
    same command serves every start of a requeued job."""
    if resume != AUTO:
        if not isinstance(resume, bool):
            raise RunDirError(f"resume={resume!r}: use True, False or {AUTO!r}")
        return resume
    check_folder(run_dir)
    if (run_dir / LAST_FILE).is_file():
        return True
    if is_main and (found := leftovers(run_dir)):
        check_only_training_files(run_dir)
        aside = run_dir / FAILED_STARTS_DIR / time.strftime("%Y%m%d-%H%M%S")
        while aside.exists():  # two failed starts within a second
            aside = aside.with_name(aside.name + "+")
        aside.mkdir(parents=True)
        for path in found:
            path.rename(aside / path.name)
        logger.warning(
            "%s: no %s to resume from; what an earlier start left (%s) is set aside in %s",
            run_dir, LAST_FILE, ", ".join(path.name for path in found[:5]), aside,
        )  # fmt: skip
    return False


def check_only_training_files(run_dir: Path) -> None:
    """Refuse to set aside a folder holding files no training wrote (a project folder given as
    ``--run-dir`` by mistake)."""
    names = [path.name for path in leftovers(run_dir)]
    if foreign := [name for name in names if not _written_by_training(name)]:
        raise RunDirError(
            f"{run_dir}: no {LAST_FILE} to resume from, and files no training wrote are there "
            f"({', '.join(foreign[:5])}); --auto-resume sets aside only what a failed start "
            "left: choose another --run-dir"
        )


def sweep_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporaries that writes of a killed run left in ``run_dir`` (``.last.pt.
    k2j4x_9a.tmp``: only those of the run's own files); returns their names."""
    swept = []
    for path in run_dir.iterdir() if run_dir.is_dir() else []:
        target = temporary_target(path.name)
        if target is not None and path.is_file() and _own_file(target):
            path.unlink()
            swept.append(path.name)
    if swept:
        logger.info("%s: removed %d unfinished write(s): %s", run_dir, len(swept), ", ".join(swept))
    return swept


def _written_by_training(name: str) -> bool:
    """Whether ``name`` in a run directory is something training writes (a temporary of one
    included)."""
    return name in (LOG_FILE, TENSORBOARD_DIR) or _own_file(temporary_target(name) or name)


def _own_file(name: str) -> bool:
    """Whether ``name`` is a file training writes into a run directory."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_FILE_PATTERNS)


# ---- the lock --------------------------------------------------------------------------------

_HELD_LOCKS: dict[Path, int] = {}  # run directory -> the lock file's descriptor, in this process


def _close_locks_in_child() -> None:
    """A forked child (a DataLoader worker) drops its copies of the lock descriptors, so that
    the lock goes with the process that took it."""
    for descriptor in _HELD_LOCKS.values():
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock while the block runs (creating the folder): an OS lock
    (``flock``) that a killed process releases. Taken again by the process holding it, it is a
    no-op. Raises :class:`RunDirError` naming the holder (pid, host, since when) when another
    process has it. A folder it created that holds nothing else when the block ends (a run
    refused before it wrote anything) is removed again."""
    check_folder(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        yield
        return
    descriptor = _take_lock(run_dir)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {since}"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (holder + "\n").encode("utf-8"), 0)
    _HELD_LOCKS[key] = descriptor
    try:
        yield
    finally:
        if _HELD_LOCKS.pop(key, None) is not None:
            if created and not leftovers(run_dir) and not (run_dir / FAILED_STARTS_DIR).exists():
                (run_dir / LOCK_FILE).unlink()  # a waiting process then locks a new file
                with contextlib.suppress(OSError):  # unless something appeared meanwhile
                    run_dir.rmdir()
            os.close(descriptor)  # releases the lock


def _take_lock(run_dir: Path) -> int:
    """The descriptor of ``run_dir``'s lock file, locked; when the file locked turns out to
    have been removed by the previous holder as it let go, the new one is locked instead."""
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 1024, 0).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise RunDirError(_in_use(run_dir, holder)) from None
        except OSError as error:  # a filesystem without locks
            logger.warning(
                "%s: cannot lock the run directory (%s); make sure no other training uses it",
                run_dir, error.strerror,
            )  # fmt: skip
            return descriptor
        if _same_file(descriptor, path):
            return descriptor
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock (``pid 123 on HOST since ...``), or None when no other
    process does."""
    if run_dir.resolve() in _HELD_LOCKS:
        return None
    try:
        descriptor = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(descriptor, 1024, 0).decode("utf-8", "replace").strip() or "unknown"
    except OSError:  # a filesystem without locks
        return None
    finally:
        os.close(descriptor)  # releases the shared lock just taken, if it was
    return None


def _in_use(run_dir: Path, holder: str) -> str:
    """The message for a run directory another training holds."""
    return (
        f"{run_dir}: another training is using this run directory ({holder or 'unknown'}); "
        "wait for it to end or stop it, or choose another --run-dir"
    )


def write_config(run_dir: Path, yaml_text: str) -> None:
    """Write the run's resolved config (``config.yaml``, atomically)."""
    write_text_atomic(run_dir / CONFIG_FILE, yaml_text)


# ---- the summary -----------------------------------------------------------------------------


def write_summary(run_dir: Path, summary: TrainSummary) -> None:
    """Write ``summary.json`` into ``run_dir`` (atomically)."""
    write_text_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(summary.to_plain(), indent=2) + "\n")


def read_summary(run_dir: str | Path) -> TrainSummary:
    """The :class:`~seq2seq_attn.events.TrainSummary` that training wrote into ``run_dir`` when
    it ended.

    Raises :class:`RunDirError` when there is none (the run is unfinished: resume it) or it
    cannot be read.
    """
    path = Path(run_dir) / SUMMARY_FILE
    try:
        plain = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(
            f"{path}: no training summary; no training session of this run has ended (resume it "
            "with --resume)"
        ) from None
    except (OSError, ValueError) as error:
        raise RunDirError(
            f"{path}: cannot be read ({error}); resume the run to rewrite it"
        ) from None
    known = {item.name for item in dataclasses.fields(TrainSummary)}
    try:
        fields = {key: value for key, value in plain.items() if key in known}
        fields["last_checkpoint"] = Path(fields["last_checkpoint"])
        if fields.get("best_checkpoint") is not None:
            fields["best_checkpoint"] = Path(fields["best_checkpoint"])
        return TrainSummary(**fields)
    except (AttributeError, KeyError, TypeError) as error:
        raise RunDirError(
            f"{path}: not a training summary ({type(error).__name__}: {error}); resume the run "
            "to write it again"
        ) from None


def forget_summary(run_dir: Path) -> None:
    """Remove the summary of a run that resumes (logging how it had ended): ``summary.json``
    describes an ended run, and is written again when this session ends."""
    with contextlib.suppress(RunDirError):
        ended = read_summary(run_dir)
        logger.info(
            "the run had ended at step %d (%s); it goes on as far as this config's limits allow",
            ended.step, ended.reason,
        )  # fmt: skip
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)


# ---- the metrics -----------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one record as a JSON line to the run's ``metrics.jsonl``."""
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path, kind: str) -> list[dict]:
    """The records of one ``kind`` (``"train"`` or ``"valid"``) of a run's ``metrics.jsonl``, in
    order; a validation record has ``step``, ``elapsed`` (training seconds), ``loss`` and the
    scores. A line a crash cut short is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("kind") == kind:
                records.append(record)
    return records


def _logged_step(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line; None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop the run's metric lines logged after ``step`` (written after the checkpoint a run
    resumes) and any line a crash left unfinished."""
    path = run_dir / METRICS_FILE
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [
            line for line in lines if (logged := _logged_step(line)) is not None and logged <= step
        ]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
