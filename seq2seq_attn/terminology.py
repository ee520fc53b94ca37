"""Where lexical constraints come from: a constraints file (one JSON list of target phrases per
input line), phrases after the source on the same input line (tab-separated), and a glossary
(``source term<TAB>target term``: a source term found in a line makes its target term a
constraint of that line).

Every problem is a :class:`TerminologyError` whose message names the file and line (or the
option and value) and how to fix it; the text rules (UTF-8, gzip, ``\\r``) are
:mod:`~seq2seq_attn.corpus`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .corpus import TextFileError, read_lines

EXAMPLE = '["grünes Haus", "Tür"]'  # how a constraints line looks, for error messages


class TerminologyError(TextFileError):
    """A constraints file, inline constraints or a glossary that cannot be used; the message
    names the file and line and the fix (a :class:`~seq2seq_attn.corpus.TextFileError`, so a
    ``ValueError``)."""


def parse_constraints_line(line: str, origin: str, number: int) -> list[str]:
    """The phrases of one constraints-file line: a JSON list of non-empty strings; a blank line
    is ``[]``. ``origin`` and ``number`` (from 1) name the line in errors."""
    if not line.strip():
        return []
    where = f"{origin}:{number}"
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise TerminologyError(
            f"{where}: not valid JSON ({error.msg} at column {error.colno}); write a JSON list "
            f"of target phrases such as {EXAMPLE}, or [] for none"
        ) from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TerminologyError(
            f"{where}: expected a JSON list of strings, got {json.dumps(value, ensure_ascii=False)}"
            f"; write target phrases such as {EXAMPLE}, or [] for none"
        )
    for index, phrase in enumerate(value, start=1):
        if not phrase.strip():
            raise TerminologyError(f"{where}: phrase {index} is empty; remove it from the list")
    return value


def split_inline_constraints(
    lines: Sequence[str], source_name: str, first: int = 1
) -> tuple[list[str], list[list[str]]]:
    """Input lines ``source<TAB>phrase<TAB>phrase...`` split into the sources and, per line,
    its target phrases (a line without a tab has none). ``source_name`` (the input file, or
    ``<stdin>``) and the line number (``lines[0]`` is line ``first``) name a line in errors: an
    empty phrase (two tabs in a row, or one at the end)."""
    sources, phrases = [], []
    for number, line in enumerate(lines, start=first):
        source, *line_phrases = line.split("\t")
        for index, phrase in enumerate(line_phrases, start=2):
            if not phrase.strip():
                raise TerminologyError(
                    f"{source_name}:{number}: column {index} (a constraint phrase) is empty; "
                    "remove the extra tab (columns: source<TAB>phrase<TAB>phrase...)"
                )
        sources.append(source)
        phrases.append(line_phrases)
    return sources, phrases


def _term_patterns(term: str) -> tuple[str, str]:
    """Regular expressions for ``term`` as whole words (spaces inside it: any whitespace):
    exactly, and with the first letter of each word in either case."""
    exact, relaxed = [], []
    for word in term.split():
        first, rest = word[0], re.escape(word[1:])
        exact.append(re.escape(word))
        relaxed.append(f"(?:{re.escape(first)}|{re.escape(first.swapcase())}){rest}")
    whitespace = r"\s+"
    return tuple(rf"(?<!\w){whitespace.join(words)}(?!\w)" for words in (exact, relaxed))


@dataclass(frozen=True)
class Glossary:
    """Source terms and their target terms, in file order (each source term once).

    A source term occurs in a line as whole words (not inside a longer word; spaces inside a
    term match any whitespace): with its exact case where it occurs so, else with the first
    letter of any of its words in the other case (a capital at the start of a sentence, or a
    lowercased text), but not otherwise: "US" does not match "us". Longer source terms are
    looked for first, and a shorter one only outside their matches (of "New York" and "New
    York City", a line with "New York City" gets only the latter's target term).
    """

    entries: tuple[tuple[str, str], ...]  # (source term, target term)

    def constraints_for(self, src_line: str) -> list[str]:
        """The target terms of the source terms found in ``src_line``, in the order they occur
        there, each target term once."""
        taken: list[tuple[int, int]] = []  # spans of the line already matched
        found: list[tuple[int, str]] = []  # (where, target term)
        for src_term, tgt_term in sorted(self.entries, key=lambda entry: -len(entry[0])):
            span = _free_match(src_term, src_line, taken)
            if span is not None:
                taken.append(span)
                found.append((span[0], tgt_term))
        targets: list[str] = []
        for _, tgt_term in sorted(found):
            if tgt_term not in targets:
                targets.append(tgt_term)
        return targets


def _free_match(term: str, line: str, taken: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The first occurrence of ``term`` in ``line`` (see :class:`Glossary`) that overlaps none
    of the spans ``taken``: an exact one if there is one."""
    for pattern in _term_patterns(term):
        for match in re.finditer(pattern, line):
            start, end = match.span()
            if all(end <= other_start or start >= other_end for other_start, other_end in taken):
                return start, end
    return None


def parse_glossary_line(line: str, origin: str, number: int) -> tuple[str, str]:
    """``(source term, target term)`` of one glossary line ``source term<TAB>target term``
    (spaces around each term dropped)."""
    where = f"{origin}:{number}"
    tabs = line.count("\t")
    if tabs != 1:
        problem = "no tab" if tabs == 0 else f"{tabs} tabs"
        raise TerminologyError(
            f"{where}: {problem}; write one entry per line as 'source term<TAB>target term' "
            "(exactly one tab; '#' starts a comment line)"
        )
    src_term, tgt_term = (term.strip() for term in line.split("\t"))
    for side, term in (("source", src_term), ("target", tgt_term)):
        if not term:
            raise TerminologyError(
                f"{where}: empty {side} term; write 'source term<TAB>target term'"
            )
    return src_term, tgt_term


def read_glossary(path: str | Path) -> Glossary:
    """The glossary in the TSV file ``path``: ``source term<TAB>target term`` per line; blank
    lines and lines starting with ``#`` are skipped; a source term given twice is refused."""
    entries: dict[str, tuple[str, int]] = {}  # source term -> (target term, line)
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        src_term, tgt_term = parse_glossary_line(line, str(path), number)
        if src_term in entries:
            raise TerminologyError(
                f"{path}:{number}: the source term {src_term!r} is already on line "
                f"{entries[src_term][1]}; keep one target term per source term"
            )
        entries[src_term] = (tgt_term, number)
    return Glossary(tuple((src, tgt) for src, (tgt, _) in entries.items()))
