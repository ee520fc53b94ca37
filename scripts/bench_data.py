"""Benchmark data loading: load + tokenize Multi30k train and synthetic 1M- and 10M-pair corpora.

Each measurement runs in a fresh subprocess, so that its peak RSS is its own. "cold" starts from
an empty cache directory (read the text, tokenize and filter on every core: ``data.num_proc``);
"cached" repeats the same load, which reuses the Arrow files. The padding efficiency is that of one
shuffled epoch of token batches. Peak RSS side by side at 1M and 10M pairs shows what grows with
the corpus: the token ids stay in memory-mapped Arrow files, only per-pair lengths and the
epoch's batch order are held in memory.

    python scripts/prepare_multi30k.py --from /work/shared/data/multi30k   # once
    python scripts/bench_data.py                       # Multi30k de-en + 1M and 10M pairs
    python scripts/bench_data.py --pairs 100000        # a smaller synthetic corpus
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets

from seq2seq_attn.config import DataConfig, TokenizerConfig
from seq2seq_attn.data import load_pairs, load_split, texts
from seq2seq_attn.loaders import iter_step_shares, make_sampler
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def write_synthetic(prefix: Path, pairs: int, seed: int = 0) -> None:
    """``pairs`` random sentences (3-40 words from 5000 made-up words) per side."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnoprstuvwyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5000)]
    with open(f"{prefix}.src", "w") as src, open(f"{prefix}.tgt", "w") as tgt:
        for _ in range(pairs):
            sentence = rng.choices(words, k=rng.randint(3, 40))
            extra = rng.choices(words, k=rng.randint(0, 6))
            src.write(" ".join(sentence) + "\n")
            tgt.write(" ".join([*reversed(sentence[: len(sentence) - 3]), *extra]) + "\n")


def memory_mb(field: str = "VmHWM") -> float:
    """A memory figure of this process from /proc/self/status, in MiB.

    ``VmHWM`` (peak RSS) belongs to the process image, so it starts afresh after exec, whereas
    ``ru_maxrss`` (the fallback off Linux) carries over the parent's peak. ``RssAnon`` is the
    resident memory that is not file-backed, i.e. without the memory-mapped Arrow pages.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(cfg: DataConfig, tokenizer_dir: Path, max_tokens: int, with_epoch: bool) -> dict:
    """One load + tokenize of the training split, then (``with_epoch``) one epoch of collated
    batches (run inside a subprocess)."""
    datasets.disable_progress_bars()
    tokenizer = Tokenizer.load(tokenizer_dir)
    rss_before = memory_mb()
    start = time.perf_counter()
    ds, report = load_split(cfg, "train", tokenizer)
    seconds = time.perf_counter() - start
    rss_loaded = memory_mb()
    start = time.perf_counter()
    sampler = make_sampler(ds, max_tokens, seed=0)
    # the training loop's path: one process's share of each step (here all of it)
    batches = sum(1 for _ in iter_step_shares(ds, sampler, 1)) if with_epoch else len(sampler)
    return {
        "seconds": seconds,
        "pairs": report.kept,
        "batches": batches,
        "epoch_seconds": time.perf_counter() - start,
        "efficiency": sampler.padding_efficiency(0),
        "rss_after_imports_mb": rss_before,
        "peak_rss_mb": rss_loaded,
        "epoch_peak_rss_mb": memory_mb(),
        "epoch_anon_mb": memory_mb("RssAnon"),
    }


def run_child(cfg: DataConfig, tokenizer_dir: Path, max_tokens: int, with_epoch: bool) -> dict:
    """:func:`measure` in a fresh Python process."""
    arguments = [
        "--child", json.dumps(vars(cfg)), str(tokenizer_dir), str(max_tokens), str(with_epoch)
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare_tokenizer(cfg: DataConfig, directory: Path, vocab_size: int) -> float:
    """Train a joint unigram tokenizer on the training split into ``directory``; its seconds."""
    datasets.disable_progress_bars()
    start = time.perf_counter()
    # A cache of its own, so that the cold load below really starts from the text files.
    train = load_pairs(dataclasses.replace(cfg, cache_dir=str(directory / "cache")), "train")
    tokenizer_cfg = TokenizerConfig(vocab_size=vocab_size, max_sentences=200_000)
    train_tokenizer(texts(train, "src"), texts(train, "tgt"), tokenizer_cfg).save(directory)
    return time.perf_counter() - start


def bench(name: str, cfg: DataConfig, work: Path, max_tokens: int) -> list[tuple]:
    """Rows of the table for one corpus: tokenizer training, cold load, cached load."""
    tokenizer_dir = work / f"{name}-tokenizer"
    tokenizer_seconds = prepare_tokenizer(cfg, tokenizer_dir, 8000)
    cold = run_child(cfg, tokenizer_dir, max_tokens, with_epoch=False)
    cached = run_child(cfg, tokenizer_dir, max_tokens, with_epoch=True)
    return [
        (name, "train SentencePiece (joint unigram 8k)", tokenizer_seconds, None, None, None),
        (name, "load + tokenize, cold", cold["seconds"], cold, cold, None),
        (name, "load + tokenize, cached", cached["seconds"], cached, cached, True),
    ]


def print_table(rows: list[tuple], max_tokens: int) -> None:
    """A markdown table of the measurements."""
    print(f"| corpus | step | seconds | RSS after imports / peak (MiB) | pairs | batches of "
          f"{max_tokens} tokens | padding efficiency "
          "| epoch of batches: s, peak RSS / anon RSS (MiB) |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, step, seconds, rss, info, with_epoch in rows:
        extra = ["", "", "", ""]
        if info is not None:
            extra = [str(info["pairs"]), str(info["batches"]), f"{info['efficiency']:.3f}", ""]
            if with_epoch:
                extra[3] = (
                    f"{info['epoch_seconds']:.1f} s, {info['epoch_peak_rss_mb']:.0f} / "
                    f"{info['epoch_anon_mb']:.0f}"
                )
        rss_text = (
            "" if rss is None else f"{rss['rss_after_imports_mb']:.0f} / {rss['peak_rss_mb']:.0f}"
        )
        print(f"| {name} | {step} | {seconds:.1f} | {rss_text} | " + " | ".join(extra) + " |")


def main() -> None:
    """Command-line entry point."""
    if sys.argv[1:2] == ["--child"]:
        cfg = DataConfig(**json.loads(sys.argv[2]))
        with_epoch = sys.argv[5] == "True"
        print(json.dumps(measure(cfg, Path(sys.argv[3]), int(sys.argv[4]), with_epoch)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multi30k", type=Path, default=ROOT / "data" / "multi30k")
    parser.add_argument("--pair", default="de-en", help="SRC-TGT of the prepared Multi30k")
    parser.add_argument(
        "--pairs", type=int, nargs="+", default=[1_000_000, 10_000_000],
        help="synthetic corpus sizes",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    src_lang, tgt_lang = args.pair.split("-")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = Path(tmp)
        if (args.multi30k / f"train.{src_lang}").is_file():
            cfg = DataConfig(
                train=str(args.multi30k / "train"), src_lang=src_lang, tgt_lang=tgt_lang,
                max_tokens=args.max_tokens, cache_dir=str(work / "multi30k-cache"),
            )  # fmt: skip
            rows += bench("Multi30k train", cfg, work, args.max_tokens)
        else:
            print(f"skip Multi30k: run scripts/prepare_multi30k.py first ({args.multi30k})")
        for pairs in args.pairs:
            start = time.perf_counter()
            write_synthetic(work / f"synthetic{pairs}", pairs)
            print(f"wrote {pairs} synthetic pairs in {time.perf_counter() - start:.1f} s")
            cfg = DataConfig(
                train=str(work / f"synthetic{pairs}"), src_lang="src", tgt_lang="tgt",
                max_length=100, max_tokens=args.max_tokens,
                cache_dir=str(work / f"synthetic{pairs}-cache"),
            )  # fmt: skip
            rows += bench(f"synthetic {pairs:,}", cfg, work, args.max_tokens)
            (work / f"synthetic{pairs}.src").unlink()  # the next corpus needs the disk space
            (work / f"synthetic{pairs}.tgt").unlink()
    print_table(rows, args.max_tokens)


if __name__ == "__main__":
    main()
