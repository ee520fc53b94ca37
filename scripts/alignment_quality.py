"""Alignment error rate of every decoder layer and head of a checkpoint, against gold alignments.

The reference translation is teacher-forced (so the alignment is of the reference, as AER is
defined), its cross-attention becomes word attention (source pieces summed into words, target
pieces averaged), and each target word is linked to its highest-weighted source word. The
Markdown table gives AER, precision and recall (Och & Ney, 2003) for every decoder layer and
head, each layer's head average, the all-layers average and a position-only diagonal baseline;
``*`` marks the attention rule with the lowest AER. See docs/alignments.md.

    python scripts/alignment_quality.py runs/toy-tf-align/best.pt --src data/toy/dev.src \\
        --ref data/toy/dev.tgt --gold data/toy/dev.align
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seq2seq_attn.alignment import (
    alignment_quality,
    check_gold,
    format_quality_table,
    mismatched_lines,
    read_pharaoh,
    word_attention,
)
from seq2seq_attn.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
)
from seq2seq_attn.corpus import read_parallel
from seq2seq_attn.device import resolve_device

logger = logging.getLogger("alignment_quality")


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a .pt checkpoint or a run directory")
    parser.add_argument("--src", type=Path, required=True, help="source sentences, one a line")
    parser.add_argument("--ref", type=Path, required=True, help="their reference translations")
    parser.add_argument(
        "--gold", type=Path, required=True,
        help="gold alignments, one Pharaoh line per pair (i-j sure, ipj possible)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-tokens", type=int, default=4096, help="source token slots per batch"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    return parser.parse_args()


def main() -> None:
    """Read the files, teacher-force the references, print the table."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args()
    try:
        if args.batch_tokens < 1:
            raise ValueError(f"--batch-tokens {args.batch_tokens}: use 1 or more")
        src_texts, ref_texts = read_parallel(args.src, args.ref)
        gold = read_pharaoh(args.gold)
        check_gold(gold, src_texts, ref_texts, str(args.gold))
        path = find_checkpoint(args.checkpoint)
        model, tokenizer, _ = model_from_checkpoint(load_checkpoint(path, mmap=True), path)
        device = resolve_device(args.device, "--device")
        src_ids, ref_ids = tokenizer.encode_src(src_texts), tokenizer.encode_tgt(ref_texts)
        maps = word_attention(
            model.to(device), tokenizer, src_ids, ref_ids, args.batch_tokens, device
        )
    except (CheckpointError, ValueError) as error:  # TextFileError, ConfigError are ValueErrors
        sys.exit(f"error: {error}")
    mismatched = mismatched_lines(maps, src_texts, ref_texts)
    if mismatched:
        logger.warning(
            "%d line(s) have other words in the model's pieces than in the text (cut at the "
            "length limit, or normalised): lines %s", len(mismatched), mismatched[:10],
        )  # fmt: skip
    print(f"{path}: {len(src_texts)} pairs of {args.src} / {args.ref} against {args.gold}")
    print(format_quality_table(alignment_quality(maps, gold)))


if __name__ == "__main__":
    main()
