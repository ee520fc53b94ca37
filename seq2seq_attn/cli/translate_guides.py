"""What ``attn-translate`` reads beside its input to steer the search: target prefixes,
lexical constraints (a JSON file, tab-separated in the input, a glossary) and sampling
options, each checked against the input with an error naming the file and line; and the
per-line warnings for constraints that did not fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..corpus import MisalignedError, TextFileError, check_aligned
from ..decoding import Hypothesis
from ..sampling import Sampling
from ..terminology import (
    read_constraints_file,
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
    """The source lines and, per line, the target prefix and constraint phrases (None: none
    were asked for)."""

    sources: list[str]
    prefixes: list[str] | None = None
    constraints: list[list[str]] | None = None


def read_guides(lines: list[str], input_name: str, files: GuideFiles, read_text) -> GuidedInput:
    """The input ``lines`` with what ``files`` add to each, or a clear exit 2 naming the file
    and line of a bad entry. ``read_text(path)`` reads a file's lines (exiting on an error)."""
    guided = GuidedInput(sources=lines)
    try:
        if files.tab_constraints:
            guided.sources, guided.constraints = split_inline_constraints(lines, input_name)
        if files.constraints is not None:
            from_file = read_constraints_file(files.constraints, len(lines))
            guided.constraints = _merge(guided.constraints, from_file)
        if files.glossary is not None:
            glossary = read_glossary(files.glossary)
            terms = [glossary.constraints_for(source) for source in guided.sources]
            guided.constraints = _merge(guided.constraints, terms)
        if files.prefix is not None:
            guided.prefixes = read_text(files.prefix)
            check_aligned(files.prefix, len(guided.prefixes), input_name, len(lines))
    except (TextFileError, MisalignedError) as error:  # TerminologyError included
        raise fail(str(error), code=2) from None
    return guided


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
    naming the impossible option."""
    if not sample:
        return None
    try:
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    except ValueError as error:
        raise fail(str(error), code=2) from None


def warn_unmet_constraints(found: list[list[Hypothesis]], constraints: list[list[str]]) -> None:
    """One warning per input line whose best output misses constraint phrases (they did not
    fit in its output length limit), naming the line."""
    for number, (hypotheses, phrases) in enumerate(zip(found, constraints, strict=True), 1):
        unmet = hypotheses[0].unmet_constraints
        if unmet:
            err_console.print(
                f"[yellow]warning:[/] line {number}: {unmet} of {len(phrases)} constraint(s) "
                "could not be placed within the output length limit and are missing from the "
                "output; raise --max-length-ratio or shorten the constraints",
                highlight=False,
            )
