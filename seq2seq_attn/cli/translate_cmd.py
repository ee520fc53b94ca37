"""``attn-translate``: translate a file, a pipe or typed lines with a checkpoint; n-best lists,
sacreBLEU scores against references, and attention weights as JSON or a terminal heatmap."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..corpus import MisalignedError, TextFileError, check_aligned, decode_lines
from ..decoding import Hypothesis
from ..fileio import write_text_atomic
from ..metrics import Score, corpus_scores
from ..plotting import PlottingError, plot_attention
from ..translation import TranslationError, TranslationSettings, Translator, open_translator
from .console import ComputeTypeOption, DeviceOption, PrecisionOption, console, err_console, fail
from .translate_guides import (
    GuideFiles,
    read_guides,
    sampling_options,
    warn_unmet_constraints,
)

translate_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Translate with a trained checkpoint (greedy or beam search) and score the output.",
)


def read_input(path: Path | None) -> list[str]:
    """Lines of ``path`` (stdin when None), blank ones kept; invalid UTF-8 names the line."""
    try:
        data = sys.stdin.buffer.read() if path is None else path.read_bytes()
    except OSError as error:
        raise fail(f"{path}: cannot read ({error.strerror})", code=2) from None
    try:
        return decode_lines(data, str(path or "stdin"))
    except TextFileError as error:
        raise fail(str(error), code=1) from None


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
        Path,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A .pt checkpoint, a run directory, or a folder written by attn-export "
            "(translated with CTranslate2).",
        ),
    ],
    input_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[INPUT]", help="Source text, one sentence a line \\[default: stdin]."
        ),
    ] = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="CHECKPOINT",
            help="Another checkpoint or run directory to ensemble with (repeatable): decode "
            "with the average of the models' log-probabilities. They must share the first "
            "model's tokenizer; decode settings and attention output come from the first model.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write translations here \\[stdout].")
    ] = None,
    beam: Annotated[
        int | None,
        typer.Option(help="Beam size, 1 = greedy \\[default: the run's decode.beam_size]."),
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="GNMT length penalty alpha \\[default: the run's].")
    ] = None,
    n_best: Annotated[
        int | None,
        typer.Option(
            help="Write the N best as 'index ||| hypothesis ||| score' lines \\[default: the "
            "run's decode.n_best, 1 unless set]."
        ),
    ] = None,
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
        Path | None,
        typer.Option(
            help="Write tokens and attention weights to this JSON file (an ensemble's first "
            "model's)."
        ),
    ] = None,
    attention_layer: Annotated[int, typer.Option(help="Decoder layer to show (-1 = last).")] = -1,
    attention_head: Annotated[
        int | None, typer.Option(help="Head to show \\[default: the mean of all heads].")
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
    device: DeviceOption = "auto",
    precision: PrecisionOption = None,
    compute_type: ComputeTypeOption = None,
    prefix: Annotated[
        Path | None,
        typer.Option(
            help="Target prefixes, one per input line (may be empty): each translation starts "
            "with its line's prefix and continues from it.",
            rich_help_panel="Steering the output",
        ),
    ] = None,
    constraints: Annotated[
        Path | None,
        typer.Option(
            help="Terminology constraints: one JSON list of target phrases per input line "
            '(\'["red car", "Berlin"]\'; an empty line or [] for none). Every phrase appears in '
            "that line's translation (constrained beam search; checkpoints only).",
            rich_help_panel="Steering the output",
        ),
    ] = None,
    tab_constraints: Annotated[
        bool,
        typer.Option(
            help="The input lines carry their constraints: 'source<TAB>phrase<TAB>phrase...'.",
            rich_help_panel="Steering the output",
        ),
    ] = False,
    glossary: Annotated[
        Path | None,
        typer.Option(
            help="A glossary, one 'source term<TAB>target term' per line: when a source term "
            "occurs in a line (as whole words), its target term becomes a constraint.",
            rich_help_panel="Steering the output",
        ),
    ] = None,
    sample: Annotated[
        bool,
        typer.Option(
            help="Sample translations instead of searching (--n-best N: N samples a line).",
            rich_help_panel="Sampling",
        ),
    ] = False,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature.", rich_help_panel="Sampling")
    ] = 1.0,
    top_k: Annotated[
        int,
        typer.Option(
            help="Sample among the K most probable tokens (0: all).", rich_help_panel="Sampling"
        ),
    ] = 0,
    top_p: Annotated[
        float,
        typer.Option(
            help="Nucleus sampling: among the most probable tokens that hold this share of the "
            "probability (0 < p <= 1).",
            rich_help_panel="Sampling",
        ),
    ] = 1.0,
    seed: Annotated[
        int,
        typer.Option(
            help="Random seed: the same seed gives the same samples, whatever the batching.",
            rich_help_panel="Sampling",
        ),
    ] = 0,
    alignments: Annotated[
        Path | None,
        typer.Option(
            help="Write word alignments from cross-attention here, one Pharaoh line "
            "('source-target' word indices) per input line (checkpoints only).",
            rich_help_panel="Attention",
        ),
    ] = None,
    alignment_layer: Annotated[
        int | None,
        typer.Option(
            help="--alignments from this decoder layer only (-1 = last) \\[default: the "
            "average of all layers and heads, the rule chosen in docs/alignments.md].",
            rich_help_panel="Attention",
        ),
    ] = None,
    alignment_head: Annotated[
        int | None,
        typer.Option(help="--alignments from this head only.", rich_help_panel="Attention"),
    ] = None,
) -> None:
    """Translate text with a trained checkpoint: a file, a pipe, or lines typed at a prompt.

    Exactly one output line per input line, in order. Scores (--ref) go to stdout when the
    translations go to a file (-o), else to stderr.
    """
    wants_attention = attention is not None or show_attention or plot_attention_file is not None
    settings = TranslationSettings(
        device=device, precision=precision, compute_type=compute_type, beam_size=beam,
        length_penalty=length_penalty, max_length_ratio=max_length_ratio, n_best=n_best,
        max_tokens=batch_tokens, attention=wants_attention or alignments is not None,
        sampling=sampling_options(sample, temperature, top_k, top_p, seed),
    )  # fmt: skip
    files = GuideFiles(prefix, constraints, tab_constraints, glossary)
    check_combination(settings, files)
    translator = open_model(checkpoint, settings, ensemble or [])
    if files.constrains and not translator.capabilities.constraints:
        raise fail(
            f"{checkpoint} is a CTranslate2 folder, which has no constrained search: use the "
            ".pt checkpoint it was exported from for --constraints, --tab-constraints and "
            "--glossary",
            code=2,
        )
    if input_file is None and sys.stdin.isatty():
        interactive(translator)
        return
    guided = read_guides(read_input(input_file), str(input_file or "stdin"), files, read_input)
    lines = guided.sources
    found = translator.n_best(lines, guided.prefixes, guided.constraints)
    if guided.constraints is not None:
        warn_unmet_constraints(found, guided.constraints)
    best = translator.detokenize([hypotheses[0] for hypotheses in found])
    write_output(output, format_output(found, best, translator))
    if alignments is not None:
        best_found = [hypotheses[0] for hypotheses in found]
        try:
            links = translator.alignments(lines, best_found, alignment_layer, alignment_head)
        except ValueError as error:
            raise fail(f"--alignments: {error}", code=2) from None
        write_file(alignments, "".join(line + "\n" for line in links))
    if wants_attention:
        if ensemble:
            err_console.print(
                f"attention: from the ensemble's first model ({checkpoint})", highlight=False
            )
        records = [
            translator.attention(index, line, hypotheses[0], attention_layer, attention_head)
            for index, (line, hypotheses) in enumerate(zip(lines, found, strict=True))
            if line.strip()
        ]
        show_attention_records(records, attention, show_attention, plot_attention_file)
    if ref is not None:
        scores = score_output(best, ref, input_file, metrics)
        print_scores(scores, json_scores, console if output is not None else err_console)


def check_combination(settings: TranslationSettings, files: GuideFiles) -> None:
    """Exit 2 with a clear message for options that do not go together."""
    if settings.sampling is not None and files.constrains:
        raise fail(
            "--sample cannot be combined with constraints (--constraints, --tab-constraints, "
            "--glossary): constraints need beam search",
            code=2,
        )
    if settings.sampling is not None and settings.beam_size is not None:
        raise fail(
            "--sample and --beam: choose one (sampling draws --n-best samples a line)", code=2
        )


def open_model(checkpoint: Path, settings: TranslationSettings, ensemble: list[Path]) -> Translator:
    """The model opened for translation, or a clear exit: 1 for a file that cannot be read, 2
    for what the user asked wrongly."""
    try:
        return open_translator(checkpoint, settings, ensemble)
    except TranslationError as error:
        raise fail(str(error), code=1 if error.unreadable else 2) from None


def score_output(
    best: list[str], ref: Path, input_file: Path | None, metrics: str
) -> dict[str, Score]:
    """sacreBLEU scores of ``best`` against the references in ``ref``, or a clear exit 2 for
    references that do not line up with the input or an unknown metric."""
    references = read_input(ref)
    try:
        check_aligned(ref, len(references), input_file or "stdin", len(best))
    except MisalignedError as error:
        raise fail(str(error), code=2) from None
    try:
        return corpus_scores(best, references, [m.strip() for m in metrics.split(",")])
    except ValueError as error:
        raise fail(f"--metrics: {error}", code=2) from None


def show_attention_records(
    records: list[dict], json_file: Path | None, in_terminal: bool, picture: Path | None
) -> None:
    """Attention as JSON (``--attention``), terminal heatmaps and PNG pictures."""
    if json_file is not None:
        write_file(json_file, json.dumps(records, ensure_ascii=False))
    for record in records if in_terminal else []:
        err_console.print(attention_heatmap(record))
    if picture is not None:
        try:
            written = plot_attention(records, picture)
        except PlottingError as error:
            raise fail(f"--plot-attention: {error}", code=2) from None
        except OSError as error:
            raise fail(f"{picture}: cannot write ({error.strerror})", code=1) from None
        for path in written:
            err_console.print(f"wrote {path}", highlight=False)


def format_output(
    found: list[list[Hypothesis]], best: list[str], translator: Translator
) -> list[str]:
    """One line per input, or ``index ||| hypothesis ||| score`` lines for n-best lists."""
    if translator.decode.n_best == 1:
        return best
    lines = []
    for index, hypotheses in enumerate(found):
        texts = translator.detokenize(hypotheses)
        lines += [
            f"{index} ||| {text} ||| {h.score:.4f}"
            for text, h in zip(texts, hypotheses, strict=True)
        ]
    return lines


def write_output(output: Path | None, lines: list[str]) -> None:
    """Write ``lines`` to ``output`` (a whole file or nothing) or to stdout."""
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_file(output, text)


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, or exit naming the path when it cannot be."""
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise fail(f"{path}: cannot write ({error.strerror})", code=1) from None


def interactive(translator: Translator) -> None:
    """Translate each line as it is typed, until end of input (Ctrl-D)."""
    err_console.print("Type a sentence and press Enter; Ctrl-D to quit.")
    while True:
        try:
            line = console.input("[bold]> [/]")
        except (EOFError, KeyboardInterrupt):
            err_console.print()
            return
        console.print(translator.detokenize(translator.translate([line]))[0], highlight=False)
