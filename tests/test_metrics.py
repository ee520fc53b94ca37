"""Our sacreBLEU wrapper gives the numbers and signatures of the sacrebleu command line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from seq2seq_attn.metrics import corpus_scores, moses_lowercased_bleu

WORDS = [
    "a",
    "man",
    "in",
    "a",
    "blue",
    "shirt",
    "is",
    "riding",
    "his",
    "bike",
    "down",
    "the",
    "street",
    "while",
    "two",
    "dogs",
    "Run",
    ".,",
]


def noisy_corpus(seed: int, size: int = 60) -> tuple[list[str], list[str]]:
    """References and hypotheses that share some n-grams (words dropped, swapped, recased)."""
    rng = random.Random(seed)
    references, hypotheses = [], []
    for _ in range(size):
        reference = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        hypothesis = [word for word in reference if rng.random() > 0.2]
        if len(hypothesis) > 2 and rng.random() < 0.5:
            i = rng.randrange(len(hypothesis) - 1)
            hypothesis[i], hypothesis[i + 1] = hypothesis[i + 1], hypothesis[i]
        hypothesis = [w.upper() if rng.random() < 0.1 else w for w in hypothesis]
        references.append(" ".join(reference))
        hypotheses.append(" ".join(hypothesis))
    return hypotheses, references


def sacrebleu_cli(hyp_file: Path, ref_file: Path, *flags: str) -> list[dict]:
    """The sacrebleu command line's JSON output for the three metrics."""
    executable = Path(sys.executable).parent / "sacrebleu"
    command = [executable, str(ref_file), "-i", str(hyp_file), "-m", "bleu", "chrf", "ter"]
    result = subprocess.run([*command, *flags], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize(("lowercase", "tokenize"), [(False, "13a"), (True, "13a"), (True, "none")])
def test_scores_and_signatures_equal_the_sacrebleu_command_line(tmp_path, lowercase, tokenize):
    hypotheses, references = noisy_corpus(seed=3)
    hyp_file, ref_file = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp_file.write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    ref_file.write_text("\n".join(references) + "\n", encoding="utf-8")
    flags = ["-tok", tokenize, *(["-lc"] if lowercase else [])]
    expected = sacrebleu_cli(hyp_file, ref_file, *flags)
    metrics = ("bleu", "chrf", "ter")
    ours = corpus_scores(hypotheses, references, metrics, lowercase=lowercase, tokenize=tokenize)
    assert [score.name for score in ours.values()] == [entry["name"] for entry in expected]
    for score, entry in zip(ours.values(), expected, strict=True):
        assert score.score == pytest.approx(entry["score"], abs=0.05)  # CLI rounds to 1 decimal
        assert score.signature == entry["signature"]
    assert 0 < ours["bleu"].score < 100
    assert ours["bleu"].text.startswith("BLEU = ")
    if tokenize == "none":  # ".," stays one token, so the score is not the 13a one
        default = corpus_scores(hypotheses, references, ("bleu",), lowercase=lowercase)["bleu"]
        assert abs(default.score - ours["bleu"].score) > 0.1


def test_lowercase_bleu_ignores_case():
    hypothesis, reference = ["A Man Rides A Red Bike"], ["a man rides a red bike"]
    cased = corpus_scores(hypothesis, reference, ("bleu",))["bleu"]
    lowered = corpus_scores(hypothesis, reference, ("bleu",), lowercase=True)["bleu"]
    assert lowered.score == pytest.approx(100.0)
    assert cased.score < lowered.score
    assert "|lc|" in lowered.signature or "case:lc" in lowered.signature


def test_misaligned_or_unknown_metric_is_an_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown metric"):
        corpus_scores(["a"], ["a"], ("meteor",))


def test_moses_bleu_equals_the_sacremoses_and_sacrebleu_command_lines(tmp_path):
    pytest.importorskip("sacremoses", reason="the moses extra is not installed")
    references = [
        "Ein Mann (mit Hut) geht\u2019s an: \u201eStraßen-Café\u201c!",  # curly quotes: normalized
        "Zwei Hunde, 3.5 km weit.",
    ]
    hypotheses = ['ein Mann mit Hut geht\'s an: "Straßen-Café"', "Zwei Hunde , 3.5 km weit ."]
    files = {}
    for name, lines in (("ref", references), ("hyp", hypotheses)):
        tokenized = subprocess.run(
            [Path(sys.executable).with_name("sacremoses"), "-l", "de", "-j", "1", "-q",
             "normalize", "tokenize"], input="".join(line.lower() + "\n" for line in lines),
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        files[name] = tmp_path / name
        files[name].write_text(tokenized, encoding="utf-8")
    command = [Path(sys.executable).with_name("sacrebleu"), files["ref"], "-i", files["hyp"],
               "-b", "-w", "4", "-m", "bleu", "-lc", "-tok", "none"]  # fmt: skip
    expected = float(subprocess.run(command, capture_output=True, check=True, text=True).stdout)
    ours = moses_lowercased_bleu(hypotheses, references, "de")
    assert ours.score == pytest.approx(expected, abs=1e-3)
    detokenized = corpus_scores(hypotheses, references, ("bleu",), lowercase=True)["bleu"]
    assert abs(ours.score - detokenized.score) > 1  # the tokenization is not sacreBLEU's 13a
    bleu_signature = corpus_scores(["a"], ["a"], ("bleu",), lowercase=True, tokenize="none")
    assert ours.signature == (  # what the report prints: the steps, then sacreBLEU's signature
        f"lowercase | sacremoses {version('sacremoses')} -l de normalize tokenize | "
        f"{bleu_signature['bleu'].signature}"
    )


def test_moses_bleu_is_none_without_sacremoses(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # what an absent package imports as
    assert moses_lowercased_bleu(["a b"], ["a b"], "en") is None
