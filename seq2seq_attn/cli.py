"""Command-line entry points ``attn-train`` and ``attn-translate``.

The only module that imports typer and rich; commands are thin and hand off to library code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err_console = Console(stderr=True)

train_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Train an attention-based translation model (RNN with attention or Transformer).",
)
translate_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Translate with a trained checkpoint (greedy or beam search) and score the output.",
)


def _not_implemented(command: str) -> None:
    """Tell the user a command is not built yet and exit with status 1."""
    err_console.print(f"[bold red]{command}: not implemented yet[/] (see the project's issues)")
    raise typer.Exit(code=1)


@train_app.command()
def train(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG.yaml",
            help="YAML config with data, tokenizer, model, train and decode sections.",
        ),
    ],
) -> None:
    """Train a model from a YAML config."""
    _not_implemented("attn-train")


@translate_app.command()
def translate(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A .pt checkpoint or a run directory.")
    ],
) -> None:
    """Translate text with a trained checkpoint."""
    _not_implemented("attn-translate")
