"""``attn-translate``: translate a file, a pipe or typed lines with a checkpoint; n-best lists,
sacreBLEU scores against references, and attention weights as JSON or a terminal heatmap."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from rich.console import Console

from ..corpus import MisalignedError, TextFileError, check_aligned, decode_lines
from ..fileio import write_text_atomic
from ..metrics import Score, corpus_scores
from ..stop_signals import StopSignal, exit_code, raising_stop_signals
from ..translation import TranslationError, TranslationSettings, Translator, open_translator
from .console import ComputeTypeOption, DeviceOption, PrecisionOption, console, err_console, fail
from .translate_guides import (
    GuideFiles,
    guided_chunks,
    sampling_options,
)
from .translate_run import AttentionView, StreamedRun
from .translate_stream import (
    OutputFile,
    Outputs,
    StandardOutput,
    line_chunks,
    open_input,
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
        Path | None,
        typer.Option(
            help="Reference translations: score the output with sacreBLEU (the best translations "
            "are kept in memory until the end for it)."
        ),
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

    Exactly one output line per input line, in order, written as the input is translated (up
    to 1000 lines at a time; from a pipe, the lines that have arrived). The output files (-o,
    --alignments, --attention) are opened before anything is translated and appear whole,
    when the run ends without an error. Scores (--ref) go to stdout when the translations go
    to a file (-o), else to stderr.
    """
    wants_attention = attention is not None or show_attention or plot_attention_file is not None
    settings = translation_settings(
        device=device, precision=precision, compute_type=compute_type, beam_size=beam,
        length_penalty=length_penalty, max_length_ratio=max_length_ratio, n_best=n_best,
        max_tokens=batch_tokens, attention=wants_attention or alignments is not None,
        sampling=sampling_options(sample, temperature, top_k, top_p, seed),
    )  # fmt: skip
    files = GuideFiles(prefix, constraints, tab_constraints, glossary)
    check_combination(settings, files)
    if ref is not None and not os.access(ref, os.R_OK):  # found now, not after the work
        raise fail(f"{ref}: cannot read the references (no such file, or not readable)", code=2)
    typed = input_file is None and sys.stdin.isatty()
    try:
        with raising_stop_signals():  # a kill deletes the unfinished outputs' temporaries
            run = translate_stream(
                checkpoint, input_file, settings, ensemble or [], files, typed,
                OutputPaths(output, alignments, attention), AttentionView(
                    wants_attention, attention_layer, attention_head, show_attention,
                    plot_attention_file,
                ), (alignment_layer, alignment_head), keep_best=ref is not None,
            )  # fmt: skip
    except StopSignal as stop:
        raise typer.Exit(code=exit_code(stop.signal)) from None
    if run is None:  # typed lines, translated as they came
        return
    run.draw_pictures()
    if ref is not None:
        scores = score_output(run.best, ref, input_file, metrics)
        print_scores(scores, json_scores, console if output is not None else err_console)


def translate_stream(
    checkpoint: Path, input_file: Path | None, settings: TranslationSettings,
    ensemble: list[Path], files: GuideFiles, typed: bool, paths: OutputPaths,
    view: AttentionView, alignment_choice: tuple[int | None, int | None], keep_best: bool,
) -> StreamedRun | None:  # fmt: skip
    """Open the input and the outputs (before any model), then the model, and translate
    chunk by chunk (or typed lines, returning None)."""
    with contextlib.ExitStack() as stack:
        source = None if typed else stack.enter_context(open_input(input_file))
        outputs = None if typed else open_outputs(stack, *paths)
        translator = open_model(checkpoint, settings, ensemble)
        check_constraints_supported(translator, files, checkpoint)
        if source is None or outputs is None:
            interactive(translator)
            return None
        if ensemble and view.wanted:
            err_console.print(
                f"attention: from the ensemble's first model ({checkpoint})", highlight=False
            )
        run = StreamedRun(translator, outputs, view, *alignment_choice, keep_best=keep_best)
        name = str(input_file or "stdin")
        for guided in guided_chunks(line_chunks(source, name), name, files):
            run.translate(guided)
        run.finish()
    return run


def translation_settings(**fields) -> TranslationSettings:
    """:class:`TranslationSettings` of ``fields``, or a one-line exit 2 naming the option
    whose value no backend can honour (``--precision banana``, ``--max-length-ratio inf``)."""
    try:
        return TranslationSettings(**fields)
    except TranslationError as error:
        raise fail(str(error), code=2) from None


class OutputPaths(NamedTuple):
    """Where ``-o``, ``--alignments`` and ``--attention`` write (None: stdout, not asked)."""

    translations: Path | None
    alignments: Path | None
    attention: Path | None


def open_outputs(
    stack: contextlib.ExitStack, output: Path | None, alignments: Path | None,
    attention: Path | None,
) -> Outputs:  # fmt: skip
    """Every output file opened (and closed by ``stack``) before any model is: a wrong path
    exits 1 naming it before anything is translated."""

    def opened(path: Path | None) -> OutputFile | None:
        """``path`` opened (None: not asked for)."""
        return None if path is None else stack.enter_context(OutputFile(path))

    translations = opened(output)  # in this order: -o's error first
    return Outputs(translations or StandardOutput(), opened(alignments), opened(attention))


def check_constraints_supported(
    translator: Translator, files: GuideFiles, checkpoint: Path
) -> None:
    """Exit 2 when constraints are asked of a backend without constrained search."""
    if files.constrains and not translator.capabilities.constraints:
        raise fail(
            f"{checkpoint} is a CTranslate2 folder, which has no constrained search: use the "
            ".pt checkpoint it was exported from for --constraints, --tab-constraints and "
            "--glossary",
            code=2,
        )


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
