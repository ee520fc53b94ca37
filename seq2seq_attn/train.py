"""The training loop: steps with accumulation and clipping, validation, early stopping,
checkpoints in the run directory, and exact resume.

Entry point: :func:`train`. It opens a :class:`~seq2seq_attn.session.Session` (everything decided
before the first step, agreed by every process) and runs the loop on it. Progress reaches the
caller through :class:`~seq2seq_attn.events.TrainCallback` hooks (the CLI draws them); a
``threading.Event`` passed as ``stop`` asks the loop to finish the current step, save ``last.pt``
and return (what a SIGINT/SIGTERM handler sets).

Launched by ``torchrun``, every process runs this same loop on its share of each step's batches
(:func:`~seq2seq_attn.loaders.iter_step_shares`) and the model is wrapped in
``DistributedDataParallel``. Rank 0 alone validates and writes files; every decision that ends or
shapes the run (limits, early stopping, a signal, the dev BLEU) is agreed by all processes, so
they all stop at the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from .batching import Batch
from .checkpoint import save_checkpoint
from .config import Config, to_plain
from .data_cache import fingerprint
from .distributed import environment_rank
from .evaluate import Evaluation, first_sentence_attention, score_translations
from .events import Progress, RunInfo, StepReport, TrainCallback, TrainSummary, ValidationReport
from .loaders import StepShare, SubwordSampling, iter_batches, iter_step_shares, make_sampler
from .optim import Trainer
from .rundir import (
    BEST_FILE,
    LAST_FILE,
    append_metrics,
    check_run_dir,
    locked_run_dir,
    number_last,
    settle_resume,
    sweep_temporaries,
    write_summary,
)
from .session import Session, open_session, restore_rng, rng_state
from .stop_signals import uninterrupted
from .tensorboard_log import TensorBoardLog

logger = logging.getLogger(__name__)

FORMAT = "seq2seq-attn/1"
NUM_SAMPLES = 3
STOP_REASONS = ("max_steps", "max_epochs", "max_minutes", "early_stopping", "stopped")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a read-only folder); the message says
    which file, why, and what is still safe on disk."""

    def __init__(self, path: Path, error: OSError, safe_step: int | None) -> None:
        safe = (
            f"no {LAST_FILE} was written yet" if safe_step is None
            else f"{LAST_FILE} of step {safe_step} is intact"
        )  # fmt: skip
        super().__init__(
            f"{path}: cannot write the checkpoint ({error.strerror or error}); nothing was "
            f"corrupted: {safe}. Free some space (or fix the folder) and resume the run"
        )


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool | str = False,
    init_from: str | Path | None = None,
    callbacks: Sequence[TrainCallback] = (),
    stop: threading.Event | None = None,
) -> TrainSummary:
    """Train a model as ``config`` says, writing everything into ``run_dir``.

    A new run refuses a non-empty ``run_dir``; ``resume=True`` continues from its ``last.pt``
    exactly (same data, tokenizer and model sections required; train limits may change);
    ``resume="auto"`` resumes when there is a ``last.pt`` and else starts the run (setting aside
    what a failed start left: :func:`~seq2seq_attn.rundir.settle_resume`). Rank 0 holds the run
    directory's lock throughout and sweeps the temporaries a killed run left.
    ``init_from`` (a checkpoint or a run directory) starts a new run from that trained model's
    weights and tokenizer, with a fresh optimizer, schedule and step counter (fine-tuning; see
    :mod:`seq2seq_attn.session`); on ``resume`` the run goes on from its ``last.pt``.
    Under ``torchrun`` this process joins the others (see the module's docstring); only rank 0
    calls ``callbacks``, and with ``train.tensorboard`` writes TensorBoard events there
    (:mod:`seq2seq_attn.tensorboard_log`). Raises :class:`~seq2seq_attn.rundir.RunDirError`,
    ``ConfigError`` (also for TensorBoard asked for but not installed), ``DataError``,
    ``NonFiniteLossError`` or ``DistributedError``.
    """
    initial, run_dir = None if init_from is None else Path(init_from), Path(run_dir)
    is_main = environment_rank() == 0
    if is_main:
        check_run_dir(run_dir, resume)  # a folder that will be refused gets no lock file
    with locked_run_dir(run_dir) if is_main else contextlib.nullcontext():
        if is_main:
            sweep_temporaries(run_dir)
        resumes = settle_resume(run_dir, resume, is_main)
        # built before the session: a missing tensorboard package fails before any work is done
        own = [TensorBoardLog(run_dir, config)] if config.train.tensorboard else []
        with open_session(config, run_dir, resumes, initial) as session:
            for log in own:  # the config the run uses (a fine-tuned run's tokenizer: the model's)
                log.use_config(session.config)
            main_callbacks = [*callbacks, *own] if session.world.is_main else []
            run = Run(session, main_callbacks, stop)
            try:
                return run.run()
            finally:
                run.close()


class Run:
    """One training run's state and loop, on a ready session (built by :func:`train`)."""

    def __init__(
        self, session: Session, callbacks: list[TrainCallback], stop: threading.Event | None
    ) -> None:
        config = self.config = session.config
        self.run_dir, self.world, self.tokenizer = session.run_dir, session.world, session.tokenizer
        self.origin = session.origin
        self.device, self.precision, self.model = session.device, session.precision, session.model
        self.callbacks, self.stop = callbacks, stop or threading.Event()
        self.train_ds, self.validates = session.train_data, bool(config.data.dev)
        dev = session.dev  # validation runs on rank 0: None elsewhere
        self.dev_ds, self.dev_pairs = (dev.tokenized, dev.pairs) if dev else (None, None)
        self.sampler = make_sampler(self.train_ds, config.data.max_tokens, seed=config.train.seed)
        self.shares = self.step_shares()
        self.replica = self.world.replicate(self.model)
        collectives = self.world if self.world.distributed else None
        # after replicate(): its broadcast of rank 0's weights is what a moving average starts at
        self.trainer = Trainer(
            self.model, config.train, self.precision, self.device, self.replica, collectives
        )
        self.progress = Progress()
        self.start_time = time.monotonic()
        self.saved_step = -1  # the step last.pt holds (-1: a validation since then is not in it)
        self.safe_step: int | None = None  # the step of the last.pt on disk
        if session.checkpoint is not None:
            self.load_state_dict(session.checkpoint)
            self.safe_step = self.progress.step
        session.write_run_files()

    def state_dict(self) -> dict:
        """A self-contained checkpoint: plain data and tensors only."""
        state = {
            "format": FORMAT,
            "config": to_plain(self.config),
            "tokenizer": self.tokenizer.state_dict(),
            **self.trainer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "train_data": fingerprint(self.train_ds),  # a resume checks it is the same
            "progress": asdict(self.progress),
            "rng": rng_state(),  # rank 0's (what a single-process checkpoint holds)
            "world_size": self.world.world_size,
        }
        if self.origin is not None:  # a resume finds where the run started from here
            state["origin"] = self.origin.to_plain()
        if self.world.distributed:  # every process's generators, for an exact resume
            state["rng_per_rank"] = self.world.gather(rng_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint written by :meth:`state_dict`."""
        self.trainer.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        self.shares = self.step_shares()
        self.progress = Progress(**state["progress"])
        restore_rng(state, self.world, self.config.train.seed)

    @property
    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions of a resumed run included."""
        return self.progress.elapsed + time.monotonic() - self.start_time

    def save(self, path: Path) -> None:
        """Write a checkpoint to ``path`` in the run directory (the file on rank 0; every process
        takes part: the checkpoint gathers their generator states). A second Ctrl-C waits for
        the write; a failed write (a full disk) raises :class:`CheckpointWriteError`."""
        self.progress.elapsed = self.elapsed
        self.start_time = time.monotonic()
        with uninterrupted():
            state = self.state_dict()
            with self.world.together():  # a failed write on rank 0 stops every process
                if self.world.is_main:
                    try:
                        save_checkpoint(state, path)
                    except OSError as error:
                        raise CheckpointWriteError(path, error, self.safe_step) from None
        if path.name == LAST_FILE:
            self.saved_step = self.safe_step = self.progress.step
        for callback in self.callbacks:
            callback.on_checkpoint(path)

    def save_numbered(self) -> None:
        """Save ``last.pt``, give it the step's number too and keep ``train.keep_last``
        numbered checkpoints (:func:`~seq2seq_attn.rundir.number_last`)."""
        self.save(self.run_dir / LAST_FILE)
        if self.world.is_main:
            keep = self.config.train.keep_last
            with uninterrupted():
                numbered = number_last(self.run_dir, self.progress.step, keep)
            for callback in self.callbacks:
                callback.on_checkpoint(numbered)

    def step_shares(self) -> Iterator[StepShare]:
        """This process's batches for each step of the rest of the current epoch (collated in
        ``data.num_workers`` worker processes when set, into pinned memory on CUDA; with
        sampled segmentations when ``tokenizer.sampling`` is enabled)."""
        data, sampling = self.config.data, self.config.tokenizer.sampling
        subwords = SubwordSampling(
            self.tokenizer, sampling.alpha, sampling.nbest_size, data.max_length, data.max_tokens
        ) if sampling.enabled else None  # fmt: skip
        return iter_step_shares(
            self.train_ds, self.sampler, self.config.train.accumulate_steps, self.world.rank,
            self.world.world_size, data.num_workers, self.device.type == "cuda", subwords,
        )  # fmt: skip

    def close(self) -> None:
        """End the DataLoader workers now, however the run ended: left to the garbage collector
        (an error's traceback may keep them referenced), workers that ignore stop signals
        would keep the process from exiting."""
        self.shares.close()

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
            None if self.origin is None else self.origin.describe(),
        )  # fmt: skip
        for callback in self.callbacks:
            callback.on_start(info)
        reason = self.loop()
        finished = reason != "stopped"  # a stopped run resumes later: validate on schedule only
        if finished and self.validates and self.progress.last_validated != self.progress.step:
            self.validate()
        if self.saved_step != self.progress.step or reason == "max_minutes":
            # under the time guard, last.pt must hold the time that hit it
            self.save(self.run_dir / LAST_FILE)
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
            init_from=None if self.origin is None else self.origin.describe(),
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
                self.save_numbered()
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
                self.save(self.run_dir / LAST_FILE)
                self.trainer.raise_nonfinite(self.progress.step)
        tokens = outcome.tokens
        report = StepReport(
            self.progress.step, epoch, outcome.loss, math.exp(min(outcome.nll, 100.0)),
            outcome.lr, tokens, tokens / seconds, self.elapsed,
            outcome.skipped, outcome.grad_norm,
        )  # fmt: skip
        for callback in self.callbacks:
            callback.on_step(report)
        log_every = self.config.train.log_every
        if log_every and self.progress.step % log_every == 0 and self.world.is_main:
            append_metrics(self.run_dir, {"kind": "train", **asdict(report)})

    def validate(self) -> None:
        """Dev loss, perplexity and greedy BLEU/chrF (on rank 0; every process then books the
        same BLEU); best.pt, plateau and early stopping."""
        outcome = None
        with self.world.together():  # a failure on rank 0 stops every process
            if self.world.is_main:
                outcome = self.evaluate_dev()
        bleu = self.world.broadcast(None if outcome is None else outcome[2].scores["bleu"].score)
        progress = self.progress
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
            self.save(self.run_dir / BEST_FILE)
        if outcome is not None:
            self.report_validation(*outcome, is_best)

    def evaluate_dev(self) -> tuple[float, float, Evaluation, dict | None]:
        """Rank 0's part of a validation: the dev loss and NLL, the dev split translated
        greedily and scored, and (when a callback wants it) the attention of one dev sentence."""
        loss, nll = self.trainer.evaluation_loss(self.dev_loader())
        model = self.trainer.inference_model  # the moving average of the weights, if any
        evaluation = score_translations(
            model, self.tokenizer, self.dev_pairs["src"], self.dev_pairs["tgt"],
            replace(self.config.decode, beam_size=1, n_best=1), self.config.data.max_tokens,
            self.device, amp_dtype=self.precision.dtype,
        )  # fmt: skip
        attention = None
        if any(callback.wants_attention for callback in self.callbacks):
            attention = first_sentence_attention(
                model, self.tokenizer, self.dev_pairs["src"], self.config.decode,
                self.config.data.max_tokens, self.device, self.precision.dtype,
            )  # fmt: skip
        return loss, nll, evaluation, attention

    def report_validation(
        self, loss: float, nll: float, evaluation: Evaluation, attention: dict | None,
        is_best: bool,
    ) -> None:  # fmt: skip
        """Log a validation, append it to the metrics and hand it to the callbacks."""
        progress = self.progress
        samples = zip(evaluation.sources, evaluation.references, evaluation.hypotheses, strict=True)
        report = ValidationReport(
            progress.step, loss, math.exp(min(nll, 100.0)), evaluation.scores,
            progress.best_bleu, is_best, list(samples)[:NUM_SAMPLES], attention,
        )  # fmt: skip
        scores = {name: score.score for name, score in evaluation.scores.items()}
        logger.info("step %d: dev loss %.3f, BLEU %.2f", progress.step, loss, scores["bleu"])
        record = {"kind": "valid", "step": progress.step, "elapsed": self.elapsed, "loss": loss}
        append_metrics(self.run_dir, record | scores)
        for callback in self.callbacks:
            callback.on_validation(report)

    def dev_loader(self) -> Iterator[Batch]:
        """Dev batches in length order (no shuffling)."""
        sampler = make_sampler(self.dev_ds, self.config.data.max_tokens, shuffle=False)
        return iter_batches(self.dev_ds, sampler)
