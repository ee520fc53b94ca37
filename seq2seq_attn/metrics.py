"""Corpus-level BLEU, chrF and TER from sacreBLEU, each with its signature, and lowercased BLEU
on Moses-tokenized text (sacremoses, the optional ``moses`` extra, imported only when used).

Scores are computed on detokenized text, exactly as the ``sacrebleu`` command line computes them,
so the numbers are comparable with published ones that quote the same signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version

from sacrebleu.metrics import BLEU, CHRF, TER

METRICS = ("bleu", "chrf", "ter")
"""Metric names accepted by :func:`corpus_scores`."""


@dataclass(frozen=True)
class Score:
    """One corpus score: ``name`` (``BLEU``, ``chrF2``, ``TER``), ``score``, sacreBLEU's full
    line (``text``, e.g. ``BLEU = 35.1 66.2/41.9/28.3/19.4 (BP = ...)``) and its ``signature``."""

    name: str
    score: float
    text: str
    signature: str


def corpus_scores(
    hypotheses: Sequence[str],
    references: Sequence[str],
    metrics: Sequence[str] = ("bleu", "chrf"),
    lowercase: bool = False,
    tokenize: str = "13a",
) -> dict[str, Score]:
    """Score detokenized ``hypotheses`` against one ``references`` stream, line by line.

    Args:
        hypotheses: one translation per line.
        references: the reference of each line, same count.
        metrics: any of :data:`METRICS`.
        lowercase: case-insensitive BLEU (sacreBLEU ``-lc``). chrF and TER keep sacreBLEU's
            defaults (chrF cased, TER case-insensitive), as the command line does.
        tokenize: BLEU's tokenizer (sacreBLEU ``-tok``): ``13a`` (the default) for detokenized
            text, ``none`` for text tokenized already (for example by Moses).

    Returns:
        ``{metric name: Score}`` in the order asked.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: "
            "the files must be line-aligned"
        )
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    scorers = {
        "bleu": BLEU(lowercase=lowercase, tokenize=tokenize),
        "chrf": CHRF(),
        "ter": TER(),
    }
    scores = {}
    for name in metrics:
        scorer = scorers[name]
        result = scorer.corpus_score(list(hypotheses), [list(references)])
        signature = str(scorer.get_signature())
        scores[name] = Score(result.name, result.score, result.format(), signature)
    return scores


def moses_lowercased_bleu(
    hypotheses: Sequence[str], references: Sequence[str], lang: str
) -> Score | None:
    """Lowercased BLEU on Moses-tokenized text, as papers on Multi30k often report it: each line
    lowercased, its punctuation normalized and Moses-tokenized for ``lang`` (sacremoses, no XML
    escaping: it changes no BLEU), then sacreBLEU with ``-lc -tok none``, as the Multi30k
    release prepares its tokenized files. The signature names the sacremoses steps before
    sacreBLEU's own. None when sacremoses (the ``moses`` extra) is not installed."""
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError:
        return None
    normalizer, tokenizer = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)

    def tokenized(lines: Sequence[str]) -> list[str]:
        return [
            tokenizer.tokenize(normalizer.normalize(line.lower()), escape=False, return_str=True)
            for line in lines
        ]

    bleu = corpus_scores(
        tokenized(hypotheses), tokenized(references), ("bleu",), lowercase=True, tokenize="none"
    )["bleu"]
    steps = f"lowercase | sacremoses {version('sacremoses')} -l {lang} normalize tokenize"
    return replace(bleu, signature=f"{steps} | {bleu.signature}")
