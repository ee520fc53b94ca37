"""How ``attn-train`` shows a run: a rich progress bar with validation tables on a terminal,
plain log lines elsewhere, and the summary at the end."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..events import RunInfo, StepReport, TrainCallback, TrainSummary, ValidationReport
from .console import console, logger


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
            + (f", the weights of {info.init_from}" if info.init_from else "")
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
            "%s: %d parameters, %d training pairs, device %s, precision %s, from step %d%s",
            info.run_dir, info.num_parameters, info.train_pairs, info.device, info.precision,
            info.start_step, f", the weights of {info.init_from}" if info.init_from else "",
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
        + (f"started from: {summary.init_from}\n" if summary.init_from else "")
        + f"last checkpoint: {summary.last_checkpoint}\n"
        f"best checkpoint: {summary.best_checkpoint or 'none (no validation yet)'}"
    )
    if summary.nonfinite_steps:
        rich_console.print(f"[yellow]{summary.nonfinite_steps} steps skipped for NaN/inf loss")
    if summary.reason == "max_minutes":
        rich_console.print(
            "[yellow]the time limit train.max_minutes ended this run: how far it got depends on "
            "the machine's speed (train.max_steps gives the same run everywhere)"
        )
