"""The Multi30k benchmark end to end: prepare the data, train the shipped models, translate the
three test sets with beam 5, score them with sacreBLEU and write ``results/multi30k-PAIR.md`` and
``.json`` with attention heatmaps and learning curves beside them.

    make reproduce                                   # de-en: Transformer and RNN (Bahdanau)
    make reproduce PAIR=en-de MODELS="transformer rnn-luong"
    .venv/bin/python scripts/reproduce.py --pair de-en --models transformer rnn-bahdanau

Every model trains for the step budget in its config (``train.max_steps``), so the scores do
not depend on the machine's speed; ``train.max_minutes`` is only a guard, and the report says
when it fired. Every step leaves its output on disk and is skipped when the script runs again;
an interrupted training (Ctrl-C, or a killed machine after its last checkpoint) resumes from
its ``last.pt``.

Layout, for PAIR=de-en:
    data/multi30k/{split}.{de,en}                    prepared corpus (seq2seq_attn.multi30k)
    runs/multi30k-de-en/MODEL/                       attn-train run directory (best.pt, last.pt,
                                                     summary.json, averaged-N.pt: the mean of
                                                     the last N checkpoints)
    results/multi30k-de-en/MODEL/train.json          training figures, written when it finished
    results/multi30k-de-en/MODEL/checkpoint.json     best.pt or averaged-N.pt, and the length
                                                     penalty, chosen on dev BLEU
    results/multi30k-de-en/MODEL/SPLIT.{hyp,json}    beam-5 translations and their scores (with
                                                     lowercased BLEU on Moses-tokenized text when
                                                     the moses extra, sacremoses, is installed)
    results/multi30k-de-en.{md,json}                 the report
    results/multi30k-de-en-MODEL-attention-N.png     heatmaps of test_2016_flickr line N
    results/multi30k-de-en-MODEL-curves.png          dev BLEU and loss against steps and minutes

Configs: ``--configs DIR`` holds ``multi30k-PAIR-MODEL.yaml`` for a direction of its own, else
``multi30k-MODEL.yaml`` for every pair (the languages and files come from ``--pair``). This
script prepares, trains and writes the report; :mod:`seq2seq_attn.benchmark_run` chooses,
translates, scores and draws, by the rules of :mod:`seq2seq_attn.benchmark`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from seq2seq_attn.benchmark import build_report, markdown_report
from seq2seq_attn.benchmark_run import (
    BEAM_SIZE,
    TRAINING_FILE,
    BenchmarkError,
    ModelRun,
    evaluate_run,
    read_training_figures,
    training_figures,
    write_json,
)
from seq2seq_attn.checkpoint import CheckpointError
from seq2seq_attn.config import ConfigError
from seq2seq_attn.device import machine_info
from seq2seq_attn.fileio import write_text_atomic
from seq2seq_attn.multi30k import PrepareError, missing_files, parse_pair, prepare, source_dir
from seq2seq_attn.plotting import PlottingError
from seq2seq_attn.rundir import LAST_FILE, RunDirError
from seq2seq_attn.translation import TranslationError

REPO = Path(__file__).resolve().parent.parent
MODELS = ("transformer", "rnn-bahdanau", "rnn-luong")
DEFAULT_MODELS = ("transformer", "rnn-bahdanau")
SHARED_COPY = REPO.parent / "shared" / "data" / "multi30k"


class ReproduceError(RuntimeError):
    """A step that cannot run as asked; the message says what to do."""


def log(message: str) -> None:
    """One progress line of the script itself (the training draws its own progress)."""
    print(f"[reproduce] {message}", flush=True)


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (so the default config values match
    what a plain ``attn-train`` of the shipped config records), else absolute. Symbolic links
    are kept as they are (no resolving), so the text stays what a user typed."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(REPO))
    except ValueError:
        return str(absolute)


# ---- data -----------------------------------------------------------------------------------


def prepare_data(src: str, tgt: str, data_dir: Path) -> None:
    """Write the pair's splits into ``data_dir`` unless they are all there already; the raw
    files come from ``MULTI30K_DIR``, else the shared copy beside the repository, else the
    official download."""
    if not missing_files(data_dir, src, tgt):
        log(f"data: {data_dir} has every {src}-{tgt} split, skipping preparation")
        return
    raw = source_dir(fallback=SHARED_COPY)
    log(f"data: preparing {src}-{tgt} into {data_dir} from {raw or 'the official download'}")
    prepare(src, tgt, data_dir, raw)


def model_config(configs: Path, pair: str, model: str) -> Path:
    """The config of ``model``: one of its own for the direction, else the pair-neutral one."""
    candidates = [configs / f"multi30k-{pair}-{model}.yaml", configs / f"multi30k-{model}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ReproduceError(
        f"no config for {model}: neither {candidates[0].name} nor {candidates[1].name} is in "
        f"{configs} (--configs names the folder)"
    )


# ---- training -------------------------------------------------------------------------------


def attn_train_command() -> str:
    """The ``attn-train`` of this interpreter's environment."""
    beside = Path(sys.executable).with_name("attn-train")
    found = str(beside) if beside.is_file() else shutil.which("attn-train")
    if found is None:
        raise ReproduceError("attn-train is not installed: run `make install` first")
    return found


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_child(command: list[str]) -> int:
    """Run ``command`` to its end and return its exit status.

    The child runs in a session of its own, so a signal meant for ``make reproduce`` (Ctrl-C,
    SIGTERM to the process group, a closed terminal's SIGHUP) reaches it exactly once, forwarded
    from here: attn-train then finishes its step, saves ``last.pt`` and exits 130 or 143 (a second
    signal stops it at once, as it would without this script). This process waits for it in all
    cases, so a training is never cut off mid-write.
    """
    child: subprocess.Popen | None = None
    pending: list[int] = []  # signals that came before the child existed

    def forward(signum: int, frame: object) -> None:
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        child = subprocess.Popen(command, cwd=REPO, start_new_session=True)
        for signum in pending:
            forward(signum, None)
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` or refuse at once: two runs of this script on
    the same pair would train into the same run directories."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReproduceError(
                f"{lock_file}: another `make reproduce` of this pair is running; wait for it"
            ) from None
        yield


def set_aside_if_untrained(run_dir: Path) -> None:
    """A run directory without any checkpoint holds no training (attn-train was stopped during
    its setup or before its first save): rename it ``NAME.incomplete-TIME`` so that training
    starts again, keeping its files for a look."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()) or any(run_dir.glob("*.pt")):
        return
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.incomplete-{stamp}")
    run_dir.rename(aside)
    log(f"{run_dir}: no checkpoint in it (stopped before its first save); moved to {aside}")


def train_model(
    model: str, config: Path, run_dir: Path, work_dir: Path, overrides: list[str]
) -> dict:
    """Train (or resume) one model with ``attn-train`` and return its training figures, which
    are kept in ``work_dir/train.json`` so that a finished training is never run again."""
    summary_file = work_dir / TRAINING_FILE
    if summary_file.is_file():
        log(f"{model}: trained already ({summary_file}), skipping")
        return read_training_figures(work_dir)
    command = [attn_train_command(), str(config), "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    set_aside_if_untrained(run_dir)
    if (run_dir / LAST_FILE).is_file():
        log(f"{model}: resuming {run_dir} from its {LAST_FILE}")
        command.append("--resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ReproduceError(
            f"{run_dir}: holds checkpoints but no {LAST_FILE} to resume from; move it away and "
            "run again to train from scratch"
        )
    else:
        log(f"{model}: training {config.name} into {run_dir}")
    status = run_child(command)
    if status in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt
    if status != 0:
        raise ReproduceError(f"{model}: attn-train exited with status {status} (see above)")
    figures = training_figures(run_dir)
    if figures["stop_reason"] == "max_minutes":
        log(
            f"{run_dir.name}: the time guard train.max_minutes={figures['max_minutes']} stopped it "
            f"at step {figures['steps']} of {figures['max_steps']}: its scores depend on this "
            "machine's speed"
        )
    write_json(summary_file, figures)
    return figures


# ---- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="de-en", help="SRC-TGT among en, de, fr, cs")
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), metavar="MODEL",
        help=f"any of {', '.join(MODELS)}",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="run directories")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="report folder")
    parser.add_argument(
        "--configs", type=Path, default=REPO / "data" / "configs",
        help="where multi30k-MODEL.yaml (or multi30k-PAIR-MODEL.yaml) live",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value of every model (passed to attn-train)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default="auto", choices=("fp32", "bf16", "auto"),
        help="autocast for translating: auto picks bf16 on a CPU with native bf16 or a GPU "
        "that has it, fp16 on older GPUs, else fp32",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("data", "runs", "results", "configs"):  # the child runs in the repository
        setattr(args, name, Path(os.path.abspath(getattr(args, name))))
    return args


def reproduce(args: argparse.Namespace) -> Path:
    """Every step in order; returns the Markdown report's path."""
    src, tgt = parse_pair(args.pair)
    unknown = [model for model in args.models if model not in MODELS]
    if unknown:
        raise ReproduceError(f"MODELS: unknown {unknown}; choose from {', '.join(MODELS)}")
    prepare_data(src, tgt, args.data)
    stem = f"multi30k-{args.pair}"
    data_overrides = [f"data.src_lang={src}", f"data.tgt_lang={tgt}"] + [
        f"data.{key}={repo_relative(args.data / split)}"
        for key, split in (("train", "train"), ("dev", "val"), ("test", "test_2016_flickr"))
    ]
    # models finished by an earlier run (MODELS=... another time) stay in the report
    earlier = [m for m in MODELS if (args.results / stem / m / TRAINING_FILE).is_file()]
    with exclusive(args.runs / stem / ".lock"):
        models = {
            name: reproduce_model(name, args, src, tgt, data_overrides)
            for name in dict.fromkeys([*args.models, *earlier])
        }
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(args.pair, models, machine_info(), finished, BEAM_SIZE)
    write_json(args.results / f"{stem}.json", report)
    markdown = args.results / f"{stem}.md"
    write_text_atomic(markdown, markdown_report(report))
    return markdown


def reproduce_model(
    name: str, args: argparse.Namespace, src: str, tgt: str, data_overrides: list[str]
) -> dict:
    """Train, choose, translate and draw one model (each step skipped when done before)."""
    stem = f"multi30k-{args.pair}"
    config = model_config(args.configs, args.pair, name)
    run_dir, work_dir = args.runs / stem / name, args.results / stem / name
    figures = train_model(name, config, run_dir, work_dir, data_overrides + args.overrides)
    trained_at = (work_dir / TRAINING_FILE).stat().st_mtime
    run = ModelRun(
        name, run_dir, work_dir, args.data, (src, tgt), args.precision, args.results, stem
    )
    return {"train": figures, **evaluate_run(run, trained_at)}


class PrintProgress(logging.Handler):
    """The benchmark's progress (its INFO records) printed as this script's own lines."""

    def emit(self, record: logging.LogRecord) -> None:
        log(record.getMessage())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    started = time.monotonic()
    progress, handler = logging.getLogger("seq2seq_attn.benchmark_run"), PrintProgress()
    progress.addHandler(handler)
    level = progress.level
    progress.setLevel(logging.INFO)
    try:
        markdown = reproduce(args)
    except (
        ReproduceError, BenchmarkError, PrepareError, CheckpointError, ConfigError, RunDirError,
        PlottingError, TranslationError,
    ) as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run `make reproduce` again to go on from here", file=sys.stderr)
        return 130
    finally:
        progress.removeHandler(handler)
        progress.setLevel(level)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min: {markdown}")
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
