"""TensorBoard event files of a training run (``train.tensorboard``), written by a
:class:`~seq2seq_attn.events.TrainCallback` that :func:`~seq2seq_attn.train.train` attaches on
rank 0, into ``RUN_DIR/tensorboard/``:

- scalars ``train/loss``, ``train/perplexity``, ``train/lr``, ``train/tokens_per_second`` and
  ``train/grad_norm`` every ``train.log_every`` steps (the values ``metrics.jsonl`` holds), and
  ``dev/loss``, ``dev/perplexity``, ``dev/bleu``, ``dev/chrf`` per validation;
- the config as hyper-parameters (``section.key``), with the dev scores as their metrics;
- per validation, the first dev samples as a text table (``dev/samples``) and the heatmap of one
  fixed dev sentence's cross-attention for its greedy translation (``dev/attention``).

A resumed run continues the same curves: its writer purges whatever an earlier session logged
after the step it resumes from (a crash after the last checkpoint), so no step appears twice.

``torch.utils.tensorboard`` needs the ``tensorboard`` package and the heatmap needs matplotlib:
both come with ``pip install 'seq2seq-attn[tensorboard]'`` and are imported only when a run asks
for TensorBoard.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, to_plain
from .events import RunInfo, StepReport, TrainCallback, TrainSummary, ValidationReport
from .plotting import attention_figure
from .rundir import TENSORBOARD_DIR

EVENT_FILES = "events.out.tfevents.*"
DEV_METRICS = ("dev/bleu", "dev/chrf", "dev/loss", "dev/perplexity")  # the hparams' metrics
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|])")


def require_tensorboard() -> None:
    """Raise :class:`~seq2seq_attn.config.ConfigError` naming the fix when the packages that
    ``train.tensorboard`` needs (tensorboard, matplotlib) are not installed."""
    missing = [name for name in ("tensorboard", "matplotlib") if not importlib.util.find_spec(name)]
    if missing:
        raise ConfigError(
            f"train.tensorboard: true needs the {' and '.join(missing)} package(s): pip install "
            "'seq2seq-attn[tensorboard]' (make install includes it), or train without it "
            "(--no-tensorboard)"
        )


def flat_hparams(plain: dict, prefix: str = "") -> dict[str, float | str]:
    """A plain config as TensorBoard hyper-parameters: ``section.key`` names; numbers stay
    numbers, everything else (booleans, null, lists, strings) becomes its JSON text."""
    flat: dict[str, float | str] = {}
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_hparams(value, f"{name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def samples_markdown(samples: Sequence[tuple[str, str, str]]) -> str:
    """Validation samples as a Markdown table (source, reference, hypothesis), each text escaped
    so that it shows as written."""

    def cell(text: str) -> str:
        return MARKDOWN_SPECIAL.sub(r"\\\1", text) or " "

    rows = ["| source | reference | hypothesis |", "| --- | --- | --- |"]
    rows += [f"| {cell(src)} | {cell(ref)} | {cell(hyp)} |" for src, ref, hyp in samples]
    return "\n".join(rows)


class TensorBoardLog(TrainCallback):
    """Writes a run's TensorBoard events (see the module's docstring); one per run, on rank 0."""

    wants_attention = True  # for the heatmap

    def __init__(self, run_dir: Path, config: Config) -> None:
        require_tensorboard()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.hparams = flat_hparams(to_plain(config))
        self.log_every = config.train.log_every
        self.writer = None  # opened by on_start, when the step the run starts from is known

    def use_config(self, config: Config) -> None:
        """Record ``config`` as the hyper-parameters: the config the run resolved (a run started
        from a trained model uses that model's tokenizer section), not the one it was given."""
        self.hparams = flat_hparams(to_plain(config))

    def on_start(self, info: RunInfo) -> None:
        """Open the writer; a resumed run purges events logged after its start step, a new one
        records the config as hyper-parameters."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        first_session = not any(self.log_dir.glob(EVENT_FILES))
        # purge_step 0 on a new run too: every event loader then reads a resume's session
        # start as a restart and hides what a crashed session logged after it
        purge_step = info.start_step + 1 if info.start_step else 0
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        if first_session:
            for summary in hparams(self.hparams, dict.fromkeys(DEV_METRICS, 0.0)):
                self.writer.file_writer.add_summary(summary)

    def on_step(self, report: StepReport) -> None:
        """The training scalars, every ``train.log_every`` steps."""
        if not self.log_every or report.step % self.log_every:
            return
        scalars = {
            "loss": report.loss,
            "perplexity": report.perplexity,
            "lr": report.lr,
            "tokens_per_second": report.tokens_per_second,
            "grad_norm": report.grad_norm,
        }
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, report.step)

    def on_validation(self, report: ValidationReport) -> None:
        """Dev scalars, the samples and the attention heatmap of one validation."""
        step = report.step
        self.writer.add_scalar("dev/loss", report.loss, step)
        self.writer.add_scalar("dev/perplexity", report.perplexity, step)
        for name, score in report.scores.items():
            self.writer.add_scalar(f"dev/{name}", score.score, step)
        if report.samples:
            self.writer.add_text("dev/samples", samples_markdown(report.samples), step)
        if report.attention is not None:
            figure = attention_figure(report.attention, title_prefix=f"step {step}, dev ")
            self.writer.add_figure("dev/attention", figure, step)  # closes the figure
        self.writer.flush()

    def on_checkpoint(self, path: Path) -> None:
        """Flush, so that the events on disk reach at least the checkpoint a resume starts at."""
        self.writer.flush()

    def on_end(self, summary: TrainSummary) -> None:
        """Close the event file."""
        self.writer.close()
