"""Generate the toy translation corpus in data/toy/ (deterministic; for tests and smoke runs).

The task: a made-up SVO source language -> a made-up verb-final target language. Every source
word maps to one target word (a vocabulary of about 300 words per side), and the word order
changes so that attention has to look elsewhere than the diagonal:

    source: det adj* noun  verb  [det adj* noun]  [adv]  [prep det adj* noun]
    target: det' noun' adj'*  [noun' prep' ...]  [det' noun' adj'*]  [adv']  verb'

Noun phrases put adjectives after the noun in reverse order, the prepositional phrase becomes a
postpositional phrase moved before the object, and the verb goes last. Sentences have 3 to 15
words. ``{split}.align`` holds the gold word alignment of each pair in the Pharaoh format
(``i-j``: source word ``i`` translates as target word ``j``, 0-based, sorted by ``i``).

A second domain (``--domain b``, written to ``data/toy-b``) keeps the grammar and the dictionary
and adds words of its own: two thirds of its nouns and adjectives and half of its transitive
verbs are new (never in domain A), the rest a small slice of domain A's; its noun phrases carry
more adjectives and more of its sentences a prepositional phrase, so they are longer. Its
training split is small (500 pairs): the fine-tuning example of docs/finetuning.md adapts a
domain-A model to it. Usage::

    python scripts/make_toy_corpus.py              # data/toy/{train,dev,test}.{src,tgt,align}
    python scripts/make_toy_corpus.py --domain b   # data/toy-b/...
    python scripts/make_toy_corpus.py --out DIR
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import NamedTuple

SEED = 20240601
SPLIT_SIZES = {"train": 5000, "dev": 300, "test": 300}
CLASS_SIZES = {"det": 4, "adj": 60, "noun": 120, "verb_t": 60, "verb_i": 20, "adv": 20, "prep": 12}
SRC_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TGT_SYLLABLES = [c + v for c in "chjkqwxy" for v in ("a", "o", "u", "ei", "ai")]


class Domain(NamedTuple):
    """How one domain draws its sentences: split sizes, adjectives per noun phrase (drawn
    uniformly from ``adjective_counts``) and the share of sentences with a prepositional phrase.
    ``new_words`` counts the words of its own per class (none for domain A); ``shared_words``
    how many of domain A's words of that class it also uses (all of them when absent)."""

    seed: int
    split_sizes: dict[str, int]
    adjective_counts: tuple[int, ...]
    pp_share: float
    new_words: dict[str, int]
    shared_words: dict[str, int]


DOMAIN_A = Domain(SEED, SPLIT_SIZES, (0, 0, 1, 1, 2), 0.4, {}, {})
DOMAIN_B = Domain(
    SEED + 1,
    {"train": 500, "dev": 300, "test": 300},
    (0, 1, 1, 2, 2),
    0.6,
    new_words={"noun": 60, "adj": 30, "verb_t": 20},
    shared_words={"noun": 30, "adj": 15, "verb_t": 20},
)
DOMAINS = {"a": (DOMAIN_A, "toy"), "b": (DOMAIN_B, "toy-b")}  # domain -> (draws, data/ folder)


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


def domain_lexicon(
    rng: random.Random, classes: dict[str, list[str]], dictionary: dict[str, str], domain: Domain
) -> dict[str, list[str]]:
    """The source words per class that ``domain`` draws from: ``domain.new_words`` new words of
    a class (added to ``dictionary`` with new target words) plus the first
    ``domain.shared_words`` of domain A's; domain A's own classes when it adds none."""
    src_taken, tgt_taken = set(dictionary), set(dictionary.values())
    chosen = {}
    for name, words in classes.items():
        new_src = _words(rng, SRC_SYLLABLES, domain.new_words.get(name, 0), src_taken)
        new_tgt = _words(rng, TGT_SYLLABLES, len(new_src), tgt_taken)
        dictionary.update(zip(new_src, new_tgt, strict=True))
        chosen[name] = new_src + words[: domain.shared_words.get(name, len(words))]
    return chosen


def _noun_phrase(
    rng: random.Random, classes: dict[str, list[str]], domain: Domain = DOMAIN_A
) -> tuple[list, list]:
    """(source words, target order as positions in those words) of one noun phrase."""
    det, noun = rng.choice(classes["det"]), rng.choice(classes["noun"])
    adjs = rng.sample(classes["adj"], rng.choice(domain.adjective_counts))
    noun_at = len(adjs) + 1
    return [det, *adjs, noun], [0, noun_at, *range(noun_at - 1, 0, -1)]


class Pair(NamedTuple):
    """One sentence pair and its gold word alignment: ``links`` holds (source word index,
    target word index) for every word, sorted by source index."""

    src: str
    tgt: str
    links: list[tuple[int, int]]


def make_pair(
    rng: random.Random,
    classes: dict[str, list[str]],
    dictionary: dict[str, str],
    domain: Domain = DOMAIN_A,
) -> Pair:
    """One :class:`Pair` of ``domain``; the target is built as a list of source positions,
    which gives the gold alignment (source word ``i`` becomes target word ``j``)."""
    subj_src, subj_order = _noun_phrase(rng, classes, domain)
    src, tgt_order, tail_order = [*subj_src], [*subj_order], []
    transitive = rng.random() < 0.7
    verb = rng.choice(classes["verb_t" if transitive else "verb_i"])
    verb_at = len(src)
    src.append(verb)
    obj_order: list[int] = []
    if transitive:
        obj_src, obj_np = _noun_phrase(rng, classes, domain)
        obj_order = [len(src) + position for position in obj_np]
        src += obj_src
    if rng.random() < 0.3:
        tail_order.append(len(src))
        src.append(rng.choice(classes["adv"]))
    pp_order: list[int] = []
    if rng.random() < domain.pp_share:
        prep = rng.choice(classes["prep"])
        pp_src, pp_np = _noun_phrase(rng, classes, domain)
        prep_at = len(src)
        src += [prep, *pp_src]
        pp_order = [*(prep_at + 1 + position for position in pp_np), prep_at]
    tgt_order += [*pp_order, *obj_order, *tail_order, verb_at]
    links = sorted((src_index, tgt_index) for tgt_index, src_index in enumerate(tgt_order))
    tgt = " ".join(dictionary[src[src_index]] for src_index in tgt_order)
    return Pair(" ".join(src), tgt, links)


def _draw_splits(
    rng: random.Random,
    classes: dict[str, list[str]],
    dictionary: dict[str, str],
    domain: Domain,
    seen: set[str],
) -> dict[str, list[Pair]]:
    """``domain``'s splits, with no source sentence in ``seen`` or in two splits."""
    corpus: dict[str, list[Pair]] = {}
    for split, size in domain.split_sizes.items():
        pairs: list[Pair] = []
        while len(pairs) < size:
            pair = make_pair(rng, classes, dictionary, domain)
            if pair.src not in seen:
                seen.add(pair.src)
                pairs.append(pair)
        corpus[split] = pairs
    return corpus


def make_corpora() -> tuple[dict[str, list[Pair]], dict[str, list[Pair]], dict[str, str]]:
    """Domain A's and domain B's splits (no source sentence in two of them) and the dictionary
    of both. Domain A is drawn first, from its own seed, so adding domain B changed none of it."""
    rng = random.Random(SEED)
    classes, dictionary = make_lexicon(rng)
    seen: set[str] = set()
    corpus_a = _draw_splits(rng, classes, dictionary, DOMAIN_A, seen)
    rng_b = random.Random(DOMAIN_B.seed)
    classes_b = domain_lexicon(rng_b, classes, dictionary, DOMAIN_B)
    corpus_b = _draw_splits(rng_b, classes_b, dictionary, DOMAIN_B, seen)
    return corpus_a, corpus_b, dictionary


def make_corpus(domain: str = "a") -> dict[str, list[Pair]]:
    """The three splits of ``domain`` (``a`` or ``b``)."""
    corpus_a, corpus_b, _ = make_corpora()
    return corpus_a if domain == "a" else corpus_b


def pharaoh(links: list[tuple[int, int]]) -> str:
    """Links as one Pharaoh line: ``i-j`` (source word index - target word index) pairs."""
    return " ".join(f"{src_index}-{tgt_index}" for src_index, tgt_index in links)


def write_corpus(out: Path, domain: str = "a") -> list[Path]:
    """Write ``domain``'s ``{split}.src`` / ``{split}.tgt`` and the gold alignments
    ``{split}.align`` under ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, pairs in make_corpus(domain).items():
        columns = {
            "src": [pair.src for pair in pairs],
            "tgt": [pair.tgt for pair in pairs],
            "align": [pharaoh(pair.links) for pair in pairs],
        }
        for side, lines in columns.items():
            path = out / f"{split}.{side}"
            path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
            written.append(path)
    return written


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_dir = Path(__file__).resolve().parent.parent / "data"
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="a", help="which domain")
    parser.add_argument("--out", type=Path, help="output directory [default: data/toy(-b)]")
    args = parser.parse_args()
    out = args.out or data_dir / DOMAINS[args.domain][1]
    for path in write_corpus(out, args.domain):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
