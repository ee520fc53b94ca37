"""The toy corpus's second domain (data/toy-b): what the fine-tuning example adapts to."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY_A, TOY_B = ROOT / "data" / "toy", ROOT / "data" / "toy-b"


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_toy_corpus", ROOT / "scripts" / "make_toy_corpus.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_domain_b_regenerates_byte_for_byte(tmp_path):
    script = ROOT / "scripts" / "make_toy_corpus.py"
    subprocess.run(
        [sys.executable, script, "--domain", "b", "--out", tmp_path],
        check=True,
        capture_output=True,
    )
    names = sorted(path.name for path in TOY_B.iterdir())
    assert names == sorted(
        f"{split}.{side}" for split in ("train", "dev", "test") for side in ("src", "tgt", "align")
    )
    for name in names:
        assert (tmp_path / name).read_bytes() == (TOY_B / name).read_bytes(), name


def test_domain_b_shares_no_sentence_with_domain_a_and_brings_words_of_its_own():
    a_sources = {
        line for split in ("train", "dev", "test") for line in _lines(TOY_A / f"{split}.src")
    }
    b_sources = [
        line for split in ("train", "dev", "test") for line in _lines(TOY_B / f"{split}.src")
    ]
    assert len(set(b_sources)) == len(b_sources) == 1100
    assert not a_sources & set(b_sources)
    a_words = {word for line in a_sources for word in line.split()}
    b_words = [word for line in b_sources for word in line.split()]
    new_share = sum(word not in a_words for word in b_words) / len(b_words)
    assert 0.15 < new_share < 0.5  # half the nouns, adjectives and transitive verbs are new
    a_length = sum(len(line.split()) for line in a_sources) / len(a_sources)
    assert sum(len(line.split()) for line in b_sources) / len(b_sources) > a_length + 1


def test_domain_b_gold_alignments_translate_word_for_word():
    _, _, dictionary = _script().make_corpora()
    for split in ("train", "dev", "test"):
        rows = zip(
            _lines(TOY_B / f"{split}.src"), _lines(TOY_B / f"{split}.tgt"),
            _lines(TOY_B / f"{split}.align"), strict=True,
        )  # fmt: skip
        for src, tgt, align in rows:
            src_words, tgt_words = src.split(), tgt.split()
            links = [tuple(map(int, link.split("-"))) for link in align.split()]
            assert sorted(j for _, j in links) == list(range(len(tgt_words)))
            assert all(tgt_words[j] == dictionary[src_words[i]] for i, j in links)
