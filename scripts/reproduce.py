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
``multi30k-MODEL.yaml`` for every pair (the languages and files come from ``--pair``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from seq2seq_attn.benchmark import build_report, markdown_report, score_test_set
from seq2seq_attn.checkpoint import CheckpointError, average_checkpoints, save_checkpoint
from seq2seq_attn.config import ConfigError, load_config
from seq2seq_attn.device import machine_info
from seq2seq_attn.evaluate import Translator, load_for_translation
from seq2seq_attn.fileio import write_text_atomic
from seq2seq_attn.metrics import Score, corpus_scores
from seq2seq_attn.multi30k import (
    PrepareError,
    missing_files,
    pair_test_splits,
    parse_pair,
    prepare,
    read_split,
    source_dir,
)
from seq2seq_attn.plotting import PlottingError, plot_attention, plot_learning_curves
from seq2seq_attn.rundir import (
    CONFIG_FILE,
    RunDirError,
    read_metrics,
    read_summary,
    recent_checkpoints,
)

REPO = Path(__file__).resolve().parent.parent
MODELS = ("transformer", "rnn-bahdanau", "rnn-luong")
DEFAULT_MODELS = ("transformer", "rnn-bahdanau")
BEAM_SIZE = 5
BATCH_SENTENCES = 64  # sentences per beam-search batch (the fastest setting on a 2-core CPU)
AVERAGE_LAST = (5, 10)  # checkpoint averaging: the candidates' numbers of last checkpoints
LENGTH_PENALTIES = (0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # tried on the dev set with the beam
HEATMAP_SPLIT, HEATMAP_SENTENCES, HEATMAP_MAX_WORDS = "test_2016_flickr", 2, 12
SHARED_COPY = REPO.parent / "shared" / "data" / "multi30k"


class ReproduceError(RuntimeError):
    """A step that cannot run as asked; the message says what to do."""


def log(message: str) -> None:
    """One progress line of the script itself (the training draws its own progress)."""
    print(f"[reproduce] {message}", flush=True)


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> dict:
    """A JSON file this script wrote earlier; a damaged one is named, with the way out."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReproduceError(
            f"{path}: damaged ({error}); delete it and run again to redo that step"
        ) from None


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
    summary_file = work_dir / "train.json"
    if summary_file.is_file():
        log(f"{model}: trained already ({summary_file}), skipping")
        return read_training_figures(summary_file)
    command = [attn_train_command(), str(config), "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    set_aside_if_untrained(run_dir)
    if (run_dir / "last.pt").is_file():
        log(f"{model}: resuming {run_dir} from its last.pt")
        command.append("--resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ReproduceError(
            f"{run_dir}: holds checkpoints but no last.pt to resume from; move it away and run "
            "again to train from scratch"
        )
    else:
        log(f"{model}: training {config.name} into {run_dir}")
    status = run_child(command)
    if status in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        raise KeyboardInterrupt
    if status != 0:
        raise ReproduceError(f"{model}: attn-train exited with status {status} (see above)")
    figures = training_figures(run_dir)
    write_json(summary_file, figures)
    return figures


TRAINING_FIGURES = ("steps", "max_steps", "max_minutes", "stop_reason", "precision")


def read_training_figures(summary_file: Path) -> dict:
    """The figures a finished training left in ``train.json``; one written by an older
    version of this script (without the step budget) is refused with the way out."""
    figures = read_json(summary_file)
    missing = [key for key in TRAINING_FIGURES if key not in figures]
    if missing:
        raise ReproduceError(
            f"{summary_file}: written by an older make reproduce (no {', '.join(missing)}); "
            f"delete {summary_file.parent} and run again (a finished training is not redone)"
        )
    return figures


def training_figures(run_dir: Path) -> dict:
    """The figures of a finished run (its ``summary.json``) and the budget it ran under (its
    ``config.yaml``)."""
    summary = read_summary(run_dir)
    budget = load_config(run_dir / CONFIG_FILE).train
    if summary.reason == "stopped":
        raise ReproduceError(f"{run_dir}: its training was stopped; run again to resume it")
    if summary.best_checkpoint is None:
        raise ReproduceError(
            f"{run_dir}: no best.pt, so the run never validated; make reproduce needs a dev set "
            "(data.dev) to choose its checkpoint"
        )
    if summary.reason == "max_minutes":
        log(
            f"{run_dir.name}: the time guard train.max_minutes={budget.max_minutes} stopped it at "
            f"step {summary.step} of {budget.max_steps}: its scores depend on this machine's speed"
        )
    return {
        "params": summary.num_parameters,
        "steps": summary.step,
        "epochs": summary.epoch,
        "max_steps": budget.max_steps,
        "max_minutes": budget.max_minutes,
        "stop_reason": summary.reason,
        "train_minutes": summary.elapsed / 60,
        "train_tokens_per_s": summary.target_tokens_per_second,
        "best_dev_bleu": summary.best_bleu,
        "best_step": summary.best_step,
        "precision": summary.precision,
    }


# ---- checkpoint choice and translation ------------------------------------------------------


def translator_for(
    checkpoint: Path, precision: str, beam_size: int = BEAM_SIZE,
    length_penalty: float | None = None,
) -> Translator:  # fmt: skip
    """``checkpoint`` ready to translate with ``beam_size`` (1: greedy) under ``precision``;
    ``length_penalty`` None keeps the run's own (``decode.length_penalty``)."""
    return load_for_translation(
        checkpoint, precision=precision, beam_size=beam_size, length_penalty=length_penalty,
        max_sentences=BATCH_SENTENCES,
    )  # fmt: skip


def translate_lines(translator: Translator, sources: list[str]) -> list[str]:
    """The detokenized best translation of each source line."""
    return translator.detokenize(translator.translate(sources))


def choose_checkpoint(
    model_name: str, run_dir: Path, work_dir: Path, data_dir: Path, src: str, tgt: str,
    precision: str,
) -> dict:  # fmt: skip
    """The checkpoint and length penalty that translate the test sets, chosen on the dev set
    only. The checkpoint: ``best.pt`` (best validation) or ``averaged-N.pt`` (the mean of the
    run's last N checkpoints, N in :data:`AVERAGE_LAST` or all it has when fewer), whichever
    has the highest greedy dev BLEU. Then the length penalty of :data:`LENGTH_PENALTIES` with
    the highest beam dev BLEU (ties: the smaller one). Kept in ``work_dir/checkpoint.json``;
    one written by an older version of this script (no length penalty) is made again. N is
    capped by the run's ``train.keep_last``, the checkpoints it keeps."""
    choice_file = work_dir / "checkpoint.json"
    if choice_file.is_file():
        choice = read_json(choice_file)
        if "length_penalty" in choice:
            return choice
        log(f"{model_name}: {choice_file} has no length penalty (an older script): choosing again")
    candidates = {"best.pt": run_dir / "best.pt"}
    averaged_steps: dict[str, list[int]] = {}
    for count in AVERAGE_LAST:
        recent = recent_checkpoints(run_dir, count)
        name = f"averaged-{len(recent)}.pt"
        if len(recent) > 1 and name not in candidates:
            candidates[name] = run_dir / name
            averaged_steps[name] = list(recent)
            save_checkpoint(average_checkpoints(list(recent.values())), candidates[name])
    sources, references = read_split(data_dir, "val", src, tgt)
    dev_bleu = {}
    for name, path in candidates.items():
        hypotheses = translate_lines(translator_for(path, precision, beam_size=1), sources)
        dev_bleu[name] = score_test_set(hypotheses, references)["bleu"]
        log(f"{model_name}: {name} greedy dev BLEU {dev_bleu[name]:.2f}")
    chosen = max(dev_bleu, key=lambda name: dev_bleu[name])
    beam_bleu = {}
    for penalty in LENGTH_PENALTIES:
        translator = translator_for(run_dir / chosen, precision, length_penalty=penalty)
        hypotheses = translate_lines(translator, sources)
        beam_bleu[penalty] = score_test_set(hypotheses, references)["bleu"]
        log(f"{model_name}: {chosen}, length penalty {penalty}: dev BLEU {beam_bleu[penalty]:.2f}")
    top = max(beam_bleu.values())
    choice = {
        "checkpoint": chosen,
        "dev_bleu_greedy": dev_bleu,
        "averaged_steps": averaged_steps,
        "length_penalty": min(penalty for penalty, bleu in beam_bleu.items() if bleu == top),
        "dev_bleu_beam": {str(penalty): bleu for penalty, bleu in beam_bleu.items()},
    }
    write_json(choice_file, choice)
    return choice


def translate_tests(
    model_name: str, checkpoint: Path, work_dir: Path, data_dir: Path, src: str, tgt: str,
    precision: str, length_penalty: float,
) -> dict:  # fmt: skip
    """Beam-5 translations of every test split by ``checkpoint`` with ``length_penalty`` (kept
    as ``SPLIT.hyp``) with their sacreBLEU scores (kept as ``SPLIT.json``, which names the
    checkpoint and penalty); splits done earlier by the same checkpoint and penalty are read
    back, others translated again."""
    results: dict[str, dict] = {}
    translator = None
    made_by = {"checkpoint": checkpoint.name, "length_penalty": length_penalty}
    for split in pair_test_splits(src, tgt):
        scores_file = work_dir / f"{split}.json"
        if scores_file.is_file():
            earlier = read_json(scores_file)
            if all(earlier.get(key) == value for key, value in made_by.items()):
                results[split] = earlier
                continue
        translator = translator or translator_for(
            checkpoint, precision, length_penalty=length_penalty
        )
        sources, references = read_split(data_dir, split, src, tgt)
        log(f"{model_name}: translating {split} ({len(sources)} sentences, beam {BEAM_SIZE})")
        started = time.perf_counter()
        hypotheses = translate_lines(translator, sources)
        seconds = time.perf_counter() - started
        write_text_atomic(work_dir / f"{split}.hyp", "".join(line + "\n" for line in hypotheses))
        scores = score_test_set(hypotheses, references)
        moses = moses_lowercased_bleu(hypotheses, references, tgt)
        if moses is not None:
            scores["bleu_lc_moses"] = moses.score
            scores["signatures"]["bleu_lc_moses"] = moses_signature(tgt, moses.signature)
        results[split] = {
            **scores,
            **made_by,
            "sentences": len(sources),
            "seconds": seconds,
            "precision": translator.precision.name,
        }
        log(
            f"{model_name}: {split} BLEU {scores['bleu']:.2f}, lowercased {scores['bleu_lc']:.2f}, "
            f"chrF {scores['chrf']:.2f} ({len(sources) / seconds:.1f} sentences/s)"
        )
        write_json(scores_file, results[split])
    return results


def moses_lowercased_bleu(hypotheses: list[str], references: list[str], lang: str) -> Score | None:
    """Lowercased BLEU on Moses-tokenized text: each line lowercased, its punctuation normalized
    and Moses-tokenized (sacremoses, no XML escaping: it changes no BLEU), then sacreBLEU with
    ``-lc -tok none``, as the Multi30k release prepares its tokenized files; None when the
    ``moses`` extra is not installed."""
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError:
        return None
    normalizer, tokenizer = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)

    def tokenized(lines: list[str]) -> list[str]:
        return [
            tokenizer.tokenize(normalizer.normalize(line.lower()), escape=False, return_str=True)
            for line in lines
        ]

    return corpus_scores(
        tokenized(hypotheses), tokenized(references), ("bleu",), lowercase=True, tokenize="none"
    )["bleu"]


def moses_signature(lang: str, bleu_signature: str) -> str:
    """How :func:`moses_lowercased_bleu` was computed, for the report."""
    return (
        f"lowercase | sacremoses {version('sacremoses')} -l {lang} normalize tokenize | "
        f"{bleu_signature}"
    )


# ---- pictures -------------------------------------------------------------------------------


def up_to_date(paths: list[Path], since: float) -> bool:
    """Whether every path exists and was written at or after ``since`` (a file's mtime)."""
    return all(path.is_file() and path.stat().st_mtime >= since for path in paths)


def plot_heatmaps(
    model_name: str, checkpoint: Path, data_dir: Path, pair: tuple[str, str], results_dir: Path,
    stem: str, precision: str, length_penalty: float, chosen_at: float,
) -> list[str]:  # fmt: skip
    """PNG cross-attention heatmaps of the beam-5 translations of the first short
    test_2016_flickr sentences (Transformer: last decoder layer, mean of the heads); returns
    the file names; translated with ``length_penalty``. Pictures older than ``chosen_at`` (when
    the checkpoint and penalty were chosen) are drawn again."""
    sources = read_split(data_dir, HEATMAP_SPLIT, *pair)[0]
    short = [i for i, line in enumerate(sources) if len(line.split()) <= HEATMAP_MAX_WORDS]
    lines = short[:HEATMAP_SENTENCES]
    names = [f"{stem}-{model_name}-attention-{index + 1}.png" for index in lines]
    if up_to_date([results_dir / name for name in names], chosen_at):
        return names
    translator = translator_for(checkpoint, precision, length_penalty=length_penalty)
    found = translator.translate([sources[index] for index in lines])
    for index, hypothesis, name in zip(lines, found, names, strict=True):
        record = translator.attention(index + 1, sources[index], hypothesis)
        plot_attention([record], results_dir / name)
    log(f"{model_name}: wrote {', '.join(names)}")
    return names


def plot_curves(model_name: str, run_dir: Path, results_dir: Path, stem: str, since: float) -> str:
    """Dev BLEU and loss against steps and training minutes of one run, as
    ``STEM-MODEL-curves.png``; drawn again when older than ``since``."""
    name = f"{stem}-{model_name}-curves.png"
    if not up_to_date([results_dir / name], since):
        validations = read_metrics(run_dir, "valid")
        plot_learning_curves(validations, results_dir / name, f"{stem} {model_name}")
        log(f"{model_name}: wrote {name}")
    return name


# ---- report ---------------------------------------------------------------------------------


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
    earlier = [m for m in MODELS if (args.results / stem / m / "train.json").is_file()]
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
    choice = choose_checkpoint(name, run_dir, work_dir, args.data, src, tgt, args.precision)
    checkpoint = run_dir / choice["checkpoint"]
    penalty = choice["length_penalty"]
    tests = translate_tests(
        name, checkpoint, work_dir, args.data, src, tgt, args.precision, penalty
    )
    chosen_at = (work_dir / "checkpoint.json").stat().st_mtime
    pictures = plot_heatmaps(
        name, checkpoint, args.data, (src, tgt), args.results, stem, args.precision, penalty,
        chosen_at,
    )  # fmt: skip
    trained_at = (work_dir / "train.json").stat().st_mtime
    curves = plot_curves(name, run_dir, args.results, stem, trained_at)
    return {
        "train": figures, "checkpoint": choice, "tests": tests, "pictures": pictures,
        "curves": curves,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    started = time.monotonic()
    try:
        markdown = reproduce(args)
    except (
        ReproduceError, PrepareError, CheckpointError, ConfigError, RunDirError, PlottingError
    ) as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run `make reproduce` again to go on from here", file=sys.stderr)
        return 130
    log(f"done in {(time.monotonic() - started) / 60:.1f} min: {markdown}")
    print(markdown.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
