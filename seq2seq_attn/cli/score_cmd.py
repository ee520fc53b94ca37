"""``attn-score``: forced decoding of given translations with a checkpoint, an ensemble or an
exported folder; per line the total log-probability, the per-token mean and the token count,
as TSV or JSON Lines.

A command of its own, not ``attn-translate --score-ref``: scoring reads (source, target) pairs
and writes numbers. None of translate's search options apply, and both its input (a target
file or an n-best list) and its output (TSV or JSON Lines) differ from translate's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..corpus import MisalignedError, check_aligned
from .console import ComputeTypeOption, DeviceOption, PrecisionOption, fail
from .translate_cmd import open_model, read_input, translation_settings, write_output

score_app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Score given translations with a trained model (forced decoding): filter noisy "
    "parallel data by the per-token mean, rerank n-best lists.",
)

NBEST_FORMAT = "index ||| hypothesis ||| score"
"""An n-best line as ``attn-translate --n-best`` writes it (fields after the hypothesis are
ignored)."""


class OutputFormat(str, Enum):
    """How scores are written: tab-separated columns or one JSON object a line."""

    tsv = "tsv"
    json = "json"


@dataclass(frozen=True)
class ScoringInput:
    """The pairs to score and the key of each output line: ``key_name`` is ``line`` (the
    1-based line number of SRC and TGT) or ``index`` (an n-best list's sentence index)."""

    key_name: str
    keys: list[int]
    src_texts: list[str]
    tgt_texts: list[str]


def read_pairs(src_file: Path, tgt_file: Path) -> ScoringInput:
    """Line-aligned sources and targets; exit 2 naming both files when their counts differ."""
    sources, targets = read_input(src_file), read_input(tgt_file)
    try:
        check_aligned(src_file, len(sources), tgt_file, len(targets))
    except MisalignedError as error:
        raise fail(f"{error}; give one translation per source line", code=2) from None
    return ScoringInput("line", list(range(1, len(sources) + 1)), sources, targets)


def read_nbest(src_file: Path, nbest_file: Path) -> ScoringInput:
    """Each n-best hypothesis paired with its source line; exit 2 naming the file and line
    for a line that is not ``index ||| hypothesis ||| ...`` or whose index has no source."""
    sources = read_input(src_file)
    keys, src_texts, tgt_texts = [], [], []
    for number, line in enumerate(read_input(nbest_file), start=1):
        fields = line.split(" ||| ")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise fail(
                f"{nbest_file} line {number}: expected '{NBEST_FORMAT}' (as attn-translate "
                f"--n-best writes), got {line[:80]!r}",
                code=2,
            )
        index = int(fields[0])
        if index >= len(sources):
            raise fail(
                f"{nbest_file} line {number}: sentence index {index}, but {src_file} has "
                f"{len(sources)} lines (indices 0 to {len(sources) - 1}); score the n-best list "
                "against the source file it was translated from",
                code=2,
            )
        keys.append(index)
        src_texts.append(sources[index])
        tgt_texts.append(fields[1])
    return ScoringInput("index", keys, src_texts, tgt_texts)


def read_scoring_input(src_file: Path, tgt_file: Path | None, nbest: Path | None) -> ScoringInput:
    """The pairs of SRC with TGT or with the n-best list; exit 2 unless exactly one is given."""
    if tgt_file is not None and nbest is None:
        return read_pairs(src_file, tgt_file)
    if nbest is not None and tgt_file is None:
        return read_nbest(src_file, nbest)
    raise fail("give the translations to score: TGT or --nbest FILE (one of them)", code=2)


def summary(log_probs: Sequence[float]) -> tuple[float, float]:
    """The total and the per-token mean of one target's log-probabilities; both NaN for a
    pair that was not scored (a blank source)."""
    if not log_probs:
        return math.nan, math.nan
    total = math.fsum(log_probs)
    return total, total / len(log_probs)


def tsv_line(key: int, log_probs: Sequence[float], per_token: bool) -> str:
    """``key``, total, mean, token count (and the per-token values), tab-separated."""
    total, mean = summary(log_probs)
    cells = [str(key), f"{total:.6f}", f"{mean:.6f}", str(len(log_probs))]
    if per_token:
        cells.append(" ".join(f"{value:.6f}" for value in log_probs))
    return "\t".join(cells)


def json_line(key_name: str, key: int, log_probs: Sequence[float], per_token: bool) -> str:
    """One JSON object: the key, ``total``, ``mean`` (null when not scored), ``tokens`` and,
    with ``per_token``, ``log_probs``."""
    total, mean = summary(log_probs)
    record: dict[str, object] = {
        key_name: key,
        "total": None if math.isnan(total) else round(total, 6),
        "mean": None if math.isnan(mean) else round(mean, 6),
        "tokens": len(log_probs),
    }
    if per_token:
        record["log_probs"] = [round(value, 6) for value in log_probs]
    return json.dumps(record)


def format_scores(
    pairs: ScoringInput, scores: list[list[float]], output_format: OutputFormat, per_token: bool
) -> list[str]:
    """One output line per scored pair, in input order."""
    if output_format is OutputFormat.json:
        return [
            json_line(pairs.key_name, key, log_probs, per_token)
            for key, log_probs in zip(pairs.keys, scores, strict=True)
        ]
    return [
        tsv_line(key, log_probs, per_token)
        for key, log_probs in zip(pairs.keys, scores, strict=True)
    ]


@score_app.command()
def score_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A .pt checkpoint, a run directory, or a folder written by attn-export "
            "(scored with CTranslate2).",
        ),
    ],
    src_file: Annotated[Path, typer.Argument(metavar="SRC", help="Source sentences, one a line.")],
    tgt_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="[TGT]", help="Their translations, one per SRC line (or give --nbest)."
        ),
    ] = None,
    nbest: Annotated[
        Path | None,
        typer.Option(
            help=f"Score an n-best list instead of TGT: '{NBEST_FORMAT}' lines as "
            "attn-translate --n-best writes them, each scored against SRC line index + 1; "
            "the output keeps the index (for reranking).",
        ),
    ] = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="CHECKPOINT",
            help="Another checkpoint or run directory to ensemble with (repeatable): score "
            "with the average of the models' log-probabilities.",
        ),
    ] = None,
    per_token: Annotated[
        bool, typer.Option(help="Also write each token's log-probability (EOS last).")
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="tsv: tab-separated columns; json: JSON Lines."),
    ] = OutputFormat.tsv,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the scores here \\[stdout].")
    ] = None,
    batch_tokens: Annotated[
        int, typer.Option(help="Token slots per batch (source or target).")
    ] = 4096,
    device: DeviceOption = "auto",
    precision: PrecisionOption = None,
    compute_type: ComputeTypeOption = None,
) -> None:
    """Score given translations (forced decoding): how probable the model finds each target
    given its source. Use it to filter noisy parallel data (drop pairs with a low per-token
    mean) or to rerank n-best lists (--nbest).

    One output line per pair (or n-best line), in order. TSV columns: line number (n-best:
    index), total log-probability, mean per token, token count, and with --per-token the
    space-separated per-token values. Tokens are the target's subwords plus the final EOS. A
    pair with a blank source is not scored: nan, nan, 0 (JSON: null). A blank target scores
    the EOS alone. JSON Lines keys: line (n-best: index), total, mean, tokens, log_probs.

    Examples: attn-score runs/deen train.de train.en --format json > scores.jsonl;
    attn-score runs/deen test.de --nbest nbest.txt > nbest.scores (paste it beside the list).

    A command of its own rather than attn-translate --score-ref: it reads pairs and writes
    numbers, none of translate's search options apply, and its input and output differ.
    """
    pairs = read_scoring_input(src_file, tgt_file, nbest)
    settings = translation_settings(
        device=device, precision=precision, compute_type=compute_type, max_tokens=batch_tokens
    )
    translator = open_model(checkpoint, settings, ensemble or [])
    scores = translator.score(pairs.src_texts, pairs.tgt_texts)
    write_output(output, format_scores(pairs, scores, output_format, per_token))
