"""A training run's directory: its files, and reading back what :func:`~seq2seq_attn.train.train`
wrote there (the summary of how the run ended, the metrics, the checkpoints by step).

Layout: ``config.yaml`` (the resolved config), the SentencePiece model(s), ``metrics.jsonl``,
``last.pt``, ``best.pt``, the last ``train.keep_last`` ``step-*.pt`` and ``summary.json``, written
when a training session ends (a session stopped by a signal says ``stopped``: resume it) and
removed when the run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import load_checkpoint
from .fileio import write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, LAST_FILE, BEST_FILE, SUMMARY_FILE = (
    "config.yaml",
    "metrics.jsonl",
    "last.pt",
    "best.pt",
    "summary.json",
)
NUMBERED_PATTERN = "step-*.pt"  # step-00001234.pt: the checkpoint of one step, kept keep_last


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (non-empty without resume, or no last.pt)."""


@dataclass
class TrainSummary:
    """How a run ended; :func:`train` returns it and writes it to the run directory's
    ``summary.json`` (read back with :func:`read_summary`).

    ``reason`` is ``max_steps`` (the step budget), ``max_epochs``, ``max_minutes`` (the
    wall-clock guard: the one machine-dependent stop), ``early_stopping``, or ``stopped`` by a
    signal or the stop flag (resume to go on). Times are summed over resumed sessions.
    """

    step: int
    epoch: int
    reason: str
    elapsed: float  # seconds of training, validation and saving included
    best_bleu: float | None
    best_step: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    nonfinite_steps: int
    num_parameters: int = 0
    device: str = ""
    precision: str = ""  # the autocast it trained in: fp32, bf16 or fp16
    target_tokens: int = 0  # target positions trained on
    step_seconds: float = 0.0  # seconds inside optimisation steps

    @property
    def target_tokens_per_second(self) -> float:
        """Training throughput: target tokens over the time spent in steps."""
        return self.target_tokens / self.step_seconds if self.step_seconds > 0 else 0.0

    def to_plain(self) -> dict:
        """The fields as JSON-ready plain data (paths as strings)."""
        plain = asdict(self)
        plain["last_checkpoint"] = str(self.last_checkpoint)
        plain["best_checkpoint"] = (
            None if self.best_checkpoint is None else str(self.best_checkpoint)
        )
        return plain


def read_summary(run_dir: str | Path) -> TrainSummary:
    """The :class:`TrainSummary` that :func:`train` wrote into ``run_dir`` when it ended.

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


def numbered_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """The run's ``step-*.pt`` checkpoints by step, oldest first."""
    found = {}
    for path in Path(run_dir).glob(NUMBERED_PATTERN):
        with contextlib.suppress(ValueError):  # a stray file such as step-final.pt
            found[int(path.stem.removeprefix("step-"))] = path
    return dict(sorted(found.items()))


def recent_checkpoints(run_dir: str | Path, count: int) -> dict[int, Path]:
    """The last ``count`` checkpoints of a run by step, oldest first (what checkpoint averaging
    averages): the numbered ones up to the step of ``last.pt`` (a kill between two saves can
    leave a newer one), then ``last.pt`` itself when no numbered checkpoint holds its step."""
    run_dir = Path(run_dir)
    last_step = int(load_checkpoint(run_dir / LAST_FILE)["progress"]["step"])
    recent = {
        step: path for step, path in numbered_checkpoints(run_dir).items() if step <= last_step
    }
    recent.setdefault(last_step, run_dir / LAST_FILE)
    return dict(list(recent.items())[-count:])


def write_summary(run_dir: Path, summary: TrainSummary) -> None:
    """Write ``summary.json`` into ``run_dir`` (atomically)."""
    write_text_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(summary.to_plain(), indent=2) + "\n")


def prepare_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """Create ``run_dir`` for a new run (refusing a non-empty one), or load its ``last.pt``."""
    if resume:
        if not (run_dir / LAST_FILE).is_file():
            raise RunDirError(
                f"{run_dir / LAST_FILE}: nothing to resume; start without --resume to begin a "
                "new run there"
            )
        return load_checkpoint(run_dir / LAST_FILE)
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse to start a new run in a non-empty ``run_dir`` (nothing there is ever overwritten)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        found = ", ".join(sorted(path.name for path in run_dir.iterdir())[:5])
        raise RunDirError(
            f"{run_dir}: the run directory is not empty ({found}); pass --resume to continue "
            "that run, or choose another --run-dir"
        )


def prune_numbered(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*.pt`` checkpoints."""
    numbered = list(numbered_checkpoints(run_dir).values())
    for path in numbered[: max(0, len(numbered) - keep)]:
        path.unlink()


def _logged_step(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line; None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (written after the checkpoint a run resumes)
    and any line a crash left unfinished."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [
            line for line in lines if (logged := _logged_step(line)) is not None and logged <= step
        ]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
