"""attn-translate's steering options on a briefly trained toy model: constraints (file, tabs,
glossary), prefixes, sampling and alignments, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest
from test_translate_cli import run_dir, source_lines, translate_cli  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_constraints_file_puts_every_phrase_in_its_line(run_dir, corpus, tmp_path):  # noqa: F811
    lines = source_lines(corpus, 4)
    references = (corpus / "dev.tgt").read_text(encoding="utf-8").splitlines()[:4]
    phrases = [[ref.split()[-1]] for ref in references]
    phrases[1] = [references[1].split()[0], references[1].split()[-2]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(p) + "\n" for p in phrases))
    result = translate_cli(run_dir, tmp_path / "in.txt", "--constraints", tmp_path / "c.jsonl")
    assert result.exit_code == 0, result.output
    outputs = result.stdout.splitlines()
    assert len(outputs) == 4
    for output, line_phrases in zip(outputs, phrases, strict=True):
        assert all(phrase in output for phrase in line_phrases), (output, line_phrases)


def test_tab_constraints_and_glossary_agree_with_the_file(run_dir, corpus, tmp_path):  # noqa: F811
    line = source_lines(corpus, 1)[0]
    target_word = "zzqx"  # not in the toy vocabulary: spelled out in pieces
    tabbed = translate_cli(run_dir, "--tab-constraints", stdin=f"{line}\t{target_word}\n")
    assert tabbed.exit_code == 0, tabbed.output
    assert target_word in tabbed.stdout
    source_word = line.split()[1]
    (tmp_path / "g.tsv").write_text(f"# term list\n{source_word}\t{target_word}\n")
    glossary = translate_cli(run_dir, "--glossary", tmp_path / "g.tsv", stdin=line + "\n")
    assert glossary.exit_code == 0, glossary.output
    assert glossary.stdout == tabbed.stdout


def test_prefix_starts_each_translation(run_dir, corpus, tmp_path):  # noqa: F811
    lines = source_lines(corpus, 3)
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "prefix.txt").write_text("wowo cuyo\n\nja\n")
    result = translate_cli(run_dir, tmp_path / "in.txt", "--prefix", tmp_path / "prefix.txt")
    assert result.exit_code == 0, result.output
    first, _, third = result.stdout.splitlines()
    assert first.startswith("wowo cuyo") and third.startswith("ja")


def test_sampling_is_reproducible_and_gives_n_samples(run_dir, corpus):  # noqa: F811
    stdin = "\n".join(source_lines(corpus, 3)) + "\n"
    options = ["--sample", "--n-best", "4", "--temperature", "1.5"]
    first = translate_cli(run_dir, *options, "--seed", "7", stdin=stdin)
    again = translate_cli(run_dir, *options, "--seed", "7", stdin=stdin)
    other = translate_cli(run_dir, *options, "--seed", "8", stdin=stdin)
    assert first.exit_code == 0, first.output
    assert first.stdout == again.stdout != other.stdout
    indices = [line.split(" ||| ")[0] for line in first.stdout.splitlines()]
    assert indices == ["0"] * 4 + ["1"] * 4 + ["2"] * 4


def test_alignments_file_has_a_line_per_input_within_the_words(run_dir, corpus, tmp_path):  # noqa: F811
    lines = [*source_lines(corpus, 2), ""]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = translate_cli(
        run_dir, tmp_path / "in.txt", "-o", tmp_path / "out.txt", "--alignments", tmp_path / "a"
    )
    assert result.exit_code == 0, result.output
    outputs = (tmp_path / "out.txt").read_text().splitlines()
    alignment_lines = (tmp_path / "a").read_text().split("\n")[:-1]
    assert len(alignment_lines) == 3 and alignment_lines[2] == ""
    for source, output, links in zip(lines[:2], outputs, alignment_lines, strict=False):
        pairs = [tuple(map(int, link.split("-"))) for link in links.split()]
        assert sorted({j for _, j in pairs}) == list(range(len(output.split())))
        assert all(0 <= i < len(source.split()) for i, _ in pairs)
    bad = translate_cli(run_dir, "--alignments", tmp_path / "b", "--alignment-layer", "5",
                        stdin=lines[0] + "\n")  # fmt: skip
    assert bad.exit_code == 2 and "--alignments" in bad.output


@pytest.mark.parametrize(
    ("file_text", "options", "message"),
    [
        ('["a"]\n', ["--constraints"], "has 1 lines but stdin has 2; write one JSON list"),
        ('["a"]\n[]\n["b"]\n', ["--constraints"], "has 3 lines but stdin has 2"),
        ('["a"]\n["b"\n', ["--constraints"], ":2: not valid JSON"),
        ("haus house\n", ["--glossary"], ":1: no tab"),
        ("one\n", ["--prefix"], "has 1 lines but stdin has 2"),
        ("one\n\nthree\n", ["--prefix"], "has 3 lines but stdin has 2"),
    ],
)
def test_bad_guide_files_name_the_file_and_line(
    run_dir,  # noqa: F811
    corpus,
    tmp_path,
    file_text,
    options,
    message,
):
    guide = tmp_path / "guide"
    guide.write_text(file_text)
    stdin = "\n".join(source_lines(corpus, 2)) + "\n"
    result = translate_cli(run_dir, *options, guide, stdin=stdin)
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert str(guide) in flat and message in flat, flat


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--sample", "--top-p", "0"], "--top-p 0.0"),
        (["--sample", "--temperature", "0"], "--temperature"),
        (["--sample", "--beam", "3"], "choose one"),
        (["--sample", "--tab-constraints"], "constraints need beam search"),
    ],
)
def test_bad_option_combinations_are_one_clear_error(run_dir, options, message):  # noqa: F811
    result = translate_cli(run_dir, *options, stdin="x\n")
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_constraint_longer_than_the_limit_is_a_warning_naming_the_line(run_dir, corpus):  # noqa: F811
    lines = source_lines(corpus, 2)
    too_long = " ".join(["wowo"] * 60)  # more pieces than the model's 48 positions
    stdin = f"{lines[0]}\n{lines[1]}\t{too_long}\n"
    result = translate_cli(run_dir, "--tab-constraints", stdin=stdin)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    flat = " ".join(result.stderr.split())
    assert "line 2: 1 of 1 constraint(s) could not be placed" in flat, flat
    assert "line 1:" not in flat
