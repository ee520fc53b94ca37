"""The training loop: steps with accumulation and clipping, validation, early stopping, a run
directory with self-contained checkpoints, and exact resume.

Entry point: :func:`train`. Progress reaches the caller through :class:`TrainCallback` hooks (the
CLI draws them); a ``threading.Event`` passed as ``stop`` asks the loop to finish the current
step, save ``last.pt`` and return (what a SIGINT/SIGTERM handler sets).

Launched by ``torchrun``, every process runs this same loop on its share of each step's batches
(:func:`~seq2seq_attn.data.iter_step_shares`) and the model is wrapped in
``DistributedDataParallel``. Rank 0 alone trains the tokenizer, builds the data cache first,
validates and writes files; every decision that ends or shapes the run (limits, early stopping,
a signal, the dev BLEU) is agreed by all processes, so they all stop at the same step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, config_from_plain, to_plain, to_yaml
from .data import (
    Batch,
    StepShare,
    iter_batches,
    iter_step_shares,
    load_pairs,
    load_split,
    make_sampler,
    texts,
    tokenize_pairs,
)  # fmt: skip
from .device import Precision, resolve_device, resolve_precision
from .distributed import DistributedError, World
from .evaluate import Evaluation, score_translations, search_options
from .fileio import write_text_atomic
from .metrics import Score
from .models import Seq2Seq, build_model
from .optim import Trainer
from .rundir import (
    BEST_FILE,
    CONFIG_FILE,
    LAST_FILE,
    METRICS_FILE,
    RunDirError,
    TrainSummary,
    forget_summary,
    prepare_run_dir,
    prune_numbered,
    trim_metrics,
    write_summary,
)
from .tokenizer import Tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

FORMAT = "seq2seq-attn/1"
NUM_SAMPLES = 3
MACHINE_LOCAL_DATA_KEYS = ("cache_dir", "num_workers", "num_proc")  # change no result
STOP_REASONS = ("max_steps", "max_epochs", "max_minutes", "early_stopping", "stopped")


@dataclass
class Progress:
    """Counters that a checkpoint carries so that a resumed run continues exactly."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumed sessions
    best_bleu: float | None = None
    best_step: int = 0
    bad_validations: int = 0  # validations since the best one (early stopping)
    last_validated: int = 0
    nonfinite_total: int = 0
    target_tokens: int = 0  # target positions trained on (EOS included), for throughput
    step_seconds: float = 0.0  # seconds inside optimisation steps (no validation or saving)


@dataclass
class RunInfo:
    """What the loop starts with (for a banner)."""

    run_dir: Path
    device: str
    precision: str
    num_parameters: int
    train_pairs: int
    start_step: int
    max_steps: int | None
    steps_per_epoch: int  # with accumulate_steps batches per step (for an ETA under max_epochs)


@dataclass
class StepReport:
    """One optimisation step: per-token means over its target tokens."""

    step: int
    epoch: int  # 1-based epoch the step's batches came from
    loss: float  # label-smoothed
    perplexity: float  # exp of the per-token NLL
    lr: float
    tokens: int  # source + target tokens in the step
    tokens_per_second: float
    elapsed: float
    skipped: bool  # the loss or gradient was NaN/inf and no update was made


@dataclass
class ValidationReport:
    """One validation on the dev split."""

    step: int
    loss: float
    perplexity: float
    scores: dict[str, Score]
    best_bleu: float
    is_best: bool
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (src, ref, hypothesis)


class TrainCallback:
    """Hooks the loop calls; subclass and override the ones you need (each does nothing here)."""

    def on_start(self, info: RunInfo) -> None:
        """Before the first step (after setup and resume)."""

    def on_step(self, report: StepReport) -> None:
        """After every optimisation step."""

    def on_validation(self, report: ValidationReport) -> None:
        """After every validation."""

    def on_checkpoint(self, path: Path) -> None:
        """After a checkpoint file was written."""

    def on_end(self, summary: TrainSummary) -> None:
        """After the last checkpoint was written."""


# ---- seeds and resume checks -----------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CUDA included)."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The generators' states as plain data (for checkpoints)."""
    python_state = random.getstate()
    state = {"python": [python_state[0], list(python_state[1]), python_state[2]]}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def first_difference(
    saved: object, current: object, key: str, labels: tuple[str, str] = ("in the run", "now")
) -> str | None:
    """The first dotted key where two plain configs differ, with both values (each followed by
    its label), or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in saved.keys() | current.keys():
            found = first_difference(saved.get(name), current.get(name), f"{key}.{name}", labels)
            if found:
                return found
        return None
    if saved == current:
        return None
    return f"{key}: {saved!r} {labels[0]}, {current!r} {labels[1]}"


def check_resumable(saved: Config, config: Config, path: Path) -> None:
    """Refuse to resume with other data, tokenizer or model settings than the run's (where the
    cache and the test split live may change)."""
    movable = {"test", *MACHINE_LOCAL_DATA_KEYS}
    for section in ("data", "tokenizer", "model"):
        saved_values, values = to_plain(getattr(saved, section)), to_plain(getattr(config, section))
        if section == "data":
            saved_values, values = (
                {key: value for key, value in plain.items() if key not in movable}
                for plain in (saved_values, values)
            )
        found = first_difference(saved_values, values, section)
        if found:
            raise RunDirError(
                f"{path}: cannot resume with a different {section} section ({found}); resume "
                "with the run's config.yaml or start a new run directory"
            )


def build_tokenizer(config: Config, checkpoint: dict | None) -> Tokenizer:
    """The checkpoint's tokenizer on resume, else SentencePiece trained on the training split."""
    if checkpoint is not None:
        return Tokenizer.from_state_dict(checkpoint["tokenizer"])
    pairs = load_pairs(config.data, "train")
    return train_tokenizer(texts(pairs, "src"), texts(pairs, "tgt"), config.tokenizer)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[TrainCallback] = (),
    stop: threading.Event | None = None,
) -> TrainSummary:
    """Train a model as ``config`` says, writing everything into ``run_dir``.

    A new run refuses a non-empty ``run_dir``; ``resume=True`` continues from its ``last.pt``
    exactly (same data, tokenizer and model sections required; train limits may change).
    Under ``torchrun`` this process joins the others (see the module's docstring); only rank 0
    calls ``callbacks``. Raises :class:`RunDirError`, ``ConfigError``, ``DataError``,
    :class:`NonFiniteLossError` or :class:`DistributedError`.
    """
    run_dir = Path(run_dir)
    world, device = World.from_environment(
        config.train.ddp_backend, resolve_device(config.train.device),
        config.train.ddp_timeout_minutes,
    )  # fmt: skip
    main_callbacks = list(callbacks) if world.is_main else []
    try:
        summary = _train(config, run_dir, resume, main_callbacks, stop, world, device)
    except BaseException:
        world.close(finished=False)
        raise
    world.close(finished=True)
    return summary


def _train(
    config: Config,
    run_dir: Path,
    resume: bool,
    callbacks: list[TrainCallback],
    stop: threading.Event | None,
    world: World,
    device: torch.device,
) -> TrainSummary:
    """:func:`train` once the processes (one without torchrun) have joined."""
    opened: dict = {}

    def open_on_main() -> dict:
        """Create or check the run directory; the tokenizer's state (trained on a new run)."""
        opened["checkpoint"] = checkpoint = prepare_run_dir(run_dir, resume)
        if checkpoint is not None:
            check_resumable(config_from_plain(checkpoint["config"]), config, run_dir / LAST_FILE)
        opened["tokenizer"] = build_tokenizer(config, checkpoint)
        return opened["tokenizer"].state_dict()

    tokenizer_state = world.on_main(open_on_main)
    if world.distributed:
        logger.info("training with %s", world.describe())
        check_same_config(world, config)
    tokenizer = opened.get("tokenizer") or Tokenizer.from_state_dict(tokenizer_state)
    checkpoint = opened.get("checkpoint")
    if resume:
        checkpoint = shared_checkpoint(world, run_dir, checkpoint)
    precision = resolve_precision(config.train.precision, device)
    seed_everything(config.train.seed + world.rank)  # other dropout masks on every process
    run = Run(config, run_dir, tokenizer, device, precision, callbacks, stop, world)
    if checkpoint is not None:
        run.load_state_dict(checkpoint)
    if world.is_main:
        if checkpoint is not None:
            trim_metrics(run_dir / METRICS_FILE, run.progress.step)
            forget_summary(run_dir)
        tokenizer.save(run_dir)
        write_text_atomic(run_dir / CONFIG_FILE, to_yaml(config))
    return run.run()


def check_same_config(world: World, config: Config) -> None:
    """Fail on every process when one was given another config than rank 0 (other steps per
    epoch would make them wait for each other forever); where a machine keeps its data cache
    and how many processes load data may differ."""
    mine = to_plain(config)
    for key in MACHINE_LOCAL_DATA_KEYS:
        mine["data"].pop(key)
    found = first_difference(world.broadcast(mine), mine, "config", ("on rank 0", "here"))
    world.check(
        None
        if found is None
        else f"rank {world.rank} on {world.host} has another config than rank 0 ({found}); "
        "start every machine with the same config file and --set options"
    )


def shared_checkpoint(world: World, run_dir: Path, checkpoint: dict | None) -> dict:
    """Rank 0's ``checkpoint`` (already loaded) or, on the other processes, the same ``last.pt``
    read from the shared run directory; every process fails together when one cannot see it or
    sees another step."""
    path, error = run_dir / LAST_FILE, None
    if not world.is_main:
        if path.is_file():
            try:
                checkpoint = load_checkpoint(path)
            except Exception as exc:  # every process must hear of it, or the others wait
                error = f"rank {world.rank} on {world.host}: {exc}"
        else:
            error = (
                f"{path}: rank {world.rank} on {world.host} cannot see the checkpoint rank 0 "
                "resumes from; with several machines the run directory must be on a filesystem "
                "every machine mounts at the same path (NFS, Lustre, ...)"
            )
    world.check(error)
    assert checkpoint is not None
    steps = world.gather(int(checkpoint["progress"]["step"]))
    if len(set(steps)) > 1:
        raise DistributedError(
            f"{path}: the processes read checkpoints of different steps ({steps}, by rank); "
            "every machine must see the same run directory (a shared filesystem, not copies)"
        )
    return checkpoint


class Run:
    """One training run's state and loop (built by :func:`train`)."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        tokenizer: Tokenizer,
        device: torch.device,
        precision: Precision,
        callbacks: list[TrainCallback],
        stop: threading.Event | None,
        world: World | None = None,
    ) -> None:
        self.config, self.run_dir, self.tokenizer = config, run_dir, tokenizer
        self.device, self.precision, self.callbacks = device, precision, callbacks
        self.stop = stop or threading.Event()
        self.world = world or World()
        # rank 0 tokenizes and caches first; the others then read its cache
        self.train_ds, _ = self.world.in_turn(lambda: load_split(config.data, "train", tokenizer))
        self.sampler = make_sampler(self.train_ds, config.data.max_tokens, seed=config.train.seed)
        self.shares = self.step_shares()
        model = build_model(
            config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
        )
        self.model: Seq2Seq = model.to(device)
        self.validates = bool(config.data.dev)
        dev = self.world.main_only(self._dev_data)  # validation runs on rank 0
        self.dev_ds, self.dev_pairs = dev if dev is not None else (None, None)
        self.replica = self.world.replicate(self.model)
        collectives = self.world if self.world.distributed else None
        self.trainer = Trainer(
            self.model, config.train, precision, device, self.replica, collectives
        )
        self.progress = Progress()
        self.start_time = time.monotonic()
        self.saved_step = -1  # the step last.pt holds

    def _dev_data(self) -> tuple:
        """The tokenized dev split (for the loss) and its raw pairs (for BLEU) as datasets, or
        ``(None, None)`` when ``data.dev`` is empty."""
        if not self.config.data.dev:
            return None, None
        pairs = load_pairs(self.config.data, "dev")
        limit = self.model.max_positions
        tokenized, _ = tokenize_pairs(
            pairs, self.tokenizer, self.config.data.cache_dir,
            None if limit is None else limit - 1, "dev (loss: pairs within the model's limit)",
        )  # fmt: skip
        return tokenized, pairs

    def state_dict(self) -> dict:
        """A self-contained checkpoint: plain data and tensors only."""
        state = {
            "format": FORMAT,
            "config": to_plain(self.config),
            "tokenizer": self.tokenizer.state_dict(),
            **self.trainer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),  # rank 0's (what a single-process checkpoint holds)
            "world_size": self.world.world_size,
        }
        if self.world.distributed:  # every process's generators, for an exact resume
            state["rng_per_rank"] = self.world.gather(rng_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint written by :meth:`state_dict`."""
        self.trainer.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        self.shares = self.step_shares()
        self.progress = Progress(**state["progress"])
        world, saved_world_size = self.world, int(state.get("world_size", 1))
        if saved_world_size == world.world_size:
            restore_rng_state(state.get("rng_per_rank", [state["rng"]])[world.rank])
            return
        if world.is_main:
            restore_rng_state(state["rng"])
            logger.warning(
                "resuming a checkpoint of %d process(es) with %d: each step now takes %d x "
                "train.accumulate_steps batches of the epoch (the global batch changes), the rest "
                "of epoch %d is cut into steps differently, and ranks above 0 draw new dropout "
                "seeds",
                saved_world_size, world.world_size, world.world_size, self.sampler.epoch + 1,
            )  # fmt: skip
        else:  # a rank the checkpoint has no generator state for
            seed_everything(hash((self.config.train.seed, world.rank, self.progress.step)))

    @property
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions of a resumed run included."""
        return self.progress.elapsed + time.monotonic() - self.start_time

    def save(self, name: str) -> Path:
        """Write a checkpoint ``name`` into the run directory."""
        self.progress.elapsed = self.elapsed
        self.start_time = time.monotonic()
        path = self.run_dir / name
        state = self.state_dict()  # on every process: it gathers their generator states
        if self.world.is_main:
            save_checkpoint(state, path)
        if name == LAST_FILE:
            self.saved_step = self.progress.step
        for callback in self.callbacks:
            callback.on_checkpoint(path)
        return path

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line to ``metrics.jsonl`` (rank 0 only)."""
        if self.world.is_main:
            with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def step_shares(self) -> Iterator[StepShare]:
        """This process's batches for each step of the rest of the current epoch (collated in
        ``data.num_workers`` worker processes when set, into pinned memory on CUDA)."""
        return iter_step_shares(
            self.train_ds, self.sampler, self.config.train.accumulate_steps, self.world.rank,
            self.world.world_size, self.config.data.num_workers, self.device.type == "cuda",
        )  # fmt: skip

    def next_share(self) -> StepShare | None:
        """This process's batches for the next step; None when the epoch has just ended."""
        share = next(self.shares, None)
        if share is None:  # the sampler has moved on to the next epoch
            self.shares = self.step_shares()
        return share

    def run(self) -> TrainSummary:
        """Train until a limit, early stopping or the stop flag; save ``last.pt`` and return."""
        cfg = self.config.train
        self.start_time = time.monotonic()
        info = RunInfo(
            self.run_dir, str(self.device), self.precision.name, self.model.num_parameters(),
            len(self.train_ds), self.progress.step, cfg.max_steps,
            math.ceil(len(self.sampler) / (cfg.accumulate_steps * self.world.world_size)),
        )  # fmt: skip
        for callback in self.callbacks:
            callback.on_start(info)
        reason = self.loop()
        finished = reason != "stopped"  # a stopped run resumes later: validate on schedule only
        if finished and self.validates and self.progress.last_validated != self.progress.step:
            self.validate()
        if self.saved_step != self.progress.step or reason == "max_minutes":
            self.save(LAST_FILE)  # under the time guard, last.pt must hold the time that hit it
        summary = self.summary(reason)
        if self.world.is_main:
            write_summary(self.run_dir, summary)
        for callback in self.callbacks:
            callback.on_end(summary)
        return summary

    def summary(self, reason: str) -> TrainSummary:
        """The run's :class:`TrainSummary` as it ends for ``reason``."""
        progress, best = self.progress, self.run_dir / BEST_FILE
        return TrainSummary(
            step=progress.step, epoch=self.sampler.epoch, reason=reason, elapsed=progress.elapsed,
            best_bleu=progress.best_bleu, best_step=progress.best_step,
            last_checkpoint=self.run_dir / LAST_FILE,
            best_checkpoint=best if best.is_file() else None,
            nonfinite_steps=progress.nonfinite_total, num_parameters=self.model.num_parameters(),
            device=str(self.device), precision=self.precision.name,
            target_tokens=progress.target_tokens, step_seconds=progress.step_seconds,
        )  # fmt: skip

    def limit_reached(self) -> str | None:
        """Why the loop must stop now, or None; all processes agree (the first reason of
        :data:`STOP_REASONS` that any of them has), so that all stop at the same step."""
        local = self.local_limit()
        agreed = self.world.all_reduce_min(
            len(STOP_REASONS) if local is None else STOP_REASONS.index(local)
        )
        return STOP_REASONS[agreed] if agreed < len(STOP_REASONS) else None

    def local_limit(self) -> str | None:
        """Why this process would stop now, or None."""
        cfg, progress = self.config.train, self.progress
        if cfg.max_steps is not None and progress.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs is not None and self.sampler.epoch >= cfg.max_epochs:
            return "max_epochs"
        # rank 0's clock alone: last.pt holds its time, so a resume under the same guard stops
        if (
            self.world.is_main
            and cfg.max_minutes is not None
            and self.elapsed >= cfg.max_minutes * 60
        ):
            return "max_minutes"
        patience = cfg.early_stopping_patience
        if patience is not None and progress.bad_validations >= patience:
            return "early_stopping"
        return "stopped" if self.stop.is_set() else None

    def loop(self) -> str:
        """Steps until :meth:`limit_reached` says why to stop; returns that reason."""
        cfg = self.config.train
        while (reason := self.limit_reached()) is None:
            share = self.next_share()
            if share is None:
                continue
            self.one_step(share)
            step = self.progress.step
            if cfg.validate_every and self.validates and step % cfg.validate_every == 0:
                self.validate()
            if cfg.save_every and step % cfg.save_every == 0:
                self.save(f"step-{step:08d}.pt")
                if self.world.is_main:
                    prune_numbered(self.run_dir, cfg.keep_last)
                self.save(LAST_FILE)
        return reason

    def one_step(self, share: StepShare) -> None:
        """One update (this process's part: ``share``); reports it and logs every
        ``log_every`` steps. Token counts are over all processes."""
        epoch = self.sampler.epoch + (self.sampler.position > 0)
        started = time.monotonic()
        self.progress.step += 1
        outcome = self.trainer.train_step(share.batches, self.progress.step, share.stand_in)
        seconds = max(time.monotonic() - started, 1e-9)
        self.progress.target_tokens += outcome.target_tokens
        self.progress.step_seconds += seconds
        if outcome.skipped:
            self.progress.nonfinite_total += 1
            if self.trainer.nonfinite_in_a_row >= self.config.train.max_nonfinite_in_a_row:
                self.save(LAST_FILE)
                self.trainer.raise_nonfinite(self.progress.step)
        tokens = outcome.tokens
        report = StepReport(
            self.progress.step, epoch, outcome.loss, math.exp(min(outcome.nll, 100.0)),
            outcome.lr, tokens, tokens / seconds, self.elapsed,
            outcome.skipped,
        )  # fmt: skip
        for callback in self.callbacks:
            callback.on_step(report)
        log_every = self.config.train.log_every
        if log_every and self.progress.step % log_every == 0:
            self.log_metrics({"kind": "train", **asdict(report)})

    def validate(self) -> None:
        """Dev loss, perplexity and greedy BLEU/chrF (on rank 0; every process then books the
        same BLEU); best.pt, plateau and early stopping."""
        evaluated: dict = {}

        def evaluate_on_main() -> float:
            """Dev loss and translations on rank 0; returns the BLEU the others book."""
            evaluated["loss"] = self.trainer.evaluation_loss(self.dev_loader())
            evaluated["evaluation"] = score_translations(
                self.model, self.tokenizer, self.dev_pairs["src"], self.dev_pairs["tgt"],
                search_options(self.config.decode, beam_size=1), self.config.data.max_tokens,
                self.device, amp_dtype=self.precision.dtype,
            )  # fmt: skip
            return evaluated["evaluation"].scores["bleu"].score

        bleu, progress = self.world.on_main(evaluate_on_main), self.progress
        is_best = progress.best_bleu is None or bleu > progress.best_bleu
        if is_best:
            progress.best_bleu, progress.best_step, progress.bad_validations = (
                bleu,
                progress.step,
                0,
            )
        else:
            progress.bad_validations += 1
        progress.last_validated = progress.step
        self.saved_step = -1  # last.pt does not hold this validation's outcome yet
        self.trainer.schedule.validated(bleu)
        if is_best:
            self.save(BEST_FILE)
        if self.world.is_main:
            self.report_validation(*evaluated["loss"], evaluated["evaluation"], is_best)

    def report_validation(
        self, loss: float, nll: float, evaluation: Evaluation, is_best: bool
    ) -> None:
        """Log a validation, append it to the metrics and hand it to the callbacks."""
        progress = self.progress
        samples = zip(evaluation.sources, evaluation.references, evaluation.hypotheses, strict=True)
        report = ValidationReport(
            progress.step, loss, math.exp(min(nll, 100.0)), evaluation.scores,
            progress.best_bleu, is_best, list(samples)[:NUM_SAMPLES],
        )  # fmt: skip
        scores = {name: score.score for name, score in evaluation.scores.items()}
        logger.info("step %d: dev loss %.3f, BLEU %.2f", progress.step, loss, scores["bleu"])
        self.log_metrics(
            {
                "kind": "valid",
                "step": progress.step,
                "elapsed": self.elapsed,
                "loss": loss,
                **scores,
            }
        )
        for callback in self.callbacks:
            callback.on_validation(report)

    def dev_loader(self) -> Iterator[Batch]:
        """Dev batches in length order (no shuffling)."""
        sampler = make_sampler(self.dev_ds, self.config.data.max_tokens, shuffle=False)
        return iter_batches(self.dev_ds, sampler)
