"""Training throughput (source + target tokens/s) and peak memory of the Multi30k configs, fp32
against bf16, through the library's own training step (loss, backward, clipping, AdamW).

Each config's tokenizer is trained once on its training split; the timed steps use the first
real token batches of that split (``data.max_tokens`` slots each). Every (config, precision) run
happens in a fresh spawned process, so its peak resident memory is its own, and fp32 and bf16
runs alternate over the repeats so that a noisy machine slows both alike. Needs
``data/multi30k/`` (``scripts/prepare_multi30k.py``).

    .venv/bin/python scripts/bench_train.py                       # the three Multi30k configs
    .venv/bin/python scripts/bench_train.py data/configs/toy-transformer.yaml --steps 10
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from seq2seq_attn.config import Config, load_config
from seq2seq_attn.data import iter_batches, load_pairs, load_split, make_sampler, texts
from seq2seq_attn.device import resolve_precision
from seq2seq_attn.models import build_model
from seq2seq_attn.optim import Trainer
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer

CONFIGS = [
    "data/configs/multi30k-transformer.yaml",
    "data/configs/multi30k-rnn-bahdanau.yaml",
    "data/configs/multi30k-rnn-luong.yaml",
]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=CONFIGS, help="YAML configs to time")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per precision")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def run_once(
    config: Config, tokenizer_dir: str, precision: str, steps: int, warmup: int, threads: int
) -> tuple[float, float]:
    """(tokens/s, peak RSS in MiB) of ``steps`` training steps in this (spawned) process."""
    torch.set_num_threads(threads)
    torch.manual_seed(config.train.seed)
    tokenizer = Tokenizer.load(tokenizer_dir)
    train_ds, _ = load_split(config.data, "train", tokenizer)
    sampler = make_sampler(train_ds, config.data.max_tokens, seed=config.train.seed)
    batches = iter_batches(train_ds, sampler)
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    device = torch.device("cpu")
    trainer = Trainer(model, config.train, resolve_precision(precision, device), device)
    group = [next(batches) for _ in range(warmup + steps)]
    for step, batch in enumerate(group[:warmup], start=1):
        trainer.train_step([batch], step)
    tokens = sum(batch.num_src_tokens + batch.num_tgt_tokens for batch in group[warmup:])
    start = time.perf_counter()
    for step, batch in enumerate(group[warmup:], start=warmup + 1):
        trainer.train_step([batch], step)
    seconds = time.perf_counter() - start
    return tokens / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_tokenizer(config: Config, directory: str) -> None:
    """Train the config's tokenizer on its training split and save it into ``directory``."""
    pairs = load_pairs(config.data, "train")
    train_tokenizer(texts(pairs, "src"), texts(pairs, "tgt"), config.tokenizer).save(directory)


def main() -> None:
    """Time every config in fp32 and bf16 and print a Markdown table."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    context = multiprocessing.get_context("spawn")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps per run")
    print("| config | precision | tokens/s (median) | tokens/s (best) | peak RSS MiB | bf16/fp32 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for path in args.configs:
        config = load_config(path)
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            prepare_tokenizer(config, tokenizer_dir)
            results: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in results:
                    with context.Pool(1) as pool:
                        job = (config, tokenizer_dir, precision, args.steps, args.warmup)
                        results[precision].append(pool.apply(run_once, (*job, args.threads)))
        medians = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
        for name, runs in results.items():
            ratio = f"{medians['bf16'] / medians['fp32']:.2f}x" if name == "bf16" else ""
            print(
                f"| {Path(path).stem} | {name} | {medians[name]:,.0f} | "
                f"{max(r[0] for r in runs):,.0f} | {max(r[1] for r in runs):,.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
