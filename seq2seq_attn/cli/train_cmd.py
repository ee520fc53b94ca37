"""``attn-train``: load and check the config, then train with live progress, a log file and
clean stops on Ctrl-C / SIGTERM.

What only training needs (HF datasets, the training loop) is imported when the command runs,
so ``attn-train --help`` and config errors answer quickly.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from ..checkpoint import CheckpointError
from ..config import ConfigError, load_config
from ..distributed import environment_rank
from ..rundir import (
    AUTO,
    LAST_FILE,
    LOG_FILE,
    RunDirError,
    check_new_run_dir,
    check_run_dir,
    locked_run_dir,
    settle_resume,
)
from ..stop_signals import StopOnSignal
from .console import console, err_console, fail, package_logging

train_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Train an attention-based translation model (RNN with attention or Transformer).",
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
    auto_resume: Annotated[
        bool,
        typer.Option(
            help="Resume when --run-dir has a last.pt, else start the run there (setting aside "
            "what a failed start left, in failed-starts/): one command for every start of a "
            "requeued job (torchrun --max-restarts, Slurm --requeue).",
        ),
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
    from ..train import CheckpointWriteError, train
    from .progress import LiveProgress, PlainProgress

    rank = environment_rank()  # under torchrun only rank 0 draws progress and writes train.log
    live = console.is_terminal and rank == 0
    disable_progress_bars()
    logging.raiseExceptions = False  # a log write that fails (a full disk) must not print a trace
    stopper = StopOnSignal(then_ignore=True)  # duplicates arriving as it exits change nothing
    every = loaded.train.log_every or 50
    callback = LiveProgress(console, max(every // 10, 1)) if live else PlainProgress(every)
    try:
        with stopper:
            mode = AUTO if auto_resume else resume
            if rank == 0:
                check_run_dir(run_dir, mode)  # before the lock: a refused folder gets no lock
            with locked_run_dir(run_dir) if rank == 0 else contextlib.nullcontext():
                resumes = settle_resume(run_dir, mode, rank == 0)
                if rank == 0 and not resumes:
                    check_new_run_dir(run_dir)
                log_file = run_dir / LOG_FILE if rank == 0 else None
                with package_logging(log_file, live, rank):
                    summary = train(
                        loaded, run_dir, resume=resumes, init_from=init_from,
                        callbacks=[callback], stop=stopper.event,
                    )  # fmt: skip
    except (RunDirError, ConfigError) as error:
        raise fail(str(error), code=2) from None
    except (
        DataError, CheckpointError, CheckpointWriteError, NonFiniteLossError, DistributedError
    ) as error:  # fmt: skip
        raise fail(str(error), code=1) from None
    except OSError as error:  # a full disk or a folder that became unwritable
        raise fail(_os_failure(error, run_dir), code=1) from None
    except KeyboardInterrupt:
        hint = _resume_hint(config, run_dir)
        err_console.print(f"interrupted; resume from the last checkpoint with: {hint}")
        raise typer.Exit(code=130) from None
    if summary.reason == "stopped" and stopper.received is not None:
        if rank == 0:
            hint = _resume_hint(config, run_dir)
            err_console.print(f"stopped by {stopper.received.name}; resume with: {hint}")
        raise typer.Exit(code=stopper.exit_code)


def _os_failure(error: OSError, run_dir: Path) -> str:
    """One line for a file that could not be written or read, saying what is safe on disk."""
    where, reason = error.filename or run_dir, error.strerror or error
    if (run_dir / LAST_FILE).is_file():
        return (
            f"{where}: {reason}; the checkpoints written before are intact "
            f"({run_dir / LAST_FILE}): fix this and resume the run"
        )
    return f"{where}: {reason}; no checkpoint was written yet: fix this and start again"


def _resume_hint(config: Path, run_dir: Path) -> str:
    """The command that continues this run (or starts it again, before its first last.pt)."""
    resume = "--resume" if (run_dir / LAST_FILE).is_file() else "--auto-resume"
    return f"attn-train {config} --run-dir {run_dir} {resume}"
