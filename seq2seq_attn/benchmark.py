"""The Multi30k benchmark's rules and reports (:mod:`~seq2seq_attn.benchmark_run` applies
them to trained runs, ``scripts/reproduce.py`` drives it all): which checkpoint and length
penalty translate the test sets, the scores of a test set, the published anchors, and the JSON
and Markdown reports.

Standard library and :mod:`~seq2seq_attn.metrics` only: translation comes in as functions
(the dev BLEU of a candidate) and the numbers as plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .metrics import corpus_scores, moses_lowercased_bleu

T = TypeVar("T")

AVERAGE_LAST = (5, 10)
"""Checkpoint averaging: the numbers of last checkpoints whose means are candidates."""
LENGTH_PENALTIES = (0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
"""The length penalties tried with the beam on the dev set."""


@dataclass(frozen=True)
class Anchor:
    """A published test_2016_flickr score to set beside ours."""

    bleu_lc: float
    what: str


ANCHORS = {
    ("de-en", "transformer"): Anchor(
        36.5, "9M-parameter Transformer, a well-known PyTorch seq2seq tutorial (greedy, lowercased)"
    ),
    ("de-en", "rnn-bahdanau"): Anchor(
        28.3, "GRU with Bahdanau attention, the same tutorial series (greedy, lowercased)"
    ),
    ("en-de", "transformer"): Anchor(
        41.0,
        "text-only Transformer-tiny, Wu et al. 2021 (lowercased BLEU on Moses-tokenized text: "
        "close to, not the same as, sacreBLEU's -lc on detokenized text)",
    ),
}


def averages_to_try(
    recent: Mapping[int, T], average_last: Sequence[int] = AVERAGE_LAST
) -> list[dict[int, T]]:
    """The checkpoint averages that are candidates, from a run's last checkpoints ``recent``
    (step -> checkpoint, oldest first, at least ``max(average_last)`` of them when the run has
    that many): the last N for each N of ``average_last`` (all there are when fewer), leaving
    out a "mean" of a single checkpoint and repeats."""
    found: list[dict[int, T]] = []
    for count in average_last:
        last = dict(list(recent.items())[-count:])
        if len(last) > 1 and last not in found:
            found.append(last)
    return found


def choose_checkpoint(
    candidates: Mapping[str, list[int]],
    greedy_dev_bleu: Callable[[str], float],
    beam_dev_bleu: Callable[[str, float], float],
    length_penalties: Sequence[float] = LENGTH_PENALTIES,
) -> dict:
    """The checkpoint and length penalty that translate the test sets, chosen on the dev set.

    Args:
        candidates: checkpoint name -> the steps it averages (empty for one checkpoint, such as
            ``best.pt``), in order of preference: a tie of greedy BLEU goes to the earlier one.
        greedy_dev_bleu: the greedy dev BLEU of a candidate.
        beam_dev_bleu: the beam dev BLEU of a candidate with a length penalty.
        length_penalties: tried on the chosen checkpoint; a tie goes to the smaller penalty.

    Returns:
        What ``checkpoint.json`` holds: ``checkpoint``, ``dev_bleu_greedy``, ``averaged_steps``
        (of the averaged candidates), ``length_penalty``, ``dev_bleu_beam`` (keyed by the
        penalty as text).
    """
    greedy = {name: greedy_dev_bleu(name) for name in candidates}
    chosen = max(greedy, key=lambda name: greedy[name])
    beam = {penalty: beam_dev_bleu(chosen, penalty) for penalty in length_penalties}
    top = max(beam.values())
    return {
        "checkpoint": chosen,
        "dev_bleu_greedy": greedy,
        "averaged_steps": {name: steps for name, steps in candidates.items() if steps},
        "length_penalty": min(penalty for penalty, bleu in beam.items() if bleu == top),
        "dev_bleu_beam": {str(penalty): bleu for penalty, bleu in beam.items()},
    }


def score_test_set(
    hypotheses: list[str], references: list[str], moses_lang: str | None = None
) -> dict:
    """sacreBLEU's cased BLEU (default signature), lowercased BLEU (``-lc``) and chrF, with the
    signature of each; with ``moses_lang`` (the target language) also ``bleu_lc_moses``,
    lowercased BLEU on Moses-tokenized text, when sacremoses is installed."""
    cased = corpus_scores(hypotheses, references, ("bleu", "chrf"))
    lowercased = corpus_scores(hypotheses, references, ("bleu",), lowercase=True)["bleu"]
    scores = {
        "bleu": cased["bleu"].score,
        "bleu_lc": lowercased.score,
        "chrf": cased["chrf"].score,
        "signatures": {
            "bleu": cased["bleu"].signature,
            "bleu_lc": lowercased.signature,
            "chrf": cased["chrf"].signature,
        },
    }
    moses = (
        None if moses_lang is None else moses_lowercased_bleu(hypotheses, references, moses_lang)
    )
    if moses is not None:
        scores["bleu_lc_moses"] = moses.score
        scores["signatures"]["bleu_lc_moses"] = moses.signature
    return scores


def build_report(
    pair: str, models: dict[str, dict], machine: dict, finished: str, beam_size: int
) -> dict:
    """The JSON report: per model its training figures (``train``), checkpoint choice,
    test scores (``tests``, as :func:`score_test_set` gives them with ``sentences``, ``seconds``
    and ``precision`` added, and ``bleu_lc_moses`` where it was computed), attention
    pictures and learning curves."""
    report_models = {}
    for name, figures in models.items():
        tests = figures["tests"]
        sentences = sum(split["sentences"] for split in tests.values())
        seconds = sum(split["seconds"] for split in tests.values())
        anchor = ANCHORS.get((pair, name))
        report_models[name] = {
            **figures["train"],
            "checkpoint": figures["checkpoint"],
            "translate_sentences_per_s": sentences / seconds if seconds else None,
            "translate_precision": next(iter(tests.values()))["precision"] if tests else None,
            "tests": tests,
            "attention_pictures": figures["pictures"],
            "learning_curves": figures["curves"],
            "anchor": None if anchor is None else {"bleu_lc": anchor.bleu_lc, "what": anchor.what},
        }
    return {
        "pair": pair,
        "finished": finished,
        "beam_size": beam_size,
        "models": report_models,
        "machine": machine,
    }


def markdown_report(report: dict) -> str:
    """The report as Markdown: a summary table, the test scores, signatures and pictures."""
    pair, machine = report["pair"], report["machine"]
    gpu = machine["gpu"] or "no GPU"
    lines = [
        f"# Multi30k {pair}: results",
        "",
        f"Report written {report['finished']} on {machine['cpu']} "
        f"({machine['torch_threads']} torch thread{'' if machine['torch_threads'] == 1 else 's'}, "
        f"{gpu}), torch {machine['torch']}, "
        f"Python {machine['python']}. "
        f"Produced by `make reproduce PAIR={pair}`; test scores with beam {report['beam_size']} "
        "by the checkpoint chosen on the dev set (see Training).",
        "",
        *_summary_table(report["models"]),
        "",
        *_test_scores(report["models"]),
        "",
        "## Training",
        "",
        *(training_line(name, model) for name, model in report["models"].items()),
        "",
        *_pictures(report["models"]),
    ]
    return "\n".join(lines) + "\n"


def _summary_table(models: dict[str, dict]) -> list[str]:
    """The first table: one row per model, training figures and its test2016 scores."""
    lines = [
        "| model | params | steps (budget) | train min | precision train / translate "
        "| train tgt tokens/s | best dev BLEU (step) | test2016 BLEU | test2016 BLEU lc "
        "| test2016 BLEU lc, Moses-tokenized | published lc | beam-5 sentences/s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, model in models.items():
        test2016 = model["tests"].get("test_2016_flickr", {})
        anchor = model["anchor"]
        guard = " (time guard)" if model["stop_reason"] == "max_minutes" else ""
        lines.append(
            f"| {name} | {model['params'] / 1e6:.2f}M | {model['steps']} ({model['max_steps']})"
            f"{guard} | {model['train_minutes']:.1f} | {model['precision']} / "
            f"{model['translate_precision']} | {model['train_tokens_per_s']:,.0f} "
            f"| {model['best_dev_bleu']:.2f} ({model['best_step']}) | {_score(test2016, 'bleu')} "
            f"| {_score(test2016, 'bleu_lc')} | {_score(test2016, 'bleu_lc_moses')} "
            f"| {'' if anchor is None else format(anchor['bleu_lc'], '.1f')} "
            f"| {_rate(model['translate_sentences_per_s'])} |"
        )
    return lines


def _test_scores(models: dict[str, dict]) -> list[str]:
    """Every test set's scores, the sacreBLEU signatures and the published anchors."""
    lines = ["## Test sets (beam 5)", "",
             "| model | test set | BLEU | BLEU lc | BLEU lc, Moses-tokenized | chrF |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    signatures: dict[str, str] = {}
    for name, model in models.items():
        for split, scores in model["tests"].items():
            lines.append(
                f"| {name} | {split} | {scores['bleu']:.2f} | {scores['bleu_lc']:.2f} "
                f"| {_score(scores, 'bleu_lc_moses')} | {scores['chrf']:.2f} |"
            )
            signatures.update(scores["signatures"])
    lines += ["", "sacreBLEU signatures:", ""]
    lines += [f"- {metric}: `{signature}`" for metric, signature in signatures.items()]
    lines += ["", "Published anchors (lowercased BLEU on test_2016_flickr):", ""]
    lines += [
        f"- {name}: {model['anchor']['bleu_lc']:.1f}, {model['anchor']['what']}"
        for name, model in models.items()
        if model["anchor"] is not None
    ] or ["- none for this pair"]
    return lines


def _pictures(models: dict[str, dict]) -> list[str]:
    """The learning curves and attention heatmaps of every model, as Markdown images."""
    lines = ["## Learning curves", ""]
    for name, model in models.items():
        curves = model["learning_curves"]
        lines.append(f"![{name}: dev BLEU and loss against steps and minutes, {curves}]({curves})")
    lines += ["", "## Attention", ""]
    for name, model in models.items():
        for picture in model["attention_pictures"]:
            lines.append(f"![{name}: cross-attention, {picture}]({picture})")
    return lines


STOP_WORDS = {
    "max_steps": "its step budget",
    "max_epochs": "its epoch limit",
    "early_stopping": "early stopping",
    "max_minutes": "the time guard train.max_minutes (WARNING: before its step budget, so this "
    "figure depends on the machine's speed)",
}


def training_line(name: str, model: dict) -> str:
    """One model's training story: steps, budget, why it stopped, precision, checkpoint."""
    choice = model["checkpoint"]
    dev = ", ".join(f"{n} {b:.2f}" for n, b in choice["dev_bleu_greedy"].items())
    averaged = (
        "; ".join(
            f"{name} is the mean of the checkpoints of steps {', '.join(map(str, steps))}"
            for name, steps in choice["averaged_steps"].items()
        )
        or "no averaged checkpoint: the run has a single one"
    )
    penalties = ", ".join(f"{p} {b:.2f}" for p, b in choice["dev_bleu_beam"].items())
    guard = f"time guard {model['max_minutes']} min" if model["max_minutes"] else "no time guard"
    return (
        f"- {name}: {model['steps']} steps ({model['epochs']} epochs) in "
        f"{model['train_minutes']:.1f} min, trained in {model['precision']}; budget "
        f"{model['max_steps']} steps, {guard}; stopped by "
        f"{STOP_WORDS.get(model['stop_reason'], model['stop_reason'])}. The test sets are "
        f"translated by `{choice['checkpoint']}`, chosen on greedy dev BLEU ({dev}; "
        f"{averaged}), in {model['translate_precision']}, with length penalty "
        f"{choice['length_penalty']}, chosen on beam dev BLEU ({penalties})."
    )


def _score(scores: dict, key: str) -> str:
    """A score with two decimals, or a dash when missing."""
    return f"{scores[key]:.2f}" if key in scores else "-"


def _rate(value: float | None) -> str:
    """Sentences per second, or a dash."""
    return "-" if value is None else f"{value:.1f}"
