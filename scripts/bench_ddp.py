"""Training throughput of one process against several under torchrun (DDP), same global batch.

On a CPU with C cores: 1 process x C threads accumulating N batches per step, against N
processes x C/N threads (``torchrun --nproc_per_node N``, gloo) with 1 batch each, so every step
trains on the same token batches. Target tokens/s come from each run's ``summary.json`` (time
inside optimisation steps; in DDP rank 0's, which includes waiting for the all-reduce). Runs
alternate over the repeats so that a noisy machine slows both alike. Needs ``data/multi30k/``
(``scripts/prepare_multi30k.py``) for the default config.

    .venv/bin/python scripts/bench_ddp.py                          # Multi30k Transformer
    .venv/bin/python scripts/bench_ddp.py data/configs/toy-transformer.yaml --steps 20
    .venv/bin/python scripts/bench_ddp.py --device cuda --processes 1   # NCCL on one GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from seq2seq_attn.rundir import read_summary

BIN = Path(sys.executable).parent


def run_training(
    config: Path, work: Path, name: str, processes: int, threads: int, args: argparse.Namespace
) -> float:
    """One training run; its target tokens per second."""
    run_dir = work / name
    accumulate = args.accumulate * (args.processes if processes == 1 else 1)
    settings = [
        f"train.max_steps={args.steps}", "train.validate_every=0", "train.save_every=0",
        "train.max_minutes=null", "train.early_stopping_patience=null", "data.dev=''",
        f"train.accumulate_steps={accumulate}", f"data.cache_dir={work / 'cache'}",
        f"train.device={args.device}", f"train.precision={args.precision}",
    ]  # fmt: skip
    train = [str(BIN / "attn-train"), str(config), "--run-dir", str(run_dir)]
    for setting in settings:
        train += ["--set", setting]
    if args.torchrun or processes > 1:
        launcher = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes)]
        train = launcher + train
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(train, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return read_summary(run_dir).target_tokens_per_second


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config", nargs="?", type=Path, default=Path("data/configs/multi30k-transformer.yaml")
    )
    parser.add_argument("--processes", type=int, default=2, help="DDP processes")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1,
        help="torch threads of the single process (split among the others)",
    )  # fmt: skip
    parser.add_argument("--accumulate", type=int, default=1, help="batches per process and step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--torchrun", action="store_true",
        help="launch the single process under torchrun too (DDP of one)",
    )  # fmt: skip
    args = parser.parse_args()
    per_process = max(args.threads // args.processes, 1)
    setups = [
        (f"1 process x {args.threads} threads", 1, args.threads),
        (f"{args.processes} processes x {per_process} thread(s)", args.processes, per_process),
    ]
    if args.processes == 1:
        setups = setups[:1]
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for repeat in range(args.repeats):
            for name, processes, threads in setups:
                run_name = f"{processes}x{threads}-{repeat}"
                speeds[name].append(
                    run_training(args.config, Path(tmp), run_name, processes, threads, args)
                )
                print(f"{name}, repeat {repeat + 1}: {speeds[name][-1]:,.0f} target tokens/s")
    baseline = statistics.median(speeds[setups[0][0]])
    print(f"\n{args.config}, {args.steps} steps, global batch = {args.processes} x "
          f"{args.accumulate} batch(es) of data.max_tokens, device {args.device}, precision "
          f"{args.precision}\n")  # fmt: skip
    print("| setup | target tokens/s (median) | runs | vs 1 process |")
    print("| --- | ---: | --- | ---: |")
    for name, values in speeds.items():
        runs = ", ".join(f"{value:,.0f}" for value in values)
        ratio = statistics.median(values) / baseline
        print(f"| {name} | {statistics.median(values):,.0f} | {runs} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
