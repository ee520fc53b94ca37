"""Translation speed of trained checkpoints: sentences/s and target tokens/s.

For every checkpoint, beam size (1 = greedy), precision and batch size (sentences per batch,
sorted by length), translate the same source file through the library's own ``translate`` and
print one table row. Rows of one checkpoint run back to back, so compare ratios within a run.

    python scripts/bench_translate.py runs/m30k-tf/best.pt runs/m30k-rnn/best.pt \\
        --source data/multi30k/test_2016_flickr.de
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import torch

from seq2seq_attn.device import resolve_precision
from seq2seq_attn.evaluate import Translator, load_for_translation, search_options
from seq2seq_attn.fileio import read_lines


def measure(
    translator: Translator, lines: list[str], beam: int, precision: str, batch: int
) -> tuple[float, int]:
    """(seconds, target tokens) to translate ``lines`` in batches of ``batch`` sentences."""
    setting = dataclasses.replace(
        translator,
        options=search_options(translator.config.decode, beam_size=beam),
        precision=resolve_precision(precision, translator.device),
        max_tokens=1 << 30,
        max_sentences=batch,
    )
    start = time.perf_counter()
    found = setting.translate(lines)
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
    lines = read_lines(args.source)[: args.sentences]
    print(f"torch {torch.__version__}, {args.threads} threads, {len(lines)} sentences of "
          f"{args.source}\n")  # fmt: skip
    print("| checkpoint | params | beam | precision | batch | sentences/s | target tokens/s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for path in args.checkpoints:
        translator = load_for_translation(path, device="cpu")
        measure(translator, lines[:16], 1, "fp32", 16)  # warm up
        for beam, precision, batch in itertools.product(
            args.beams, args.precisions, args.batch_sizes
        ):
            seconds, tokens = measure(translator, lines, beam, precision, batch)
            params = translator.model.num_parameters()
            print(
                f"| {path} | {params:,} | {beam} | {precision} | {batch} | "
                f"{len(lines) / seconds:.1f} | {tokens / seconds:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
