"""``attn-train``: load and check the config, then train with live progress, a log file and
clean stops on Ctrl-C / SIGTERM.

What only training needs (HF datasets, the training loop) is imported when the command runs,
so ``attn-train --help`` and config errors answer quickly.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from ..checkpoint import CheckpointError
from ..config import ConfigError, load_config
from ..distributed import environment_rank
from ..rundir import LOG_FILE, RunDirError, check_new_run_dir
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
    init_from: Annotated[
        Path | None,
        typer.Option(
            metavar="CHECKPOINT|RUN_DIR",
            help="Start a new run from a trained model (fine-tuning): its weights and "
            "tokenizer, a fresh optimizer, schedule and step count. The config's model section "
            "must describe that model (dropout may differ); a run directory means its best.pt.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda \\[default: the config's train.device].")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, bf16 or fp16 \\[default: the config's train.precision]."),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Write TensorBoard events into RUN_DIR/tensorboard/ (needs "
            "'seq2seq-attn\\[tensorboard]') \\[default: the config's train.tensorboard].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a model from a YAML config; Ctrl-C stops cleanly and --resume continues."""
    settings = list(overrides or [])
    settings += [f"train.device={device}"] if device else []
    settings += [f"train.precision={precision}"] if precision else []
    settings += [] if tensorboard is None else [f"train.tensorboard={str(tensorboard).lower()}"]
    try:
        loaded = load_config(config, settings)
    except ConfigError as error:
        raise fail(str(error), code=2) from None
    run_dir = run_dir or Path("runs") / config.stem
    from ..data import DataError, disable_progress_bars
    from ..distributed import DistributedError
    from ..optim import NonFiniteLossError
    from ..train import train
    from .progress import LiveProgress, PlainProgress

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
            log_file = run_dir / LOG_FILE if rank == 0 else None
            with package_logging(log_file, live, rank):
                summary = train(
                    loaded, run_dir, resume=resume, init_from=init_from, callbacks=[callback],
                    stop=stopper.event,
                )  # fmt: skip
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
