"""The Multi30k benchmark on a trained run (``scripts/reproduce.py`` trains the runs and calls
:func:`evaluate_run` on each): the figures of its training, the checkpoint and length penalty
chosen on the dev set by :func:`~seq2seq_attn.benchmark.choose_checkpoint`, the test sets'
translations and scores, and the pictures. Every step keeps its output in the model's results
folder and is skipped when that output is there; progress goes to this module's logger (INFO).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .benchmark import AVERAGE_LAST, averages_to_try, choose_checkpoint, score_test_set
from .checkpoint import average_checkpoints, recent_checkpoints, save_checkpoint
from .config import load_config
from .fileio import write_text_atomic
from .multi30k import pair_test_splits, read_split
from .plotting import plot_attention, plot_learning_curves
from .rundir import BEST_FILE, CONFIG_FILE, averaged_checkpoint, read_metrics, read_summary
from .translation import TranslationSettings, Translator, open_translator

logger = logging.getLogger(__name__)

BEAM_SIZE = 5
BATCH_SENTENCES = 64  # sentences per beam-search batch (the fastest setting on a 2-core CPU)
HEATMAP_SPLIT, HEATMAP_SENTENCES, HEATMAP_MAX_WORDS = "test_2016_flickr", 2, 12
CHOICE_FILE = "checkpoint.json"  # in a model's results folder, beside SPLIT.hyp and SPLIT.json
TRAINING_FILE = "train.json"  # there too: the figures of its finished training
TRAINING_FIGURES = ("steps", "max_steps", "max_minutes", "stop_reason", "precision")


class BenchmarkError(RuntimeError):
    """A run or a results file the benchmark cannot use as it is; the message says what to do."""


@dataclass(frozen=True)
class ModelRun:
    """One trained model of the benchmark and where its files are."""

    name: str  # transformer, rnn-bahdanau, rnn-luong
    run_dir: Path  # its attn-train run directory
    work_dir: Path  # its results: checkpoint.json, SPLIT.hyp, SPLIT.json
    data_dir: Path  # the prepared Multi30k pair
    pair: tuple[str, str]  # (src, tgt)
    precision: str  # autocast for translating: fp32, bf16 or auto
    pictures_dir: Path  # where the PNGs go (beside the report)
    stem: str  # the pictures' prefix: multi30k-SRC-TGT


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> dict:
    """A JSON file the benchmark wrote earlier; a damaged one is named, with the way out."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchmarkError(
            f"{path}: damaged ({error}); delete it and run again to redo that step"
        ) from None


def training_figures(run_dir: Path) -> dict:
    """The figures of a finished run (its ``summary.json``) and the budget it ran under (its
    ``config.yaml``): what the report says of its training. A run stopped by a signal, or
    one that never validated (no ``best.pt`` to choose from), is a :class:`BenchmarkError`."""
    summary = read_summary(run_dir)
    budget = load_config(run_dir / CONFIG_FILE).train
    if summary.reason == "stopped":
        raise BenchmarkError(f"{run_dir}: its training was stopped; run again to resume it")
    if summary.best_checkpoint is None:
        raise BenchmarkError(
            f"{run_dir}: no {BEST_FILE}, so the run never validated; make reproduce needs a dev "
            "set (data.dev) to choose its checkpoint"
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


def read_training_figures(work_dir: Path) -> dict:
    """The figures a finished training left in ``work_dir``'s ``train.json``; one written by an
    older version (without the step budget) is refused with the way out."""
    summary_file = work_dir / TRAINING_FILE
    figures = read_json(summary_file)
    missing = [key for key in TRAINING_FIGURES if key not in figures]
    if missing:
        raise BenchmarkError(
            f"{summary_file}: written by an older make reproduce (no {', '.join(missing)}); "
            f"delete {summary_file.parent} and run again (a finished training is not redone)"
        )
    return figures


def translator_for(
    checkpoint: Path, precision: str, beam_size: int = BEAM_SIZE,
    length_penalty: float | None = None,
) -> Translator:  # fmt: skip
    """``checkpoint`` ready to translate with ``beam_size`` (1: greedy) under ``precision``;
    ``length_penalty`` None keeps the run's own (``decode.length_penalty``)."""
    settings = TranslationSettings(
        precision=precision, beam_size=beam_size, length_penalty=length_penalty,
        max_sentences=BATCH_SENTENCES,
    )  # fmt: skip
    return open_translator(checkpoint, settings)


def translate_lines(translator: Translator, sources: list[str]) -> list[str]:
    """The detokenized best translation of each source line."""
    return translator.detokenize(translator.translate(sources))


def chosen_checkpoint(run: ModelRun) -> dict:
    """The checkpoint and length penalty that translate the test sets, chosen on the dev set
    only by :func:`choose_checkpoint` among ``best.pt`` and the means of the run's last
    checkpoints (``averaged-N.pt``, written into the run directory; N is capped by the run's
    ``train.keep_last``). Kept in ``checkpoint.json``; one written by an older version (no
    length penalty) is made again."""
    choice_file = run.work_dir / CHOICE_FILE
    if choice_file.is_file():
        choice = read_json(choice_file)
        if "length_penalty" in choice:
            return choice
        logger.info("%s: %s has no length penalty (an older script): choosing again",
                    run.name, choice_file)  # fmt: skip
    candidates: dict[str, list[int]] = {BEST_FILE: []}
    for recent in averages_to_try(recent_checkpoints(run.run_dir, max(AVERAGE_LAST))):
        averaged = averaged_checkpoint(run.run_dir, len(recent))
        save_checkpoint(average_checkpoints(list(recent.values())), averaged)
        candidates[averaged.name] = list(recent)
    sources, references = read_split(run.data_dir, "val", *run.pair)

    def dev_bleu(translator: Translator) -> float:
        return score_test_set(translate_lines(translator, sources), references)["bleu"]

    def greedy(name: str) -> float:
        bleu = dev_bleu(translator_for(run.run_dir / name, run.precision, beam_size=1))
        logger.info("%s: %s greedy dev BLEU %.2f", run.name, name, bleu)
        return bleu

    def beam(name: str, penalty: float) -> float:
        translator = translator_for(run.run_dir / name, run.precision, length_penalty=penalty)
        bleu = dev_bleu(translator)
        logger.info("%s: %s, length penalty %s: dev BLEU %.2f", run.name, name, penalty, bleu)
        return bleu

    choice = choose_checkpoint(candidates, greedy, beam)
    write_json(choice_file, choice)
    return choice


def translate_tests(run: ModelRun, checkpoint: Path, length_penalty: float) -> dict:
    """Beam-5 translations of every test split by ``checkpoint`` with ``length_penalty`` (kept
    as ``SPLIT.hyp``) with their sacreBLEU scores (kept as ``SPLIT.json``, which names the
    checkpoint and penalty); splits done earlier by the same checkpoint and penalty are read
    back, others translated again."""
    results: dict[str, dict] = {}
    translator = None
    made_by = {"checkpoint": checkpoint.name, "length_penalty": length_penalty}
    for split in pair_test_splits(*run.pair):
        scores_file = run.work_dir / f"{split}.json"
        if scores_file.is_file():
            earlier = read_json(scores_file)
            if all(earlier.get(key) == value for key, value in made_by.items()):
                results[split] = earlier
                continue
        translator = translator or translator_for(
            checkpoint, run.precision, length_penalty=length_penalty
        )
        sources, references = read_split(run.data_dir, split, *run.pair)
        logger.info("%s: translating %s (%d sentences, beam %d)",
                    run.name, split, len(sources), BEAM_SIZE)  # fmt: skip
        started = time.perf_counter()
        hypotheses = translate_lines(translator, sources)
        seconds = time.perf_counter() - started
        hyp_file = run.work_dir / f"{split}.hyp"
        write_text_atomic(hyp_file, "".join(line + "\n" for line in hypotheses))
        scores = score_test_set(hypotheses, references, moses_lang=run.pair[1])
        results[split] = {**scores, **made_by, "sentences": len(sources), "seconds": seconds,
                          "precision": translator.precision.name}  # fmt: skip
        logger.info("%s: %s BLEU %.2f, lowercased %.2f, chrF %.2f (%.1f sentences/s)",
                    run.name, split, scores["bleu"], scores["bleu_lc"], scores["chrf"],
                    len(sources) / seconds)  # fmt: skip
        write_json(scores_file, results[split])
    return results


def _up_to_date(paths: list[Path], since: float) -> bool:
    """Whether every path exists and was written at or after ``since`` (a file's mtime)."""
    return all(path.is_file() and path.stat().st_mtime >= since for path in paths)


def plot_heatmaps(
    run: ModelRun, checkpoint: Path, length_penalty: float, chosen_at: float
) -> list[str]:
    """PNG cross-attention heatmaps of the beam-5 translations of the first short
    test_2016_flickr sentences (Transformer: last decoder layer, mean of the heads); returns
    the file names; translated with ``length_penalty``. Pictures older than ``chosen_at`` (when
    the checkpoint and penalty were chosen) are drawn again."""
    sources = read_split(run.data_dir, HEATMAP_SPLIT, *run.pair)[0]
    short = [i for i, line in enumerate(sources) if len(line.split()) <= HEATMAP_MAX_WORDS]
    lines = short[:HEATMAP_SENTENCES]
    names = [f"{run.stem}-{run.name}-attention-{index + 1}.png" for index in lines]
    if _up_to_date([run.pictures_dir / name for name in names], chosen_at):
        return names
    translator = translator_for(checkpoint, run.precision, length_penalty=length_penalty)
    found = translator.translate([sources[index] for index in lines])
    for index, hypothesis, name in zip(lines, found, names, strict=True):
        record = translator.attention(index + 1, sources[index], hypothesis)
        plot_attention([record], run.pictures_dir / name)
    logger.info("%s: wrote %s", run.name, ", ".join(names))
    return names


def plot_curves(run: ModelRun, since: float) -> str:
    """Dev BLEU and loss against steps and training minutes of one run, as
    ``STEM-MODEL-curves.png``; drawn again when older than ``since``."""
    name = f"{run.stem}-{run.name}-curves.png"
    if not _up_to_date([run.pictures_dir / name], since):
        validations = read_metrics(run.run_dir, "valid")
        plot_learning_curves(validations, run.pictures_dir / name, f"{run.stem} {run.name}")
        logger.info("%s: wrote %s", run.name, name)
    return name


def evaluate_run(run: ModelRun, trained_at: float) -> dict:
    """Choose, translate and draw one trained model (each step skipped when done before):
    ``checkpoint`` (the choice), ``tests`` (the scores by split), ``pictures`` (the heatmaps'
    file names) and ``curves`` (drawn again when older than ``trained_at``, an mtime)."""
    choice = chosen_checkpoint(run)
    checkpoint, penalty = run.run_dir / choice["checkpoint"], choice["length_penalty"]
    tests = translate_tests(run, checkpoint, penalty)
    chosen_at = (run.work_dir / CHOICE_FILE).stat().st_mtime
    pictures = plot_heatmaps(run, checkpoint, penalty, chosen_at)
    return {
        "checkpoint": choice, "tests": tests, "pictures": pictures,
        "curves": plot_curves(run, trained_at),
    }  # fmt: skip
