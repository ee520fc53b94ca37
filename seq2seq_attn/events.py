"""What training reports: the counters a checkpoint carries, the start of a run, each step, each
validation and how the run ended, and the :class:`TrainCallback` hooks through which a face (the
CLI's progress bar, a test's recorder) receives them.

Standard library only, so that a face can depend on these names without importing the loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class Progress:
    """Counters that a checkpoint carries so that a resumed run continues exactly."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed sessions
    best_bleu: float | None = None
    best_step: int = 0
    bad_validations: int = 0  # validations since the best one (early stopping)
    last_validated: int = 0
    nonfinite_total: int = 0
    target_tokens: int = 0  # target positions trained on (EOS included), for throughput
    step_seconds: float = 0.0  # seconds inside optimisation steps (no validation or saving)


@dataclass
class RunInfo:
    """What the loop starts with (for a banner)."""

    run_dir: Path
    device: str
    precision: str
    num_parameters: int
    train_pairs: int
    start_step: int
    max_steps: int | None
    steps_per_epoch: int  # with accumulate_steps batches per step (for an ETA under max_epochs)
    init_from: str | None = None  # the trained model the run started from: "path (step N)"


@dataclass
class StepReport:
    """One optimisation step: per-token means over its target tokens."""

    step: int
    epoch: int  # 1-based epoch the step's batches came from
    loss: float  # label-smoothed
    perplexity: float  # exp of the per-token NLL
    lr: float
    tokens: int  # source + target tokens in the step
    tokens_per_second: float
    elapsed: float
    skipped: bool  # the loss or gradient was NaN/inf and no update was made
    grad_norm: float  # total gradient norm before clipping (NaN/inf on a skipped step)


class ReportedScore(Protocol):
    """One corpus score of a validation (:class:`seq2seq_attn.metrics.Score` is one)."""

    @property
    def name(self) -> str:
        """The metric as sacreBLEU names it (``BLEU``, ``chrF2``)."""
        ...

    @property
    def score(self) -> float:
        """The corpus score."""
        ...


@dataclass
class ValidationReport:
    """One validation on the dev split."""

    step: int
    loss: float
    perplexity: float
    scores: dict[str, ReportedScore]
    best_bleu: float
    is_best: bool
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (src, ref, hypothesis)
    # one fixed dev sentence's cross-attention for its greedy translation, as
    # translation.torch_backend.attention_record writes it (tokens, weights (T + 1, S + 1));
    # computed only when a callback's wants_attention is True
    attention: dict | None = None


@dataclass
class TrainSummary:
    """How a run ended; :func:`~seq2seq_attn.train.train` returns it and writes it to the run
    directory (read back with :func:`~seq2seq_attn.rundir.read_summary`).

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
    init_from: str | None = None  # the trained model the run started from: "path (step N)"

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


class TrainCallback:
    """Hooks the loop calls; subclass and override the ones you need (each does nothing here)."""

    # True: validations compute ValidationReport.attention (one dev sentence decoded again)
    wants_attention: bool = False

    def on_start(self, info: RunInfo) -> None:
        """Before the first step (after setup and resume)."""

    def on_step(self, report: StepReport) -> None:
        """After every optimisation step."""

    def on_validation(self, report: ValidationReport) -> None:
        """After every validation."""

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint file was written."""

    def on_end(self, summary: TrainSummary) -> None:
        """After the last checkpoint was written."""
