"""Constraints files, inline constraints and glossaries: what they yield, and that every bad
input is one error naming the file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from seq2seq_attn.corpus import TextFileError, iter_lines
from seq2seq_attn.terminology import (
    Glossary,
    TerminologyError,
    parse_constraints_line,
    read_glossary,
    split_inline_constraints,
)


def write(path: Path, text: str) -> Path:
    """``text`` written to ``path`` as UTF-8, as is (no newline translation)."""
    path.write_bytes(text.encode("utf-8"))
    return path


# ----- constraints files --------------------------------------------------------------------


def read_constraints(path: Path) -> list[list[str]]:
    """Per line of ``path``, its phrases, read as attn-translate reads a constraints file."""
    return [parse_constraints_line(line, str(path), number) for number, line in iter_lines(path)]


def test_a_constraints_file_gives_each_line_its_phrases(tmp_path):
    path = write(tmp_path / "c.jsonl", '["grünes Haus", "Tür"]\n\n[]\r\n  ["a \\"b\\""]  \n')
    assert read_constraints(path) == [["grünes Haus", "Tür"], [], [], ['a "b"']]


def test_a_gzipped_constraints_file_is_read(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(b'["x"]\n[]\n'))
    assert read_constraints(path) == [["x"], []]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('["open"', r"c\.jsonl:2: not valid JSON \(.* at column 8\); write a JSON list"),
        ("Haus", r"c\.jsonl:2: not valid JSON"),
        ('"Haus"', r'c\.jsonl:2: expected a JSON list of strings, got "Haus"'),
        ('{"a": 1}', r'c\.jsonl:2: expected a JSON list of strings, got \{"a": 1\}'),
        ('["ok", 3]', r'c\.jsonl:2: expected a JSON list of strings, got \["ok", 3\]'),
        ('["ok", ""]', r"c\.jsonl:2: phrase 2 is empty; remove it"),
        ('["  "]', r"c\.jsonl:2: phrase 1 is empty"),
    ],
)
def test_bad_constraints_lines_name_the_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path / "c.jsonl", f'["fine"]\n{bad_line}\n[]\n')
    with pytest.raises(TerminologyError, match=message):
        read_constraints(path)


def test_unreadable_constraints_files_are_text_file_errors(tmp_path):
    with pytest.raises(TextFileError, match=r"missing\.jsonl: cannot read"):
        read_constraints(tmp_path / "missing.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'["x"]\n["\xe9"]\n')
    with pytest.raises(TextFileError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        read_constraints(path)
    assert issubclass(TerminologyError, ValueError)


# ----- inline constraints -------------------------------------------------------------------


def test_inline_constraints_follow_the_source_after_tabs():
    sources, phrases = split_inline_constraints(
        ["ein Haus\thouse\tred door", "no constraints here", "", "x\ty"], "in.txt"
    )
    assert sources == ["ein Haus", "no constraints here", "", "x"]
    assert phrases == [["house", "red door"], [], [], ["y"]]


@pytest.mark.parametrize(("line", "column"), [("src\t", 2), ("src\ta\t\tb", 3), ("src\ta\t ", 3)])
def test_empty_inline_phrases_name_the_line_and_column(line, column):
    with pytest.raises(TerminologyError, match=rf"<stdin>:2: column {column} .* is empty"):
        split_inline_constraints(["fine\tok", line], "<stdin>")


# ----- glossaries ---------------------------------------------------------------------------


def test_a_glossary_skips_comments_and_blank_lines(tmp_path):
    path = write(tmp_path / "g.tsv", "# de\ten\n\nHaus\thouse\n  grünes Haus \t green house\n")
    assert read_glossary(path).entries == (("Haus", "house"), ("grünes Haus", "green house"))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("Haus house", r"g\.tsv:3: no tab; write one entry per line as 'source term<TAB>"),
        ("Haus\thouse\thome", r"g\.tsv:3: 2 tabs; write one entry"),
        ("\thouse", r"g\.tsv:3: empty source term"),
        ("Haus\t  ", r"g\.tsv:3: empty target term"),
        ("Tür\tgate", r"g\.tsv:3: the source term 'Tür' is already on line 2; keep one"),
    ],
)
def test_bad_glossary_lines_name_the_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path / "g.tsv", f"# comment\nTür\tdoor\n{bad_line}\n")
    with pytest.raises(TerminologyError, match=message):
        read_glossary(path)


GLOSSARY = Glossary(
    (
        ("Haus", "house"),
        ("grünes Haus", "green house"),
        ("New York", "New York"),
        ("New York City", "NYC"),
        ("US", "USA"),
        ("Tür", "door"),
        ("Pforte", "door"),
        ("C++", "C++"),
    )
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Das Haus ist rot.", ["house"]),
        ("Ein Hausboot und ein Reihenhaus.", []),  # whole words only
        ("Das grüne Haus", ["house"]),  # "grüne" is not "grünes"
        ("Ein grünes Haus, ein Haus.", ["green house", "house"]),  # longest first, no overlap
        ("Ein grünes  Haus.", ["green house"]),  # any whitespace inside a term
        ("haus am see", ["house"]),  # a first letter in the other case
        ("Grünes haus", ["green house"]),
        ("in New York City", ["NYC"]),
        ("new york und new york city", ["New York", "NYC"]),  # in the order they occur
        ("us and US", ["USA"]),  # "us" is not the acronym
        ("Tür und Pforte und Tür", ["door"]),  # each target term once
        ("C++ und C", ["C++"]),
        ("", []),
    ],
)
def test_the_glossary_finds_whole_source_terms(line, expected):
    assert GLOSSARY.constraints_for(line) == expected


def test_an_exact_case_match_is_preferred():
    glossary = Glossary((("Bank", "bank"), ("Ufer", "shore")))
    assert glossary.constraints_for("bank Ufer Bank") == ["shore", "bank"]  # "Bank" at 10
    assert glossary.constraints_for("bank Ufer") == ["bank", "shore"]  # else "bank" at 0
