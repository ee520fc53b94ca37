"""``attn-train``: load and check the config, then train with live progress, a log file and
clean stops on Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..checkpoint import CheckpointError
from ..config import ConfigError, load_config
from ..data import DataError, disable_progress_bars
from ..distributed import DistributedError, environment_rank
from ..optim import NonFiniteLossError
from ..rundir import RunDirError, TrainSummary, check_new_run_dir
from ..train import (
    RunInfo,
    StepReport,
    TrainCallback,
    ValidationReport,
    train,
)
from .console import console, err_console, fail, logger, package_logging

train_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Train an attention-based translation model (RNN with attention or Transformer).",
)

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number


class StopOnSignal:
    """SIGINT/SIGTERM ask training to stop after the current step (it then saves ``last.pt``);
    a second signal interrupts at once (checkpoint writes are atomic, so nothing is corrupted)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in EXIT_SIGNAL:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        """First signal: set the stop flag. Second: raise KeyboardInterrupt now."""
        if self.event.is_set():
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        self.event.set()
        logger.warning(
            "%s: stopping after this step and saving last.pt (again to quit at once)",
            self.received.name,
        )


class LiveProgress(TrainCallback):
    """Rich progress bar with loss, perplexity, learning rate and tokens/s; a table per
    validation; a summary at the end."""

    def __init__(self, rich_console: Console, every: int) -> None:
        self.console, self.every = rich_console, max(every, 1)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.fields[total_text]}"),
            TextColumn("loss {task.fields[loss]} ppl {task.fields[ppl]} lr {task.fields[lr]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=rich_console,
            transient=False,
        )
        self.task = None
        self.window_tokens, self.window_start = 0, time.monotonic()

    def on_start(self, info: RunInfo) -> None:
        """Print the run's banner and start the bar."""
        self.console.print(
            f"[bold]{info.run_dir}[/]: {info.num_parameters:,} parameters, "
            f"{info.train_pairs:,} training pairs, device {info.device}, precision "
            f"{info.precision}, starting at step {info.start_step}"
        )
        self.progress.start()
        total = info.max_steps
        self.task = self.progress.add_task(
            "train", total=total, completed=info.start_step, epoch=1, loss="-", ppl="-",
            lr="-", speed="-", total_text=str(total) if total else "?",
        )  # fmt: skip
        self.window_start = time.monotonic()

    def on_step(self, report: StepReport) -> None:
        """Advance the bar; refresh the numbers every few steps."""
        self.window_tokens += report.tokens
        fields = {"completed": report.step, "epoch": report.epoch}
        if report.step % self.every == 0:
            now = time.monotonic()
            speed = self.window_tokens / max(now - self.window_start, 1e-9)
            self.window_tokens, self.window_start = 0, now
            fields |= {
                "loss": f"{report.loss:.3f}", "ppl": f"{report.perplexity:.2f}",
                "lr": f"{report.lr:.2e}", "speed": f"{speed:,.0f}",
            }  # fmt: skip
        self.progress.update(self.task, **fields)

    def on_validation(self, report: ValidationReport) -> None:
        """A table of the dev scores and a few sample translations."""
        table = Table(title=f"validation at step {report.step}", show_header=True)
        for column in ("dev loss", "perplexity", *report.scores, "best BLEU"):
            table.add_column(column, justify="right")
        scores = [f"{score.score:.2f}" for score in report.scores.values()]
        best = f"{report.best_bleu:.2f}" + (" (new)" if report.is_best else "")
        table.add_row(f"{report.loss:.3f}", f"{report.perplexity:.2f}", *scores, best)
        self.progress.console.print(table)
        for src, ref, hyp in report.samples:
            self.progress.console.print(
                f"  [dim]src[/] {src}\n  [dim]ref[/] {ref}\n  [dim]hyp[/] {hyp}", highlight=False
            )

    def on_end(self, summary: TrainSummary) -> None:
        """Stop the bar and print where the results are."""
        self.progress.stop()
        print_summary(self.console, summary)


class PlainProgress(TrainCallback):
    """One log line every ``every`` steps and per validation (for CI logs and pipes)."""

    def __init__(self, every: int) -> None:
        self.every = max(every, 1)
        self.window_tokens, self.window_start = 0, time.monotonic()

    def on_start(self, info: RunInfo) -> None:
        """Log the run's banner."""
        logger.info(
            "%s: %d parameters, %d training pairs, device %s, precision %s, from step %d",
            info.run_dir, info.num_parameters, info.train_pairs, info.device, info.precision,
            info.start_step,
        )  # fmt: skip

    def on_step(self, report: StepReport) -> None:
        """Log loss, perplexity, learning rate and tokens/s every few steps."""
        self.window_tokens += report.tokens
        if report.step % self.every == 0:
            now = time.monotonic()
            speed = self.window_tokens / max(now - self.window_start, 1e-9)
            self.window_tokens, self.window_start = 0, now
            logger.info(
                "epoch %d step %d: loss %.3f ppl %.2f lr %.2e %.0f tok/s",
                report.epoch, report.step, report.loss, report.perplexity, report.lr, speed,
            )  # fmt: skip

    def on_validation(self, report: ValidationReport) -> None:
        """Log the dev scores."""
        scores = " ".join(f"{name} {score.score:.2f}" for name, score in report.scores.items())
        logger.info(
            "validation at step %d: loss %.3f ppl %.2f %s (best BLEU %.2f%s)",
            report.step, report.loss, report.perplexity, scores, report.best_bleu,
            ", new best" if report.is_best else "",
        )  # fmt: skip

    def on_end(self, summary: TrainSummary) -> None:
        """Print where the results are."""
        print_summary(console, summary)


def print_summary(rich_console: Console, summary: TrainSummary) -> None:
    """The end-of-run summary: why it stopped, best BLEU and step, time, checkpoints."""
    best = "none"
    if summary.best_bleu is not None:
        best = f"{summary.best_bleu:.2f} at step {summary.best_step}"
    rich_console.print(
        f"stopped ({summary.reason}) at step {summary.step}, epoch {summary.epoch}, after "
        f"{summary.elapsed / 60:.1f} min; best dev BLEU {best}\n"
        f"last checkpoint: {summary.last_checkpoint}\n"
        f"best checkpoint: {summary.best_checkpoint or 'none (no validation yet)'}"
    )
    if summary.nonfinite_steps:
        rich_console.print(f"[yellow]{summary.nonfinite_steps} steps skipped for NaN/inf loss")
    if summary.reason == "max_minutes":
        rich_console.print(
            "[yellow]the time limit train.max_minutes ended this run: how far it got depends on "
            "the machine's speed (train.max_steps gives the same run everywhere)"
        )


@train_app.command()
def train_command(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG.yaml",
            help="YAML config with data, tokenizer, model, train and decode sections.",
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="SECTION.KEY=VALUE", help="Override a config value."),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Where checkpoints, logs and metrics go \\[default: runs/CONFIG-NAME]."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir from last.pt.")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda \\[default: the config's train.device].")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, bf16 or fp16 \\[default: the config's train.precision]."),
    ] = None,
) -> None:
    """Train a model from a YAML config; Ctrl-C stops cleanly and --resume continues."""
    settings = list(overrides or [])
    settings += [f"train.device={device}"] if device else []
    settings += [f"train.precision={precision}"] if precision else []
    try:
        loaded = load_config(config, settings)
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    run_dir = run_dir or Path("runs") / config.stem
    rank = environment_rank()  # under torchrun only rank 0 draws progress and writes train.log
    live = console.is_terminal and rank == 0
    disable_progress_bars()
    stopper = StopOnSignal()
    every = loaded.train.log_every or 50
    callback = LiveProgress(console, max(every // 10, 1)) if live else PlainProgress(every)
    try:
        with stopper:
            if not resume and rank == 0:
                check_new_run_dir(run_dir)
            log_file = run_dir / "train.log" if rank == 0 else None
            with package_logging(log_file, live, rank):
                summary = train(
                    loaded, run_dir, resume=resume, callbacks=[callback], stop=stopper.event
                )
    except (RunDirError, ConfigError) as error:
        raise fail(str(error), code=2) from None
    except (DataError, CheckpointError, NonFiniteLossError, DistributedError) as error:
        raise fail(str(error), code=1) from None
    except KeyboardInterrupt:
        hint = _resume_hint(config, run_dir)
        err_console.print(f"interrupted; resume from the last checkpoint with: {hint}")
        raise typer.Exit(code=130) from None
    if summary.reason == "stopped" and stopper.received is not None:
        if rank == 0:
            hint = _resume_hint(config, run_dir)
            err_console.print(f"stopped by {stopper.received.name}; resume with: {hint}")
        raise typer.Exit(code=EXIT_SIGNAL[stopper.received])


def _resume_hint(config: Path, run_dir: Path) -> str:
    """The command that continues this run."""
    return f"attn-train {config} --run-dir {run_dir} --resume"
