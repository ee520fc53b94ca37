"""A training run's directory: the name of every file in it, and reading back what training
wrote there (the summary of how the run ended, the metrics, the checkpoints by step).

Layout: ``config.yaml`` (the resolved config), the tokenizer's SentencePiece model(s) (named by
:mod:`seq2seq_attn.tokenizer`, the same in an exported folder), ``metrics.jsonl``, ``train.log``
(written by ``attn-train``), ``last.pt``, ``best.pt``, the last ``train.keep_last`` numbered
checkpoints ``step-00001234.pt``, the averaged checkpoints ``averaged-N.pt`` a benchmark may add,
the TensorBoard event files under ``tensorboard/`` (with ``train.tensorboard``), and
``summary.json``, written when a training session ends (a session stopped by a signal says
``stopped``: resume it) and removed when the run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

from .events import TrainSummary
from .fileio import write_text_atomic

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


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*.pt`` checkpoints."""
    numbered = list(numbered_checkpoints(run_dir).values())
    for path in numbered[: max(0, len(numbered) - keep)]:
        path.unlink()


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create ``run_dir`` for a new run (refusing a non-empty one), or check that it has a
    ``last.pt`` to resume from."""
    if resume:
        if not (run_dir / LAST_FILE).is_file():
            raise RunDirError(
                f"{run_dir / LAST_FILE}: nothing to resume; start without --resume to begin a "
                "new run there"
            )
        return
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a non-empty ``run_dir`` (nothing there is ever overwritten)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        found = ", ".join(sorted(path.name for path in run_dir.iterdir())[:5])
        raise RunDirError(
            f"{run_dir}: the run directory is not empty ({found}); pass --resume to continue "
            "that run, or choose another --run-dir"
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
