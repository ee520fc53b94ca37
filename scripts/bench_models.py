"""Parameter counts and forward+backward time per batch of the default models, fp32 and bf16.

The batch is B sentences of exactly T source and T target tokens (no padding), separate source
and target vocabularies of V entries each (``--joint`` for one shared vocabulary). fp32 and
``torch.autocast("cpu", dtype=torch.bfloat16)`` runs alternate inside every repeat so that a
noisy machine slows both alike (and every model in turn, likewise); the table shows the median
and the minimum of the repeats after warmup. Other processes on the machine show in the median
first (the load average is printed): compare medians only from runs with a low load.

    .venv/bin/python scripts/bench_models.py            # B=64, T=20, V=8000, 2 threads
    .venv/bin/python scripts/bench_models.py --repeats 5 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F

from seq2seq_attn.config import ModelConfig, RNNConfig
from seq2seq_attn.models import Seq2Seq, build_model

MODELS: dict[str, ModelConfig] = {
    "transformer pre-norm, tied": ModelConfig(family="transformer"),
    "rnn bi-GRU + bahdanau": ModelConfig(family="rnn", rnn=RNNConfig(decoder="bahdanau")),
    "rnn bi-GRU + luong general": ModelConfig(family="rnn", rnn=RNNConfig(decoder="luong")),
    "rnn bi-GRU + luong dot": ModelConfig(
        family="rnn", rnn=RNNConfig(decoder="luong", luong_score="dot")
    ),
}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=20, help="source and target tokens")
    parser.add_argument("--vocab", type=int, default=8000, help="entries per vocabulary")
    parser.add_argument("--joint", action="store_true", help="one shared vocabulary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    return parser.parse_args()


def train_step_seconds(model: Seq2Seq, batch: tuple[torch.Tensor, ...], bf16: bool) -> float:
    """Wall time of one forward + cross-entropy + backward pass."""
    src, src_mask, tgt_in, tgt_out = batch
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with autocast:
        logits = model(src, src_mask, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten())
    loss.backward()
    return time.perf_counter() - start


def bench(
    models: dict[str, Seq2Seq], batch: tuple[torch.Tensor, ...], args
) -> dict[tuple[str, str], list[float]]:
    """Seconds per batch for every model and precision; each repeat visits them all in turn."""
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.warmup + args.repeats):
        for name, model in models.items():
            for precision in ("fp32", "bf16"):
                seconds = train_step_seconds(model, batch, bf16=precision == "bf16")
                if repeat >= args.warmup:
                    times.setdefault((name, precision), []).append(seconds)
    return times


def main() -> None:
    """Build each model, time it, print the table."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch_size, args.length)
    src = torch.randint(4, args.vocab, shape)
    tgt = torch.randint(4, args.vocab, (args.batch_size, args.length + 1))
    batch = (src, torch.ones(shape, dtype=torch.bool), tgt[:, :-1], tgt[:, 1:])
    vocab = "one joint vocabulary" if args.joint else "separate source/target vocabularies"
    print(
        f"B={args.batch_size} T={args.length} (source and target, no padding), "
        f"{vocab} of {args.vocab}, {args.threads} threads, "
        f"median of {args.repeats} after {args.warmup} warmup, torch {torch.__version__}"
    )
    models = {
        name: build_model(config, args.vocab, args.vocab, joint_vocab=args.joint).train()
        for name, config in MODELS.items()
    }
    load_before = os.getloadavg()[0]
    times = bench(models, batch, args)
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    header = (
        f"{'model':28} {'params':>11} {'fp32 ms':>8} {'(min)':>7} {'bf16 ms':>8} {'(min)':>7}"
        f" {'bf16/fp32':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, model in models.items():
        fp32, bf16 = times[name, "fp32"], times[name, "bf16"]
        ratio = statistics.median(bf16) / statistics.median(fp32)
        print(
            f"{name:28} {model.num_parameters():>11,} {ms(statistics.median(fp32)):>8} "
            f"{ms(min(fp32)):>7} {ms(statistics.median(bf16)):>8} {ms(min(bf16)):>7} "
            f"{ratio:>9.2f}"
        )


def ms(seconds: float) -> str:
    """Milliseconds with one decimal."""
    return f"{1000 * seconds:.1f}"


if __name__ == "__main__":
    main()
