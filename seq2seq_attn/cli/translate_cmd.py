"""``attn-translate``: translate a file, a pipe or typed lines with a checkpoint; n-best lists,
sacreBLEU scores against references, and attention weights as JSON or a terminal heatmap."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from ..config import ConfigError
from ..decoding import Hypothesis
from ..evaluate import attention_matrix, search_options, translate_n_best
from ..metrics import Score, corpus_scores
from ..models import Seq2Seq
from ..optim import resolve_device, resolve_precision
from ..tokenizer import Tokenizer
from .console import console, err_console, fail

translate_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Translate with a trained checkpoint (greedy or beam search) and score the output.",
)


def read_lines(path: Path | None) -> list[str]:
    """Lines of ``path`` (stdin when None), blank ones kept; invalid UTF-8 names the line."""
    data = sys.stdin.buffer.read() if path is None else _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise fail(f"{path or 'stdin'}:{line}: not valid UTF-8 ({error.reason})", code=1) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, or a clear error naming it."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise fail(f"{path}: cannot read ({error.strerror})", code=2) from None


def resolve_checkpoint(path: Path) -> Path:
    """A ``.pt`` file as given, or a run directory's ``best.pt`` (``last.pt`` when there is no
    best yet)."""
    if not path.is_dir():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise fail(f"{path}: a directory without best.pt or last.pt; pass a checkpoint file", code=2)


def attention_record(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    index: int,
    src_text: str,
    hypothesis: Hypothesis,
    device: torch.device,
    layer: int,
    head: int | None,
) -> dict:
    """One sentence's subword tokens and cross-attention weights, as plain JSON data."""
    src_ids = tokenizer.encode_src([src_text])[0]
    if model.max_positions is not None:
        src_ids = src_ids[: model.max_positions - 1]
    weights = attention_matrix(model, src_ids, hypothesis.tokens, device, layer, head)
    return {
        "index": index,
        "src_tokens": [*tokenizer.src_pieces(src_ids), "</s>"],
        "tgt_tokens": [*tokenizer.tgt_pieces(hypothesis.tokens), "</s>"],
        "layer": layer,
        "head": "mean" if head is None else head,
        "weights": [[round(float(w), 5) for w in row] for row in weights],  # (T + 1, S + 1)
    }


SHADES = " ·░▒▓█"
"""Weight 0 to 1 as characters, so the heatmap reads without colour too."""


def attention_heatmap(record: dict) -> Table:
    """A terminal heatmap: one row per target token, one column per source token; the darker
    (and the more filled) a cell, the more attention."""
    table = Table(title=f"attention, sentence {record['index']}", box=None, pad_edge=False)
    table.add_column("")
    for token in record["src_tokens"]:
        table.add_column(token, justify="center", no_wrap=True)
    for token, row in zip(record["tgt_tokens"], record["weights"], strict=True):
        cells = []
        for weight in row:
            shade = SHADES[min(int(weight * len(SHADES)), len(SHADES) - 1)]
            level = int(255 * (1.0 - weight))
            cells.append(Text(shade * 2, style=Style(color=Color.from_rgb(level, level, 255))))
        table.add_row(token, *cells)
    return table


def plot_attention(records: list[dict], path: Path) -> list[Path]:
    """Write one PNG heatmap per record (``path`` itself for one sentence, else
    ``STEM-INDEX.png``), with the subword tokens on both axes; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise fail(
            "--plot-attention needs matplotlib: pip install 'seq2seq-attn[plot]' "
            "(make install includes it)",
            code=2,
        ) from None
    written = []
    for record in records:
        target = path if len(records) == 1 else path.with_name(
            f"{path.stem}-{record['index']}{path.suffix or '.png'}"
        )  # fmt: skip
        src_tokens, tgt_tokens = record["src_tokens"], record["tgt_tokens"]
        figure, axes = pyplot.subplots(
            figsize=(max(4.0, 0.45 * len(src_tokens) + 1.5), max(3.0, 0.4 * len(tgt_tokens) + 1.2))
        )
        image = axes.imshow(record["weights"], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xticks(range(len(src_tokens)), src_tokens, rotation=60, ha="right")
        axes.set_yticks(range(len(tgt_tokens)), tgt_tokens)
        axes.set_xlabel("source")
        axes.set_ylabel("target")
        layer = "last layer" if record["layer"] == -1 else f"layer {record['layer']}"
        axes.set_title(f"sentence {record['index']}: {layer}, head {record['head']}")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        figure.tight_layout()
        figure.savefig(target, dpi=120)
        pyplot.close(figure)
        written.append(target)
    return written


def print_scores(scores: dict[str, Score], as_json: bool, target: Console) -> None:
    """The sacreBLEU scores with their signatures, as a table or one JSON object."""
    if as_json:
        payload = {name: {"score": s.score, "signature": s.signature, "text": s.text}
                   for name, s in scores.items()}  # fmt: skip
        target.print_json(json.dumps(payload))
        return
    for score in scores.values():
        target.print(f"{score.text}\n  signature: {score.signature}", highlight=False)


@translate_app.command()
def translate_command(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A .pt checkpoint or a run directory.")
    ],
    input_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[INPUT]", help="Source text, one sentence a line [default: stdin]."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write translations here [stdout].")
    ] = None,
    beam: Annotated[
        int | None,
        typer.Option(help="Beam size, 1 = greedy [default: the run's decode.beam_size]."),
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="GNMT length penalty alpha [default: the run's].")
    ] = None,
    n_best: Annotated[
        int, typer.Option(help="Write the N best as 'index ||| hypothesis ||| score' lines.")
    ] = 1,
    batch_tokens: Annotated[int, typer.Option(help="Source token slots per batch.")] = 4096,
    max_length_ratio: Annotated[
        float | None, typer.Option(help="Output length limit = ratio * source length + offset.")
    ] = None,
    ref: Annotated[
        Path | None, typer.Option(help="Reference translations: score the output with sacreBLEU.")
    ] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: bleu, chrf, ter.")] = "bleu,chrf",
    json_scores: Annotated[
        bool, typer.Option("--json", help="Print the scores as one JSON object.")
    ] = False,
    attention: Annotated[
        Path | None, typer.Option(help="Write tokens and attention weights to this JSON file.")
    ] = None,
    attention_layer: Annotated[int, typer.Option(help="Decoder layer to show (-1 = last).")] = -1,
    attention_head: Annotated[
        int | None, typer.Option(help="Head to show [default: the mean of all heads].")
    ] = None,
    show_attention: Annotated[
        bool, typer.Option(help="Draw each sentence's attention in the terminal.")
    ] = False,
    plot_attention_file: Annotated[
        Path | None,
        typer.Option(
            "--plot-attention",
            help="PNG heatmap(s) of the attention: FILE.png for one line, FILE-N.png per line.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16, fp16 (CUDA) or auto.")] = "fp32",
) -> None:
    """Translate text with a trained checkpoint: a file, a pipe, or lines typed at a prompt.

    Exactly one output line per input line, in order. Scores (--ref) go to stdout when the
    translations go to a file (-o), else to stderr.
    """
    path = resolve_checkpoint(checkpoint)
    try:
        model, tokenizer, config = model_from_checkpoint(load_checkpoint(path), path)
        changes = {"beam_size": beam, "length_penalty": length_penalty,
                   "max_length_ratio": max_length_ratio}  # fmt: skip
        decode = dataclasses.replace(
            config.decode, **{key: value for key, value in changes.items() if value is not None}
        )
        options = dataclasses.replace(search_options(decode), n_best=n_best)
        run_device = resolve_device(device)
        amp_dtype = resolve_precision(precision, run_device).dtype
    except CheckpointError as error:
        raise fail(str(error), code=1) from None
    except (ConfigError, ValueError) as error:
        raise fail(str(error), code=2) from None
    model.to(run_device)

    def run(lines: list[str]) -> list[list[Hypothesis]]:
        return translate_n_best(
            model, tokenizer, lines, options, batch_tokens, run_device, amp_dtype
        )

    if input_file is None and sys.stdin.isatty():
        interactive(run, tokenizer)
        return
    lines = read_lines(input_file)
    found = run(lines)
    best = tokenizer.decode_tgt([hypotheses[0].tokens for hypotheses in found])
    write_output(output, format_output(found, best, tokenizer, n_best))
    if attention is not None or show_attention or plot_attention_file is not None:
        records = [
            attention_record(model, tokenizer, index, line, hypotheses[0], run_device,
                             attention_layer, attention_head)
            for index, (line, hypotheses) in enumerate(zip(lines, found, strict=True))
            if line.strip()
        ]  # fmt: skip
        if attention is not None:
            attention.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        for record in records if show_attention else []:
            err_console.print(attention_heatmap(record))
        if plot_attention_file is not None:
            for written in plot_attention(records, plot_attention_file):
                err_console.print(f"wrote {written}", highlight=False)
    if ref is not None:
        references = read_lines(ref)
        if len(references) != len(lines):
            source = input_file or "stdin"
            raise fail(f"{ref} has {len(references)} lines but {source} has {len(lines)}", code=2)
        try:
            scores = corpus_scores(best, references, [m.strip() for m in metrics.split(",")])
        except ValueError as error:
            raise fail(f"--metrics: {error}", code=2) from None
        print_scores(scores, json_scores, console if output is not None else err_console)


def format_output(
    found: list[list[Hypothesis]], best: list[str], tokenizer: Tokenizer, n_best: int
) -> list[str]:
    """One line per input, or ``index ||| hypothesis ||| score`` lines for n-best lists."""
    if n_best == 1:
        return best
    lines = []
    for index, hypotheses in enumerate(found):
        texts = tokenizer.decode_tgt([hypothesis.tokens for hypothesis in hypotheses])
        lines += [
            f"{index} ||| {text} ||| {h.score:.4f}"
            for text, h in zip(texts, hypotheses, strict=True)
        ]
    return lines


def write_output(output: Path | None, lines: list[str]) -> None:
    """Write ``lines`` to ``output`` (through a temporary file) or to stdout."""
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(output)


def interactive(run: Callable[[list[str]], list[list[Hypothesis]]], tokenizer: Tokenizer) -> None:
    """Translate each line as it is typed, until end of input (Ctrl-D)."""
    err_console.print("Type a sentence and press Enter; Ctrl-D to quit.")
    while True:
        try:
            line = console.input("[bold]> [/]")
        except (EOFError, KeyboardInterrupt):
            err_console.print()
            return
        hypothesis = run([line])[0][0]
        console.print(tokenizer.decode_tgt([hypothesis.tokens])[0], highlight=False)
