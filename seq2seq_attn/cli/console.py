"""What both commands share: the consoles, the package's log handlers, error exits."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
PrecisionOption = Annotated[
    str | None,
    typer.Option(
        help="Checkpoints: fp32, bf16, fp16 (CUDA), int8 (CPU: int8 linear layers) or auto "
        "\\[default: fp32]."
    ),
]
ComputeTypeOption = Annotated[
    str | None,
    typer.Option(
        help="Exported folders: CTranslate2's compute type (float32, int8, int8_float32, "
        "bfloat16...) \\[default: the exported one]."
    ),
]
"""The options that choose where and in which arithmetic a model runs (translate, score)."""

console = Console()
err_console = Console(stderr=True)
logger = logging.getLogger("seq2seq_attn")


@contextlib.contextmanager
def package_logging(log_file: Path | None, live: bool, rank: int = 0) -> Iterator[None]:
    """Send the package's logs to the console (rich on a terminal, plain otherwise) and to
    ``log_file`` while the block runs; the logger is restored afterwards. A distributed
    process other than rank 0 (``rank`` > 0) shows only warnings and errors, marked with its
    rank."""
    console_handler: logging.Handler
    if live:
        console_handler = RichHandler(console=err_console, show_path=False)
    else:
        marker = f"rank {rank} " if rank else ""
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(
            logging.Formatter(f"%(asctime)s {marker}%(levelname)s %(message)s")
        )
    handlers = [console_handler]
    if log_file is not None:
        # delay: the file appears with the first record, after training has checked that a
        # new run's directory is empty and created it.
        file_handler = logging.FileHandler(log_file, encoding="utf-8", delay=True)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        handlers.append(file_handler)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.setLevel(logging.WARNING if rank else logging.INFO)
    logger.propagate = False
    logger.handlers[:] = handlers
    try:
        yield
    finally:
        for handler in handlers:
            handler.close()
        logger.level, logger.propagate, logger.handlers[:] = saved


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as an error (as written: brackets are not markup) and return the exit
    to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=code)
