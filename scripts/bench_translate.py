"""Translation speed of trained checkpoints: sentences/s and target tokens/s.

For every checkpoint, beam size (1 = greedy), precision and batch size (sentences per batch,
sorted by length), translate the same source file through the library's own ``translate`` and
print one table row. Rows of one checkpoint run back to back, so compare ratios within a run.

    python scripts/bench_translate.py runs/m30k-tf/best.pt runs/m30k-rnn/best.pt \\
        --source data/multi30k/test_2016_flickr.de
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from seq2seq_attn.checkpoint import load_checkpoint, model_from_checkpoint
from seq2seq_attn.device import resolve_precision
from seq2seq_attn.evaluate import search_options, translate


def measure(model, tokenizer, config, lines, beam: int, precision: str, batch: int) -> tuple:
    """(seconds, target tokens) to translate ``lines``."""
    options = search_options(config.decode, beam_size=beam)
    amp_dtype = resolve_precision(precision, torch.device("cpu")).dtype
    start = time.perf_counter()
    found = translate(model, tokenizer, lines, options, 1 << 30, "cpu", amp_dtype, batch)
    seconds = time.perf_counter() - start
    return seconds, sum(len(hypothesis.tokens) + 1 for hypothesis in found)


def main() -> None:
    """Parse options, time every combination and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--source", type=Path, default=Path("data/multi30k/test_2016_flickr.de"))
    parser.add_argument("--beams", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--sentences", type=int, default=1000, help="first N source lines")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = args.source.read_text(encoding="utf-8").splitlines()[: args.sentences]
    print(f"torch {torch.__version__}, {args.threads} threads, {len(lines)} sentences of "
          f"{args.source}\n")  # fmt: skip
    print("| checkpoint | params | beam | precision | batch | sentences/s | target tokens/s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for path in args.checkpoints:
        model, tokenizer, config = model_from_checkpoint(load_checkpoint(path), path)
        measure(model, tokenizer, config, lines[:16], 1, "fp32", 16)  # warm up
        for beam, precision, batch in itertools.product(
            args.beams, args.precisions, args.batch_sizes
        ):
            seconds, tokens = measure(model, tokenizer, config, lines, beam, precision, batch)
            print(
                f"| {path} | {model.num_parameters():,} | {beam} | {precision} | {batch} | "
                f"{len(lines) / seconds:.1f} | {tokens / seconds:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
