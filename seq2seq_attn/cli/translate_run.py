"""What ``attn-translate`` does with each chunk of its input: translate it, write its
translations (or n-best lists), alignments and attention records at once, in input order and
numbered by the whole input, and show attention as terminal heatmaps and pictures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..decoding import Hypothesis
from ..plotting import PlottingError, plot_attention
from ..translation import Translator
from .console import err_console, fail
from .translate_guides import GuidedInput, warn_unmet_constraints
from .translate_stream import Outputs, cannot_write


@dataclass(frozen=True)
class AttentionView:
    """What the attention options ask for: records at all (``wanted``), from which decoder
    ``layer`` and ``head`` (None: the mean), heatmaps in the terminal, PNG ``picture``(s)."""

    wanted: bool
    layer: int
    head: int | None
    in_terminal: bool
    picture: Path | None


@dataclass
class StreamedRun:
    """One run over the input's chunks: each chunk's outputs written (and flushed) as soon as
    it is translated, in input order, numbered by the whole input. Kept across chunks only
    what the end needs: the best translations for ``--ref`` scoring (``keep_best``) and the
    attention records for ``--plot-attention``."""

    translator: Translator
    outputs: Outputs
    view: AttentionView
    alignment_layer: int | None
    alignment_head: int | None
    keep_best: bool
    best: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # for --plot-attention only
    records_written: int = 0  # to the --attention JSON list

    def translate(self, guided: GuidedInput) -> None:
        """Translate one chunk and write everything it gives."""
        translator, first = self.translator, guided.first_index
        found = translator.n_best(
            guided.sources, guided.prefixes, guided.constraints, first_index=first
        )
        if guided.constraints is not None:
            warn_unmet_constraints(found, guided.constraints, first_number=first + 1)
        best_found = [hypotheses[0] for hypotheses in found]
        best = translator.detokenize(best_found)
        self.outputs.translations.write(as_lines(format_output(found, best, translator, first)))
        if self.outputs.alignments is not None:
            try:
                links = translator.alignments(
                    guided.sources, best_found, self.alignment_layer, self.alignment_head
                )
            except ValueError as error:
                raise fail(f"--alignments: {error}", code=2) from None
            self.outputs.alignments.write(as_lines(links))
        if self.view.wanted:
            self.show_attention(guided.sources, best_found, first)
        if self.keep_best:
            self.best += best

    def show_attention(self, sources: list[str], best: list[Hypothesis], first: int) -> None:
        """The attention records of a chunk's non-blank lines: appended to the ``--attention``
        JSON list, drawn in the terminal, kept for the pictures."""
        view = self.view
        try:
            records = [
                self.translator.attention(first + row, line, hypothesis, view.layer, view.head)
                for row, (line, hypothesis) in enumerate(zip(sources, best, strict=True))
                if line.strip()
            ]
        except IndexError as error:  # a layer or head the model does not have
            raise fail(
                f"--attention-layer {view.layer} / --attention-head {view.head}: out of range "
                f"for this model ({error}); leave them out for the last layer's mean of heads",
                code=2,
            ) from None
        if self.outputs.attention is not None:
            for record in records:  # json.dumps(all records) written one record at a time
                separator = ", " if self.records_written else "["
                self.outputs.attention.write(separator + json.dumps(record, ensure_ascii=False))
                self.records_written += 1
        for record in records if view.in_terminal else []:
            err_console.print(attention_heatmap(record))
        if view.picture is not None:
            self.records += records

    def finish(self) -> None:
        """Close the ``--attention`` JSON list (the pictures come after the output files are
        in place: :meth:`draw_pictures`)."""
        if self.outputs.attention is not None:
            self.outputs.attention.write("]" if self.records_written else "[]")

    def draw_pictures(self) -> None:
        """The ``--plot-attention`` pictures of every record, when asked for."""
        if self.view.picture is not None:
            draw_attention(self.records, self.view.picture)


def draw_attention(records: list[dict], picture: Path) -> None:
    """PNG heatmaps of ``records`` (``--plot-attention``), naming each file written."""
    try:
        written = plot_attention(records, picture)
    except PlottingError as error:
        raise fail(f"--plot-attention: {error}", code=2) from None
    except OSError as error:
        raise cannot_write(picture, error) from None
    for path in written:
        err_console.print(f"wrote {path}", highlight=False)


def as_lines(lines: list[str]) -> str:
    """``lines`` as text, each ended by a line end."""
    return "".join(line + "\n" for line in lines)


def format_output(
    found: list[list[Hypothesis]], best: list[str], translator: Translator, first_index: int = 0
) -> list[str]:
    """One line per input, or ``index ||| hypothesis ||| score`` lines for n-best lists
    (``found[0]`` is input ``first_index``, counted from 0)."""
    if translator.decode.n_best == 1:
        return best
    lines = []
    for index, hypotheses in enumerate(found, start=first_index):
        texts = translator.detokenize(hypotheses)
        lines += [
            f"{index} ||| {text} ||| {h.score:.4f}"
            for text, h in zip(texts, hypotheses, strict=True)
        ]
    return lines


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
