"""Terminology constraints on real data: how many appear, what they do to BLEU, what they cost.

Constraints are drawn from each line's reference (seeded): 1 or 2 non-overlapping phrases of 1
or 2 words (punctuation stripped from the words' ends), the situation of a translator who knows
how a term must come out. One loaded model translates the source without constraints, with 1
and with 2 per line, in interleaved rounds; the table gives, per setting, the share of
constraint phrases found in the outputs (as text; without constraints: the phrases drawn for
1 a line), sacreBLEU BLEU and chrF against the
reference, and the median sentences/s (decode only: the model is loaded once)::

    python scripts/bench_constraints.py runs/multi30k-de-en/transformer \\
        --source data/multi30k/test_2016_flickr.de --ref data/multi30k/test_2016_flickr.en

``--write-constraints DIR`` also writes the drawn constraints as the JSON-lines files that
``attn-translate --constraints`` reads.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time
from pathlib import Path

from seq2seq_attn.corpus import read_lines
from seq2seq_attn.metrics import corpus_scores
from seq2seq_attn.translation import TranslationSettings, open_translator

STRIPPED = (
    string.punctuation + "\u201c\u201d\u201e\u2018\u2019\u00ab\u00bb"
)  # and typographic quotes


def draw_constraints(reference: str, count: int, rng: random.Random) -> list[str]:
    """Up to ``count`` non-overlapping phrases of 1 or 2 words of ``reference``."""
    words = [word.strip(STRIPPED) for word in reference.split()]
    phrases: list[str] = []
    taken: set[int] = set()
    for _ in range(count):
        length = rng.choice((1, 2))
        starts = [
            start
            for start in range(len(words) - length + 1)
            if all(words[i] and i not in taken for i in range(start, start + length))
        ]
        if not starts:
            continue
        start = rng.choice(starts)
        taken.update(range(start, start + length))
        phrases.append(" ".join(words[start : start + length]))
    return phrases


def main() -> None:
    """Translate with 0, 1 and 2 constraints a line and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="checkpoint or run directory")
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--ref", type=Path, required=True)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--write-constraints", type=Path, help="write the drawn constraints here")
    args = parser.parse_args()

    sources, references = read_lines(args.source), read_lines(args.ref)
    rng = random.Random(args.seed)
    drawn = {count: [draw_constraints(ref, count, rng) for ref in references] for count in (1, 2)}
    if args.write_constraints is not None:
        args.write_constraints.mkdir(parents=True, exist_ok=True)
        for count, constraints in drawn.items():
            path = args.write_constraints / f"constraints-{count}.jsonl"
            path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in constraints))
    translator = open_translator(
        args.model, TranslationSettings(device="cpu", precision=args.precision, beam_size=args.beam)
    )
    settings = {0: None, 1: drawn[1], 2: drawn[2]}
    outputs: dict[int, list[str]] = {}
    rates: dict[int, list[float]] = {count: [] for count in settings}
    for _ in range(args.rounds):
        for count, constraints in settings.items():
            start = time.perf_counter()
            found = translator.n_best(sources, constraints=constraints)
            rates[count].append(len(sources) / (time.perf_counter() - start))
            texts = translator.detokenize([hypotheses[0] for hypotheses in found])
            if outputs.setdefault(count, texts) != texts:
                raise SystemExit(f"{count} constraints a line: rounds gave different outputs")
    print(f"{args.model}, {len(sources)} lines of {args.source}, beam {args.beam}, "
          f"{args.precision}, median of {args.rounds} rounds")  # fmt: skip
    print("| constraints a line | phrases | found in output | BLEU | chrF | sentences/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for count, constraints in settings.items():
        asked = constraints or drawn[1]  # without constraints: are the 1-a-line phrases there?
        phrases = [(p, out) for ps, out in zip(asked, outputs[count], strict=True) for p in ps]
        found_share = sum(p in out for p, out in phrases) / len(phrases) if phrases else 0.0
        scores = corpus_scores(outputs[count], references, ["bleu", "chrf"])
        print(
            f"| {count} | {len(phrases)} | {100 * found_share:.2f}% | {scores['bleu'].score:.2f} "
            f"| {scores['chrf'].score:.2f} | {statistics.median(rates[count]):.1f} |"
        )


if __name__ == "__main__":
    main()
