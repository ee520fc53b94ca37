"""Translation speed and BLEU: our search (fp32, bf16, int8) against CTranslate2 (fp32, int8).

One Transformer checkpoint is exported to CTranslate2 twice (float32 and int8 weights, into
``--export-dir``), then every system translates the same source file with the same beam and the
same number of threads, in ``--rounds`` interleaved rounds (bf16 only where the CPU computes it
natively, or with ``--bf16``; an RNN checkpoint gets our rows only: CTranslate2 has no RNN):

- decode-only: the model already loaded in this process; the clock runs over
  ``translate(lines)`` alone;
- whole process: ``attn-translate MODEL SOURCE -o FILE``, from starting Python to the written
  file (imports, loading, tokenization, search, detokenization).

The table gives the median sentences/s of each, BLEU / lowercased BLEU (sacreBLEU 13a) of the
output against ``--ref`` and how many lines equal our fp32 search's; every round must produce the
same output. The last rows, decode-only, run CTranslate2's own search (its ``L ** alpha``
length penalty, one length limit for all lines): on the float32 folder in batches of 4096
tokens (what our rules around it change), and on the int8 folder in length-sorted batches of
16, 32 and 64 sentences (its best batching, the bar for our int8 search).

    python scripts/bench_translate.py runs/multi30k-de-en/transformer/best.pt \\
        --source data/multi30k/test_2016_flickr.de --ref data/multi30k/test_2016_flickr.en
    python scripts/bench_translate.py runs/toy-rnn --source data/toy/test.src \\
        --ref data/toy/test.tgt --rounds 1 --no-whole-process   # our rows only, a minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seq2seq_attn.corpus import read_lines
from seq2seq_attn.device import cpu_has_fast_bf16, cpu_model
from seq2seq_attn.export import export_checkpoint
from seq2seq_attn.metrics import corpus_scores
from seq2seq_attn.translation import TranslationSettings, Translator, open_translator

ATTN_TRANSLATE = Path(sys.executable).with_name("attn-translate")


@dataclass
class System:
    """One way of translating: its name, the model path and options ``attn-translate`` takes,
    and what was measured."""

    name: str
    model: Path
    options: list[str]
    decode_seconds: list[float] = field(default_factory=list)
    process_seconds: list[float] = field(default_factory=list)
    outputs: set[tuple[str, ...]] = field(default_factory=set)

    def load(self, beam: int, threads: int) -> Translator:
        """The translator, loaded in this process (``options``: ``--precision P`` or
        ``--compute-type T``)."""
        option, value = self.options
        arithmetic = {option.removeprefix("--").replace("-", "_"): value}
        settings = TranslationSettings(device="cpu", beam_size=beam, threads=threads, **arithmetic)
        return open_translator(self.model, settings)


def decode_only(system: System, lines: list[str], beam: int, threads: int) -> None:
    """Time ``translate(lines)`` with the model already loaded."""
    translator = system.load(beam, threads)
    translator.translate(lines[:8])  # warm up: first calls allocate and pick kernels
    start = time.perf_counter()
    found = translator.translate(lines)
    system.decode_seconds.append(time.perf_counter() - start)
    system.outputs.add(tuple(translator.detokenize(found)))


@dataclass
class OwnSearch(System):
    """CTranslate2's own search on an exported folder, in batches of ``batch_size``
    ``batch_type`` (``tokens`` or ``examples``: sentences, which it sorts by length)."""

    batch_size: int = 4096
    batch_type: str = "tokens"


def own_search(system: OwnSearch, lines: list[str], beam: int, threads: int) -> None:
    """Time CTranslate2's own search, as the plain snippet of docs/ctranslate2.md runs it: its
    length penalty ``L ** alpha`` with the model's alpha and one length limit (the model's) for
    all lines."""
    translator = open_translator(system.model, TranslationSettings(device="cpu", threads=threads))
    limit, tokenizer = translator.max_positions, translator.tokenizer
    alpha = translator.decode.length_penalty
    pieces = [tokenizer.src_pieces(ids[: limit - 1]) for ids in tokenizer.encode_src(lines)]
    settings = {"beam_size": beam, "length_penalty": alpha, "max_decoding_length": limit - 1,
                "max_batch_size": system.batch_size, "batch_type": system.batch_type}  # fmt: skip
    translator.engine.translate_batch(pieces[:8], **settings)  # warm up
    start = time.perf_counter()
    results = translator.engine.translate_batch(pieces, **settings)
    system.decode_seconds.append(time.perf_counter() - start)
    found = [tokenizer.tgt_ids(result.hypotheses[0]) for result in results]
    system.outputs.add(tuple(tokenizer.decode_tgt(found)))


def whole_process(system: System, source: Path, beam: int, threads: int, out: Path) -> None:
    """Time ``attn-translate`` from start to written file, on ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [str(ATTN_TRANSLATE), str(system.model), str(source), "-o", str(out),
               "--beam", str(beam), *system.options]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    system.process_seconds.append(time.perf_counter() - start)
    system.outputs.add(tuple(read_lines(out)))


def parse_args() -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint or run directory")
    parser.add_argument("--source", type=Path, default=Path("data/multi30k/test_2016_flickr.de"))
    parser.add_argument("--ref", type=Path, default=Path("data/multi30k/test_2016_flickr.en"))
    parser.add_argument("--export-dir", type=Path, help="where to export [a temporary folder]")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=cpu_has_fast_bf16(),
        help="include our bf16 search [default: where the CPU computes bf16 natively]",
    )  # fmt: skip
    parser.add_argument(
        "--whole-process", action=argparse.BooleanOptionalAction, default=True,
        help="also time attn-translate as a whole process",
    )  # fmt: skip
    return parser.parse_args()


def ctranslate2_systems(checkpoint: Path, export_dir: Path) -> tuple[list[System], list[OwnSearch]]:
    """Export ``checkpoint`` to CTranslate2 float32 and int8 folders under ``export_dir``: the
    systems run through ``attn-translate`` and those run with CTranslate2's own search."""
    folders = {
        kind: export_checkpoint(checkpoint, export_dir / f"ct2-{kind}", kind, force=True)
        for kind in ("float32", "int8")
    }
    through_ours = [
        System("CTranslate2 float32", folders["float32"], ["--compute-type", "float32"]),
        System("CTranslate2 int8", folders["int8"], ["--compute-type", "int8"]),
    ]
    plain = [OwnSearch("CTranslate2 float32, its own search", folders["float32"], [])]
    plain += [
        OwnSearch(f"CTranslate2 int8, its own search, sorted batches of {size}",
                  folders["int8"], [], batch_size=size, batch_type="examples")
        for size in (16, 32, 64)
    ]  # fmt: skip
    return through_ours, plain


def print_table(systems: list[System], reference: System, references: list[str]) -> None:
    """A Markdown row per system: BLEU, lines equal to the first system's, sentences/s and the
    decode-only ratio to ``reference``; every system must have translated alike in each round."""
    print("| system | BLEU | BLEU lc | lines equal to attn-translate fp32 "
          "| decode-only sentences/s | whole process sentences/s "
          f"| decode-only vs {reference.name.removeprefix('attn-translate ')} |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    count = len(references)
    reference_speed = count / statistics.median(reference.decode_seconds)
    reference_output = next(iter(systems[0].outputs))
    for system in systems:
        if len(system.outputs) != 1:
            raise SystemExit(f"{system.name}: the rounds translated differently")
        output = list(next(iter(system.outputs)))
        bleu = corpus_scores(output, references, ["bleu"])["bleu"].score
        bleu_lc = corpus_scores(output, references, ["bleu"], lowercase=True)["bleu"].score
        decode_speed = count / statistics.median(system.decode_seconds)
        process_speed = (
            f"{count / statistics.median(system.process_seconds):.1f}"
            if system.process_seconds
            else "-"
        )
        equal = sum(mine == ours for mine, ours in zip(output, reference_output, strict=True))
        print(f"| {system.name} | {bleu:.2f} | {bleu_lc:.2f} | {equal} / {count} "
              f"| {decode_speed:.1f} | {process_speed} "
              f"| {decode_speed / reference_speed:.2f}x |")  # fmt: skip


def main() -> None:
    """Export, measure every system in interleaved rounds and print a Markdown table."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    lines, references = read_lines(args.source), read_lines(args.ref)
    ours = [System("attn-translate fp32", args.checkpoint, ["--precision", "fp32"])]
    if args.bf16:
        ours.append(System("attn-translate bf16", args.checkpoint, ["--precision", "bf16"]))
    ours.append(System("attn-translate int8", args.checkpoint, ["--precision", "int8"]))
    with tempfile.TemporaryDirectory() as scratch:
        systems, plain = ours, []
        if model_family(args.checkpoint) == "transformer":
            theirs, plain = ctranslate2_systems(args.checkpoint, args.export_dir or Path(scratch))
            systems = [*ours, *theirs]
        for round_number in range(1, args.rounds + 1):
            for system in systems:
                decode_only(system, lines, args.beam, args.threads)
                if args.whole_process:
                    whole_process(system, args.source, args.beam, args.threads,
                                  Path(scratch) / "out.txt")  # fmt: skip
            for system in plain:
                own_search(system, lines, args.beam, args.threads)
            print(f"round {round_number} of {args.rounds} done", file=sys.stderr, flush=True)
    print(f"{len(lines)} sentences of {args.source}, beam {args.beam}, {args.threads} thread(s), "
          f"torch {torch.__version__}, {cpu_model()}, median of {args.rounds} interleaved "
          "rounds\n")  # fmt: skip
    reference = systems[-2] if plain else systems[0]  # CTranslate2 float32, else our fp32
    print_table([*systems, *plain], reference, references)


def model_family(checkpoint: Path) -> str:
    """``transformer`` or ``rnn``: the family of the model in ``checkpoint``."""
    settings = TranslationSettings(device="cpu")
    return open_translator(checkpoint, settings).config.model.family


if __name__ == "__main__":
    main()
