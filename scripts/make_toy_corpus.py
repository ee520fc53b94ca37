"""Generate the toy translation corpus in data/toy/ (deterministic; for tests and smoke runs).

The task: a made-up SVO source language -> a made-up verb-final target language. Every source
word maps to one target word (a vocabulary of about 300 words per side), and the word order
changes so that attention has to look elsewhere than the diagonal:

    source: det adj* noun  verb  [det adj* noun]  [adv]  [prep det adj* noun]
    target: det' noun' adj'*  [noun' prep' ...]  [det' noun' adj'*]  [adv']  verb'

Noun phrases put adjectives after the noun in reverse order, the prepositional phrase becomes a
postpositional phrase moved before the object, and the verb goes last. Sentences have 3 to 15
words. Usage::

    python scripts/make_toy_corpus.py            # writes data/toy/{train,dev,test}.{src,tgt}
    python scripts/make_toy_corpus.py --out DIR
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SEED = 20240601
SPLIT_SIZES = {"train": 5000, "dev": 300, "test": 300}
CLASS_SIZES = {"det": 4, "adj": 60, "noun": 120, "verb_t": 60, "verb_i": 20, "adv": 20, "prep": 12}
SRC_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TGT_SYLLABLES = [c + v for c in "chjkqwxy" for v in ("a", "o", "u", "ei", "ai")]


def _words(rng: random.Random, syllables: list[str], count: int, taken: set[str]) -> list[str]:
    """``count`` new words of 1-3 syllables that are not in ``taken`` (which is updated)."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def make_lexicon(rng: random.Random) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Source words per class and the one-to-one source -> target dictionary."""
    src_taken: set[str] = set()
    tgt_taken: set[str] = set()
    classes, dictionary = {}, {}
    for name, size in CLASS_SIZES.items():
        src_words = _words(rng, SRC_SYLLABLES, size, src_taken)
        tgt_words = _words(rng, TGT_SYLLABLES, size, tgt_taken)
        classes[name] = src_words
        dictionary.update(zip(src_words, tgt_words, strict=True))
    return classes, dictionary


def _noun_phrase(rng: random.Random, classes: dict[str, list[str]]) -> tuple[list, list]:
    """(source words, target order as source words) of one noun phrase."""
    det, noun = rng.choice(classes["det"]), rng.choice(classes["noun"])
    adjs = rng.sample(classes["adj"], rng.choice((0, 0, 1, 1, 2)))
    return [det, *adjs, noun], [det, noun, *reversed(adjs)]


def make_pair(rng: random.Random, classes: dict[str, list[str]], dictionary: dict[str, str]):
    """One (source sentence, target sentence) pair."""
    subj_src, subj_tgt = _noun_phrase(rng, classes)
    src, tgt_tail = [*subj_src], []
    transitive = rng.random() < 0.7
    verb = rng.choice(classes["verb_t" if transitive else "verb_i"])
    src.append(verb)
    obj_tgt: list[str] = []
    if transitive:
        obj_src, obj_tgt = _noun_phrase(rng, classes)
        src += obj_src
    if rng.random() < 0.3:
        adv = rng.choice(classes["adv"])
        src.append(adv)
        tgt_tail.append(adv)
    pp_tgt: list[str] = []
    if rng.random() < 0.4:
        prep = rng.choice(classes["prep"])
        pp_src, pp_np = _noun_phrase(rng, classes)
        src += [prep, *pp_src]
        pp_tgt = [*pp_np, prep]
    tgt = [*subj_tgt, *pp_tgt, *obj_tgt, *tgt_tail, verb]
    return " ".join(src), " ".join(dictionary[word] for word in tgt)


def make_corpus() -> dict[str, list[tuple[str, str]]]:
    """The three splits, disjoint (no source sentence appears in two splits)."""
    rng = random.Random(SEED)
    classes, dictionary = make_lexicon(rng)
    seen: set[str] = set()
    corpus: dict[str, list[tuple[str, str]]] = {}
    for split, size in SPLIT_SIZES.items():
        pairs: list[tuple[str, str]] = []
        while len(pairs) < size:
            src, tgt = make_pair(rng, classes, dictionary)
            if src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        corpus[split] = pairs
    return corpus


def write_corpus(out: Path) -> list[Path]:
    """Write ``{split}.src`` / ``{split}.tgt`` under ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, pairs in make_corpus().items():
        for side, column in (("src", 0), ("tgt", 1)):
            path = out / f"{split}.{side}"
            text = "".join(pair[column] + "\n" for pair in pairs)
            path.write_bytes(text.encode("utf-8"))
            written.append(path)
    return written


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parent.parent / "data" / "toy"
    parser.add_argument("--out", type=Path, default=default_out, help="output directory")
    args = parser.parse_args()
    for path in write_corpus(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
