"""Training throughput (source + target tokens/s, target tokens/s) and peak memory of the
Multi30k configs, fp32 against bf16, through the library's own training step (loss, backward,
clipping, AdamW), and the Transformer's training FLOP/s as a share of this CPU's bf16 matmul peak.

FLOP/s counts three times the forward FLOPs of the linear layers
(``Seq2Seq.linear_flops_per_token``: per real source and target token, so padding counts as
waste), over the timed steps. The peak is a large bf16 ``torch.matmul`` timed in each run's
process with the same threads; the table gives the median of the runs.

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
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq_attn.config import Config, load_config
from seq2seq_attn.data import load_pairs, load_split, texts
from seq2seq_attn.device import resolve_precision
from seq2seq_attn.loaders import iter_batches, make_sampler
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


PEAK_SIZE = 4096  # the square bf16 matmul whose speed is the peak


def matmul_peak() -> float:
    """FLOP/s of a ``PEAK_SIZE`` square bf16 matmul on this process's threads (best of 3)."""
    a = torch.randn(PEAK_SIZE, PEAK_SIZE).bfloat16()
    b = torch.randn(PEAK_SIZE, PEAK_SIZE).bfloat16()
    a @ b  # warm up
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / best


@dataclass
class Run:
    """What one run measured."""

    tokens_per_second: float  # source + target
    target_tokens_per_second: float
    flops_per_second: float | None  # None: the model family does not count its FLOPs
    peak_flops_per_second: float
    peak_rss_mib: float


def run_once(
    config: Config, tokenizer_dir: str, precision: str, steps: int, warmup: int, threads: int
) -> Run:
    """What ``steps`` training steps measure in this (spawned) process."""
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
    trainer = Trainer(
        model, config.train, resolve_precision(precision, device, "--precision"), device
    )
    group = [next(batches) for _ in range(warmup + steps)]
    for step, batch in enumerate(group[:warmup], start=1):
        trainer.train_step([batch], step)
    timed = group[warmup:]
    source_tokens = sum(batch.num_src_tokens for batch in timed)
    target_tokens = sum(batch.num_tgt_tokens for batch in timed)
    start = time.perf_counter()
    for step, batch in enumerate(timed, start=warmup + 1):
        trainer.train_step([batch], step)
    seconds = time.perf_counter() - start
    per_token = model.linear_flops_per_token()
    flops = None if per_token is None else 3 * (
        per_token[0] * source_tokens + per_token[1] * target_tokens
    )  # fmt: skip
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the peak's
    return Run(
        (source_tokens + target_tokens) / seconds, target_tokens / seconds,
        None if flops is None else flops / seconds, matmul_peak(), peak_rss_mib,
    )  # fmt: skip


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
    print(
        "| config | precision | tokens/s (median) | tokens/s (best) | target tokens/s | GFLOP/s "
        "| bf16 matmul peak GFLOP/s | share of peak | peak RSS MiB | bf16/fp32 |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.configs:
        config = load_config(path)
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            prepare_tokenizer(config, tokenizer_dir)
            results: dict[str, list[Run]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in results:
                    with context.Pool(1) as pool:
                        job = (config, tokenizer_dir, precision, args.steps, args.warmup)
                        results[precision].append(pool.apply(run_once, (*job, args.threads)))
        speeds = {name: median(runs, "tokens_per_second") for name, runs in results.items()}
        for name, runs in results.items():
            ratio = f"{speeds['bf16'] / speeds['fp32']:.2f}x" if name == "bf16" else ""
            peak = median(runs, "peak_flops_per_second")
            flops = None if runs[0].flops_per_second is None else median(runs, "flops_per_second")
            flops_cells = (
                ("-", "-") if flops is None else (f"{flops / 1e9:,.0f}", f"{flops / peak:.0%}")
            )
            print(
                f"| {Path(path).stem} | {name} | {speeds[name]:,.0f} | "
                f"{max(r.tokens_per_second for r in runs):,.0f} | "
                f"{median(runs, 'target_tokens_per_second'):,.0f} | {flops_cells[0]} | "
                f"{peak / 1e9:,.0f} | {flops_cells[1]} | "
                f"{max(r.peak_rss_mib for r in runs):,.0f} | {ratio} |"
            )


def median(runs: list[Run], field: str) -> float:
    """The median of one measured field over runs."""
    return statistics.median(getattr(run, field) for run in runs)


if __name__ == "__main__":
    main()
