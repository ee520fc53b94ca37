"""What ``attn-translate`` reads beside its input to steer the search: target prefixes,
lexical constraints (a JSON file, tab-separated in the input, a glossary) and sampling
options; the line-aligned files are read beside the input a chunk at a time and checked
against it, with errors naming the file and line. And the per-line warnings for constraints
that did not fit."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..corpus import MisalignedError, TextFileError, iter_lines
from ..decoding import Hypothesis
from ..sampling import Sampling
from ..terminology import (
    parse_constraints_line,
    read_glossary,
    split_inline_constraints,
)
from .console import err_console, fail


@dataclass(frozen=True)
class GuideFiles:
    """The command's options that steer each line's output (None / False: not given)."""

    prefix: Path | None = None
    constraints: Path | None = None
    tab_constraints: bool = False
    glossary: Path | None = None

    @property
    def constrains(self) -> bool:
        """Whether any option asks for constraints."""
        return self.constraints is not None or self.tab_constraints or self.glossary is not None


@dataclass
class GuidedInput:
    """A chunk of source lines and, per line, the target prefix and constraint phrases (None:
    none were asked for); ``first_index`` is the index of ``sources[0]`` in the whole input."""

    sources: list[str]
    first_index: int = 0
    prefixes: list[str] | None = None
    constraints: list[list[str]] | None = None


def guided_chunks(
    chunks: Iterator[list[str]], input_name: str, files: GuideFiles
) -> Iterator[GuidedInput]:
    """Each chunk of input lines with what ``files`` add to its lines; the line-aligned files
    (prefixes, constraints) are read beside the input, a chunk at a time. A bad entry exits 2
    naming its file and line; a file with fewer or more lines than the input exits 2 naming
    both and their counts, once the shorter one ends (the input is read to its end to count
    it)."""
    try:
        yield from _guided(chunks, input_name, files)
    except TextFileError as error:  # TerminologyError and MisalignedError included
        raise fail(str(error), code=2) from None


def _guided(
    chunks: Iterator[list[str]], input_name: str, files: GuideFiles
) -> Iterator[GuidedInput]:
    """:func:`guided_chunks` raising the errors it reports."""
    glossary = None if files.glossary is None else read_glossary(files.glossary)
    aligned = [path for path in (files.constraints, files.prefix) if path is not None]
    readers = {path: iter_lines(path) for path in aligned}  # (number, line), opened lazily
    done = 0  # input lines before this chunk
    for lines in chunks:
        side = {path: list(itertools.islice(rows, len(lines))) for path, rows in readers.items()}
        for path, rows in side.items():
            if len(rows) < len(lines):
                total = done + len(lines) + sum(len(rest) for rest in chunks)
                raise _misaligned(path, done + len(rows), input_name, total, files)
        guided = GuidedInput(sources=lines, first_index=done)
        if files.tab_constraints:
            guided.sources, guided.constraints = split_inline_constraints(
                lines, input_name, first=done + 1
            )
        if files.constraints is not None:
            from_file = [parse_constraints_line(line, str(files.constraints), number)
                         for number, line in side[files.constraints]]  # fmt: skip
            guided.constraints = _merge(guided.constraints, from_file)
        if glossary is not None:
            terms = [glossary.constraints_for(source) for source in guided.sources]
            guided.constraints = _merge(guided.constraints, terms)
        if files.prefix is not None:
            guided.prefixes = [line for _, line in side[files.prefix]]
        yield guided
        done += len(lines)
    for path, reader in readers.items():
        extra = sum(1 for _ in reader)
        if extra:
            raise _misaligned(path, done + extra, input_name, done, files)


def _misaligned(
    path: Path, count: int, input_name: str, input_count: int, files: GuideFiles
) -> MisalignedError:
    """The error for a line-aligned guide file of ``count`` lines beside an input of
    ``input_count``, with the fix for a constraints file."""
    message = f"{path} has {count} lines but {input_name} has {input_count}"
    if path == files.constraints:
        message += (
            "; write one JSON list per input line (an empty line or [] where a line has no "
            "constraints)"
        )
    return MisalignedError(message)


def _merge(first: list[list[str]] | None, second: list[list[str]]) -> list[list[str]]:
    """Per line, the phrases of ``first`` and then those of ``second`` not already there."""
    if first is None:
        return second
    return [
        [*phrases, *(phrase for phrase in more if phrase not in phrases)]
        for phrases, more in zip(first, second, strict=True)
    ]


def sampling_options(
    sample: bool, temperature: float, top_k: int, top_p: float, seed: int
) -> Sampling | None:
    """The sampling settings when ``--sample`` is given (None: search), or a clear exit 2
    naming the impossible option (checked without ``--sample`` too: nonsense is refused)."""
    try:
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    except ValueError as error:
        raise fail(str(error), code=2) from None
    return sampling if sample else None


def warn_unmet_constraints(
    found: list[list[Hypothesis]], constraints: list[list[str]], first_number: int = 1
) -> None:
    """One warning per input line whose best output misses constraint phrases (they did not
    fit in its output length limit), naming the line (``found[0]``'s is ``first_number``)."""
    for number, (hypotheses, phrases) in enumerate(
        zip(found, constraints, strict=True), first_number
    ):
        unmet = hypotheses[0].unmet_constraints
        if unmet:
            err_console.print(
                f"[yellow]warning:[/] line {number}: {unmet} of {len(phrases)} constraint(s) "
                "could not be placed within the output length limit and are missing from the "
                "output; raise --max-length-ratio or shorten the constraints",
                highlight=False,
            )
