"""Corpus cleaning (``data.clean``): the filters, their counts, the cache key, config errors and
the log line, on a corpus holding each kind of bad pair."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from seq2seq_attn.config import CleanConfig, ConfigError, DataConfig, TokenizerConfig, load_config
from seq2seq_attn.corpus import (
    CleanReport,
    has_invalid_chars,
    non_letter_share,
    pair_hash,
    rejecting_filter,
)
from seq2seq_attn.data import load_split
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer

GOOD = [
    ("ein Hund", "a dog"),
    ("zwei Katzen", "two cats"),
    ("drei Mäuse laufen", "three mice run"),
    ("ein\tBaum", "a tree"),  # a tab is no control character to drop
    ("zehn\u00a0Euro", "ten euros"),  # nor a no-break space
    ("می\u200cخواهم", "I want"),  # noqa: RUF001 (Persian, with a zero-width non-joiner)
    ("नमस्ते दुनिया", "hello world"),  # vowel signs (marks) count as letters
    ("a b c", "x"),  # a ratio of exactly 3 stays
]
BAD = {
    "identical": [("Berlin", "Berlin"), ("  ok ", "ok")],
    "control_chars": [
        ("zwei\x07 Katzen", "two cats"),
        ("ein Hund", "a\u200b dog"),  # zero-width space: format (Cf)
        ("drei\ufffd Mäuse", "three mice"),
        ("\ue000 Haus", "house"),  # private use
    ],
    "non_letters": [("12:30 - 14:45", "12:30 - 14:45 Uhr"), ("Seite 1/2 (3%)", "page 1/2 (3%)")],
    "length_ratio": [("eins zwei drei vier", "one"), ("ja", "yes of course indeed")],
    "duplicate": [GOOD[0], GOOD[1], GOOD[1]],  # later copies of pairs kept before
}
EXPECTED = CleanReport(**{name: len(pairs) for name, pairs in BAD.items()})
ALL_ON = CleanConfig(
    max_length_ratio=3.0,
    drop_identical=True,
    drop_duplicates=True,
    drop_control_chars=True,
    max_non_letter_share=0.5,
)
ONLY = {
    "identical": CleanConfig(drop_identical=True),
    "control_chars": CleanConfig(drop_control_chars=True),
    "non_letters": CleanConfig(max_non_letter_share=0.5),
    "length_ratio": CleanConfig(max_length_ratio=3.0),
    "duplicate": CleanConfig(drop_duplicates=True),
}


def corpus_pairs() -> list[tuple[str, str]]:
    """GOOD first (a duplicate keeps its first copy), then the bad pairs, one empty pair, and
    the last pair a duplicate of the first (another process's shard when split in two)."""
    bad = [pair for name, pairs in BAD.items() if name != "duplicate" for pair in pairs]
    return [*GOOD, *bad, ("", "lonely"), *BAD["duplicate"][1:], BAD["duplicate"][0]]


def write_corpus(directory: Path, pairs: list[tuple[str, str]], name: str = "train") -> str:
    """``{name}.de`` / ``{name}.en`` holding ``pairs``; the prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, lang in enumerate(("de", "en")):
        text = "".join(pair[index] + "\n" for pair in pairs)
        (directory / f"{name}.{lang}").write_text(text, encoding="utf-8")
    return str(directory / name)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small SentencePiece model covering every character of the test corpus."""
    pairs = corpus_pairs() * 5
    return train_tokenizer(
        [p[0] for p in pairs], [p[1] for p in pairs], TokenizerConfig(vocab_size=120)
    )


@pytest.fixture
def prefix(tmp_path) -> str:
    """The test corpus (:func:`corpus_pairs`) written as plain files; their prefix."""
    return write_corpus(tmp_path / "corpus", corpus_pairs())


def data_cfg(tmp_path: Path, prefix: str, clean: CleanConfig, **kwargs) -> DataConfig:
    """The test corpus as train and dev, cached under ``tmp_path/cache``, cleaned by ``clean``."""
    return DataConfig(
        train=prefix, dev=prefix, cache_dir=str(tmp_path / "cache"), clean=clean, **kwargs
    )


def rows(ds) -> list[tuple[str, str]]:
    """The text pairs of a split, in order."""
    return list(zip(ds["src"], ds["tgt"], strict=True))


def processed(tmp_path: Path) -> set[str]:
    """The names of the derived Arrow files in the cache."""
    return {path.name for path in (tmp_path / "cache" / "processed").iterdir()}


# ---- the filters on text --------------------------------------------------------------------


def test_invalid_characters():
    for text in (
        "a\tb",
        "zehn\u00a0Euro",
        GOOD[5][0],
        "👩\u200d👩",
        "Straße",
        "\ufeffBOM",
        "\u0378",
    ):
        assert not has_invalid_chars(text), text
    for text in ("a\x07b", "a\rb", "a\ufeffb", "a\u200bb", "\ue000", "a\ufffd"):
        assert has_invalid_chars(text), repr(text)


def test_non_letter_share():
    assert non_letter_share("नमस्ते") == 0.0  # marks are letters here
    assert non_letter_share("ab 12") == 0.5  # whitespace is not counted
    assert non_letter_share("   ") == 0.0


def test_filters_are_tried_in_order_and_hashes_tell_pairs_apart():
    on = {"drop_identical": True, "drop_control_chars": True, "max_length_ratio": 1.5}
    assert rejecting_filter("a\x07", "a\x07", **on) == "identical"
    assert rejecting_filter("a\x07 b c", "x", **on) == "control_chars"
    assert rejecting_filter("a b c", "x", **on) == "length_ratio"
    assert rejecting_filter("a b c", "x") is None  # every filter off
    assert pair_hash("ab", "c") != pair_hash("a", "bc")
    assert pair_hash("ab", "c") == pair_hash("ab", "c")


# ---- cleaning a split ---------------------------------------------------------------------


@pytest.mark.parametrize("num_proc", [1, 2])
def test_each_filter_drops_its_pairs_and_counts_them(tmp_path, prefix, tokenizer, num_proc):
    cfg = data_cfg(tmp_path, prefix, ALL_ON, num_proc=num_proc)
    ds, report = load_split(cfg, "train", tokenizer)
    assert report.cleaned == EXPECTED
    assert (report.total, report.empty, report.too_long) == (len(corpus_pairs()), 1, 0)
    assert rows(ds) == GOOD and report.kept == len(GOOD)
    assert f"dropped 1 empty, {EXPECTED.dropped} by cleaning and 0" in str(report)


@pytest.mark.parametrize("name", list(ONLY))
def test_one_filter_alone(tmp_path, prefix, tokenizer, name):
    _, report = load_split(data_cfg(tmp_path, prefix, ONLY[name]), "train", tokenizer)
    assert report.cleaned == CleanReport(**{name: len(BAD[name])})


def test_dev_is_never_cleaned(tmp_path, prefix, tokenizer):
    dev, report = load_split(data_cfg(tmp_path, prefix, ALL_ON), "dev", tokenizer)
    assert report.cleaned is None and len(dev) == len(corpus_pairs()) - 1  # the empty pair


def test_the_default_drops_nothing_more_than_before(tmp_path, prefix, tokenizer):
    assert DataConfig().clean == CleanConfig() and not CleanConfig().enabled
    ds, report = load_split(data_cfg(tmp_path, prefix, CleanConfig()), "train", tokenizer)
    assert report.cleaned is None and str(report).endswith(
        f"dropped 1 empty and 0 over the length limit, kept {len(corpus_pairs()) - 1}"
    )
    assert rows(ds) == [pair for pair in corpus_pairs() if pair[0]]
    steps = processed(tmp_path)  # drop-empty, tokenize and drop-long: the same files as before
    assert len(steps) == 3


def test_a_cache_built_without_cleaning_is_not_reused_with_it(tmp_path, prefix, tokenizer):
    plain, _ = load_split(data_cfg(tmp_path, prefix, CleanConfig()), "train", tokenizer)
    built = processed(tmp_path)
    cleaned, _ = load_split(data_cfg(tmp_path, prefix, ALL_ON), "train", tokenizer)
    assert len(plain) == len(corpus_pairs()) - 1 and rows(cleaned) == GOOD
    with_cleaning = processed(tmp_path)
    assert with_cleaning > built  # cleaned and tokenized anew
    again, _ = load_split(data_cfg(tmp_path, prefix, CleanConfig()), "train", tokenizer)
    cleaned_again, _ = load_split(data_cfg(tmp_path, prefix, ALL_ON), "train", tokenizer)
    assert (again[:], cleaned_again[:]) == (plain[:], cleaned[:])
    assert processed(tmp_path) == with_cleaning  # both caches reused, each for its own settings
    looser = replace(ALL_ON, max_length_ratio=4.0)  # other settings: another cache
    looser_ds, _ = load_split(data_cfg(tmp_path, prefix, looser), "train", tokenizer)
    assert rows(looser_ds) == [*GOOD, *BAD["length_ratio"]]


def test_a_cache_built_with_cleaning_is_not_reused_without_it(tmp_path, prefix, tokenizer):
    cleaned, _ = load_split(data_cfg(tmp_path, prefix, ALL_ON), "train", tokenizer)
    plain, report = load_split(data_cfg(tmp_path, prefix, CleanConfig()), "train", tokenizer)
    assert rows(cleaned) == GOOD
    assert rows(plain) == [pair for pair in corpus_pairs() if pair[0]] and report.cleaned is None


def test_the_counts_are_logged(tmp_path, prefix, tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="seq2seq_attn.data"):
        load_split(data_cfg(tmp_path, prefix, ALL_ON), "train", tokenizer)
    assert (
        "train: cleaning dropped 2 identical, 3 duplicate, 4 with invalid or control characters,"
        " 2 over the non-letter share, 2 over the length ratio (13 pairs), kept 8" in caplog.text
    )


# ---- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.clean.drop_identical=maybe", "data.clean.drop_identical: expected true or false"),
        ("data.clean.max_length_ratio=0.5", "data.clean.max_length_ratio: invalid value 0.5"),
        ("data.clean.max_non_letter_share=1.5", "data.clean.max_non_letter_share: invalid"),
        ("data.clean.drop_dupes=true", "did you mean 'data.clean.drop_duplicates'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, override, message):
    path = tmp_path / "config.yaml"
    path.write_text("data: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_set_overrides_reach_the_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  clean:\n    max_length_ratio: 3\n", encoding="utf-8")
    clean = load_config(path, ["data.clean.drop_identical=true"]).data.clean
    assert clean == CleanConfig(max_length_ratio=3.0, drop_identical=True) and clean.enabled


def test_training_writes_the_counts_to_train_log(tmp_path, corpus, one_thread):
    src, tgt = (
        (corpus / f"train.{side}").read_text(encoding="utf-8").splitlines()
        for side in ("src", "tgt")
    )
    pairs = list(zip(src, tgt, strict=True))
    prefix = write_corpus(tmp_path, [*pairs, pairs[0], pairs[1], ("same words", "same words")])
    config = {
        "data": {"train": prefix, "dev": "", "test": "", "max_tokens": 256, "max_length": 40,
                 "cache_dir": str(tmp_path / "cache")},
        "tokenizer": {"vocab_size": 64},
        "model": {"family": "rnn", "max_positions": 64,
                  "rnn": {"embedding_size": 8, "hidden_size": 8, "attention_size": 8}},
        "train": {"max_steps": 1, "validate_every": 0, "save_every": 0, "precision": "fp32"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = tmp_path / "run"
    clean = ["--set", "data.clean.drop_identical=true", "--set", "data.clean.drop_duplicates=true"]
    # a process of its own, as a user runs it (an in-process run leaves the CLI's consoles as
    # the training run set them for the tests that follow)
    command = [str(Path(sys.executable).parent / "attn-train"), str(path), "--run-dir",
               str(run_dir), "--device", "cpu", *clean]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "train: cleaning dropped 1 identical, 2 duplicate, 0 with" in log
    assert f"(3 pairs), kept {len(pairs)}" in log
