"""Training throughput (source + target tokens/s, target tokens/s) and peak memory of the
Multi30k configs, fp32 against bf16, through the library's own training step (loss, backward,
clipping, AdamW), and each model's training FLOP/s as a share of this CPU's bf16 matmul peak.

FLOP/s counts three times the forward FLOPs of the linear layers
(``Seq2Seq.linear_flops_per_token``: per real source and target token, so padding counts as
waste), over the timed steps. The peak is a large bf16 ``torch.matmul`` timed in each run's
process with the same threads; the table gives the median of the runs.

Each config's tokenizer is trained once on its training split; the timed steps use the first
real token batches of that split (``data.max_tokens`` slots each). Every (config, precision) run
happens in a fresh spawned process, so its peak resident memory is its own, and fp32 and bf16
runs alternate over the repeats so that a noisy machine slows both alike. Needs
``data/multi30k/`` (``scripts/prepare_multi30k.py``).

Loading (reading and collating each step's batches, in the training process) is timed apart
from the steps: "with loading" divides by both. ``--sampling`` adds a run with the config's
``tokenizer.sampling`` enabled (subword regularization: each pair re-encoded with a sampled
segmentation while loading) next to each run without; a sampled segmentation is longer, so
compare pairs/s, which count the same pairs either way.

    .venv/bin/python scripts/bench_train.py                       # the three Multi30k configs
    .venv/bin/python scripts/bench_train.py data/configs/toy-transformer.yaml --steps 10
    .venv/bin/python scripts/bench_train.py data/configs/toy-transformer.yaml --threads 1 \
        --precisions fp32 --sampling                              # the cost of sampling
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from seq2seq_attn.config import Config, load_config
from seq2seq_attn.data import load_pairs, load_split, texts
from seq2seq_attn.device import resolve_precision
from seq2seq_attn.loaders import StepShare, SubwordSampling, iter_step_shares, make_sampler
from seq2seq_attn.models import build_model
from seq2seq_attn.optim import Trainer
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer

if TYPE_CHECKING:
    import datasets

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
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 or both"
    )
    parser.add_argument(
        "--sampling", action="store_true", help="also time each run with tokenizer.sampling on"
    )
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
    loading_ms_per_step: float  # reading and collating (sampling included) one step's batches
    target_tokens_per_second_with_loading: float
    pairs_per_second_with_loading: float
    flops_per_second: float | None  # None: the model family does not count its FLOPs
    peak_flops_per_second: float | None  # None: not measured (no bf16 run asked for)
    peak_rss_mib: float


def endless_steps(
    train_ds: datasets.Dataset, config: Config, tokenizer: Tokenizer
) -> Iterator[StepShare]:
    """Training steps of one batch each, epoch after epoch, sampled as ``tokenizer.sampling``
    says (collated in this process)."""
    sampling, data = config.tokenizer.sampling, config.data
    subwords = SubwordSampling(
        tokenizer, sampling.alpha, sampling.nbest_size, data.max_length, data.max_tokens
    ) if sampling.enabled else None  # fmt: skip
    sampler = make_sampler(train_ds, data.max_tokens, seed=config.train.seed)
    while True:
        yield from iter_step_shares(train_ds, sampler, 1, sampling=subwords)


def run_once(
    config: Config,
    tokenizer_dir: str,
    precision: str,
    steps: int,
    warmup: int,
    threads: int,
    peak: bool,
) -> Run:
    """What ``steps`` training steps measure in this (spawned) process (and the bf16 matmul
    peak when ``peak``: minutes on a CPU without bf16 arithmetic)."""
    torch.set_num_threads(threads)
    torch.manual_seed(config.train.seed)
    tokenizer = Tokenizer.load(tokenizer_dir)
    train_ds, _ = load_split(config.data, "train", tokenizer)
    shares = endless_steps(train_ds, config, tokenizer)
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    device = torch.device("cpu")
    trainer = Trainer(
        model, config.train, resolve_precision(precision, device, "--precision"), device
    )
    for step in range(1, warmup + 1):
        trainer.train_step(next(shares).batches, step)
    start = time.perf_counter()
    timed = [next(shares).batches for _ in range(steps)]
    loading = time.perf_counter() - start
    source_tokens = sum(batch.num_src_tokens for step in timed for batch in step)
    target_tokens = sum(batch.num_tgt_tokens for step in timed for batch in step)
    pairs = sum(batch.size for step in timed for batch in step)
    start = time.perf_counter()
    for step, batches in enumerate(timed, start=warmup + 1):
        trainer.train_step(batches, step)
    seconds = time.perf_counter() - start
    per_token = model.linear_flops_per_token()
    flops = None if per_token is None else 3 * (
        per_token[0] * source_tokens + per_token[1] * target_tokens
    )  # fmt: skip
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the peak's
    return Run(
        (source_tokens + target_tokens) / seconds, target_tokens / seconds,
        1000 * loading / steps, target_tokens / (seconds + loading), pairs / (seconds + loading),
        None if flops is None else flops / seconds, matmul_peak() if peak else None,
        peak_rss_mib,
    )  # fmt: skip


def prepare_tokenizer(config: Config, directory: str) -> None:
    """Train the config's tokenizer on its training split and save it into ``directory``."""
    pairs = load_pairs(config.data, "train")
    train_tokenizer(texts(pairs, "src"), texts(pairs, "tgt"), config.tokenizer).save(directory)


def with_sampling(config: Config) -> Config:
    """``config`` with ``tokenizer.sampling`` enabled (its other sampling settings kept)."""
    sampling = dataclasses.replace(config.tokenizer.sampling, enabled=True)
    return dataclasses.replace(
        config, tokenizer=dataclasses.replace(config.tokenizer, sampling=sampling)
    )


def main() -> None:
    """Time every config in each precision (with and without sampling) and print a table."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    context = multiprocessing.get_context("spawn")
    precisions = [name.strip() for name in args.precisions.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps per run")
    print(
        "| config | precision | sampling | tokens/s (median) | tokens/s (best) | target tokens/s "
        "| loading ms/step | target tokens/s with loading | pairs/s with loading | GFLOP/s "
        "| bf16 matmul peak GFLOP/s | share of peak | peak RSS MiB | bf16/fp32 |"
    )
    print("| --- | --- | --- |" + " ---: |" * 11)
    for path in args.configs:
        config = load_config(path)
        variants = [(name, sampled) for name in precisions for sampled in (False, args.sampling)]
        variants = list(dict.fromkeys(variants))  # without --sampling: one run per precision
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            prepare_tokenizer(config, tokenizer_dir)
            results: dict[tuple[str, bool], list[Run]] = {variant: [] for variant in variants}
            for _ in range(args.repeats):
                for precision, sampled in variants:
                    run_config = with_sampling(config) if sampled else config
                    job = (run_config, tokenizer_dir, precision, args.steps, args.warmup)
                    with context.Pool(1) as pool:
                        run = pool.apply(run_once, (*job, args.threads, "bf16" in precisions))
                    results[precision, sampled].append(run)
        for (precision, sampled), runs in results.items():
            print(row(Path(path).stem, precision, sampled, runs, results.get(("fp32", sampled))))


def row(name: str, precision: str, sampled: bool, runs: list[Run], fp32: list[Run] | None) -> str:
    """One table row: medians over ``runs``; bf16 rows compare with the fp32 runs."""
    speed = median(runs, "tokens_per_second")
    ratio = (
        f"{speed / median(fp32, 'tokens_per_second'):.2f}x" if precision == "bf16" and fp32 else ""
    )
    peak = None if runs[0].peak_flops_per_second is None else median(runs, "peak_flops_per_second")
    flops = None if runs[0].flops_per_second is None else median(runs, "flops_per_second")
    flops_cells = [
        "-" if flops is None else f"{flops / 1e9:,.0f}",
        "-" if peak is None else f"{peak / 1e9:,.0f}",
        "-" if flops is None or peak is None else f"{flops / peak:.0%}",
    ]
    return (
        f"| {name} | {precision} | {'on' if sampled else 'off'} | {speed:,.0f} | "
        f"{max(r.tokens_per_second for r in runs):,.0f} | "
        f"{median(runs, 'target_tokens_per_second'):,.0f} | "
        f"{median(runs, 'loading_ms_per_step'):,.1f} | "
        f"{median(runs, 'target_tokens_per_second_with_loading'):,.0f} | "
        f"{median(runs, 'pairs_per_second_with_loading'):,.0f} | {' | '.join(flops_cells)} | "
        f"{max(r.peak_rss_mib for r in runs):,.0f} | {ratio} |"
    )


def median(runs: list[Run], field: str) -> float:
    """The median of one measured field over runs."""
    return statistics.median(getattr(run, field) for run in runs)


if __name__ == "__main__":
    main()
