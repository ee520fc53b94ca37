"""``attn-export``: write a CTranslate2 model folder for a Transformer checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..checkpoint import CheckpointError
from ..export import QUANTIZATIONS, ExportError, export_checkpoint
from .console import console, fail

export_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Export a Transformer checkpoint to CTranslate2 (optionally quantized to int8).",
)


@export_app.command()
def export_command(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A .pt checkpoint or a run directory.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The model folder to write (new or empty; see --force). A symbolic link is "
            "followed: the folder it points to is written, the link stays.",
        ),
    ],
    quantization: Annotated[
        str,
        typer.Option(
            help=f"Weight type in the folder: {', '.join(QUANTIZATIONS)} (none = float32)."
        ),
    ] = "none",
    force: Annotated[
        bool,
        typer.Option(
            help="Replace an earlier attn-export in OUTPUT: its files (model.bin, config.json, "
            "vocabularies, src/tgt.model, seq2seq_attn.json) are replaced; every other file in "
            "the folder is kept."
        ),
    ] = False,
) -> None:
    """Write a CTranslate2 model folder: model.bin and vocabularies, the SentencePiece
    model(s) and seq2seq_attn.json (the checkpoint's decode settings).

    Translate with it by `attn-translate FOLDER`, or with plain ctranslate2 + sentencepiece.
    RNN checkpoints cannot be exported (CTranslate2 has no RNN decoder).
    """
    try:
        written = export_checkpoint(checkpoint, output, quantization, force)
    except ExportError as error:
        raise fail(str(error), code=2) from None
    except CheckpointError as error:
        raise fail(str(error), code=2 if not checkpoint.exists() else 1) from None
    except OSError as error:  # strerror is None for some (shutil's, for one)
        reason = error.strerror or str(error)
        where = f": {error.filename}" if error.filename and error.strerror else ""
        raise fail(f"{output}: cannot write ({reason}{where})", code=1) from None
    console.print(f"wrote {written} ({quantization})", highlight=False)
