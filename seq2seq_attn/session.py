"""Everything a training run decides before its first step, in one place.

:func:`open_session` joins the processes (one without ``torchrun``) and resolves the device and
precision. Rank 0 then creates or checks the run directory (loading and checking ``last.pt`` on
resume) and trains or takes the tokenizer; it sends that decision to the others once, and every
process answers once: the same config as rank 0's, the same checkpoint read from the shared run
directory. When any process cannot go on, all fail together. Then the generators are seeded,
the training data loaded (rank 0 builds the cache first), the model built, the dev split loaded
on rank 0 (where validation runs) and the run's config and tokenizer written. What comes back
is a :class:`Session`, ready for the loop in :mod:`seq2seq_attn.train`.

A new run may start from a trained model (``init_from``, fine-tuning): see
:mod:`seq2seq_attn.initial`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import check_training_checkpoint, load_checkpoint
from .config import Config, config_from_plain, first_difference, to_plain, to_yaml
from .data import load_pairs, load_split, texts, tokenize_pairs
from .data_cache import fingerprint
from .device import Precision, resolve_device, resolve_precision
from .distributed import CACHE_TURNS, DistributedError, World
from .initial import Origin, adopted, log_origin, open_initial
from .models import Seq2Seq, build_model
from .rundir import (
    LAST_FILE,
    RunDirError,
    forget_summary,
    prepare_run_dir,
    trim_metrics,
    write_config,
)
from .tokenizer import Tokenizer, train_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

MACHINE_LOCAL_DATA_KEYS = ("cache_dir", "num_workers", "num_proc")  # change no result


@dataclass(frozen=True)
class DevSet:
    """The dev split: tokenized (for the loss, pairs within the model's limit) and as text
    (for BLEU, every pair)."""

    tokenized: Dataset
    pairs: Dataset


@dataclass
class Session:
    """A run ready for its first step (or, resumed, its next one); the same on every process
    but for ``dev``."""

    config: Config
    run_dir: Path
    world: World
    device: torch.device
    precision: Precision
    tokenizer: Tokenizer
    checkpoint: dict | None  # what the run resumes from (last.pt); None for a new run
    model: Seq2Seq  # on the device: from the seed, or (rank 0) the weights of ``origin``
    train_data: Dataset  # the tokenized training split
    dev: DevSet | None  # on rank 0 (validation runs there) when data.dev is set; else None
    origin: Origin | None = None  # the trained model the run started from (fine-tuning)

    def write_run_files(self) -> None:
        """Rank 0's files of a run that has started: the metrics logged after the resumed
        checkpoint dropped (those steps are redone), the old summary removed, the tokenizer and
        the resolved config written. Call it once the checkpoint's state has loaded, so that a
        resume that fails leaves the run directory as it was."""
        if not self.world.is_main:
            return
        if self.checkpoint is not None:
            trim_metrics(self.run_dir, self.checkpoint["progress"]["step"])
            forget_summary(self.run_dir)
        self.tokenizer.save(self.run_dir)
        write_config(self.run_dir, to_yaml(self.config))


@dataclass(frozen=True)
class Decision:
    """What rank 0 decided, sent once to the other processes."""

    config: dict  # its config as plain data, the machine-local data keys left out
    tokenizer: dict  # the tokenizer's state: trained now, or the checkpoint's
    origin: dict | None = None  # Origin.to_plain() of the model the run started from


@dataclass(frozen=True)
class Answer:
    """What each process answers to rank 0's :class:`Decision`, gathered once on every one."""

    host: str
    error: str | None  # why this process cannot go on (None: it can)
    step: int | None  # the step of the checkpoint it resumes from


@dataclass
class Start:
    """What a run starts from, as :func:`agree` settles it."""

    tokenizer: Tokenizer
    checkpoint: dict | None  # last.pt to resume from; None for a new run
    origin: Origin | None  # the trained model the run started from, or None
    weights: dict | None  # that model's weights, on rank 0 of a new run only


@contextmanager
def open_session(
    config: Config, run_dir: Path, resume: bool, init_from: Path | None = None
) -> Iterator[Session]:
    """The :class:`Session` of training ``config`` into ``run_dir`` (``resume``: from its
    ``last.pt``; ``init_from``: a new run starting from that checkpoint or run directory's
    weights and tokenizer), agreed by every process; the processes leave their group when the
    block ends (after an error at once, else once all have finished).

    Raises :class:`~seq2seq_attn.rundir.RunDirError`, ``ConfigError``, ``DataError``,
    ``CheckpointError`` or :class:`~seq2seq_attn.distributed.DistributedError`.
    """
    world, device = World.from_environment(
        config.train.ddp_backend, resolve_device(config.train.device, "train.device"),
        config.train.ddp_timeout_minutes,
    )  # fmt: skip
    try:
        yield _open(config, run_dir, resume, init_from, world, device)
    except BaseException:
        world.close(finished=False)
        raise
    world.close(finished=True)


def _open(
    config: Config,
    run_dir: Path,
    resume: bool,
    init_from: Path | None,
    world: World,
    device: torch.device,
) -> Session:
    """:func:`open_session` once the processes have joined."""
    precision = resolve_precision(config.train.precision, device, "train.precision")
    start = agree(world, config, run_dir, resume, init_from)
    config, tokenizer = adopted(config, start.origin), start.tokenizer
    seed_everything(config.train.seed + world.rank)  # other dropout masks on every process
    train_data = load_train_data(world, config, tokenizer)
    if start.checkpoint is not None:
        check_same_data(start.checkpoint, train_data, run_dir / LAST_FILE)
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    if start.weights is not None:  # rank 0; DDP copies rank 0's weights to the others
        model.load_state_dict(start.weights)
    model = model.to(device)
    dev = load_dev_set(world, config, tokenizer, model.max_positions)
    return Session(
        config=config, run_dir=run_dir, world=world, device=device, precision=precision,
        tokenizer=tokenizer, checkpoint=start.checkpoint, model=model, train_data=train_data,
        dev=dev, origin=start.origin,
    )  # fmt: skip


# ---- agreeing between processes, once --------------------------------------------------------


def agree(
    world: World, config: Config, run_dir: Path, resume: bool, init_from: Path | None = None
) -> Start:
    """What the run starts from, the same on every process: rank 0 decides
    (:func:`open_run_dir`, :func:`open_initial`, :func:`build_tokenizer`), the others check its
    :class:`Decision` (:func:`check_decision`); all fail together when one cannot go on."""
    start = None
    with world.together():  # a failure on rank 0 stops every process
        if world.is_main:
            start = decide_start(config, run_dir, resume, init_from)
    mine = None
    if world.is_main:
        origin = None if start.origin is None else start.origin.to_plain()
        mine = Decision(comparable_config(config), start.tokenizer.state_dict(), origin)
    decision, error = world.broadcast(mine), None
    if not world.is_main:
        tokenizer = Tokenizer.from_state_dict(decision.tokenizer)
        checkpoint, error = check_decision(world, config, decision, run_dir, resume)
        origin = None if decision.origin is None else Origin(**decision.origin)
        start = Start(tokenizer, checkpoint, origin, None)
    checkpoint = start.checkpoint
    step = None if checkpoint is None else int(checkpoint["progress"]["step"])
    answers = world.gather(Answer(world.host, error, step))
    if world.distributed:
        logger.info("training with %s", world.describe([answer.host for answer in answers]))
    world.raise_failures([answer.error for answer in answers], error)
    steps = [answer.step for answer in answers]
    if len(set(steps)) > 1:
        raise DistributedError(
            f"{run_dir / LAST_FILE}: the processes read checkpoints of different steps ({steps}, "
            "by rank); every machine must see the same run directory (a shared filesystem, not "
            "copies)"
        )
    return start


def decide_start(config: Config, run_dir: Path, resume: bool, init_from: Path | None) -> Start:
    """Rank 0's part of :func:`agree`: the run directory opened (and ``last.pt`` loaded on
    ``resume``), the model to start from loaded (a new run with ``init_from``), the tokenizer."""
    initial = None
    if init_from is not None and not resume:
        initial = open_initial(config, init_from)  # before the run directory is created
    checkpoint = open_run_dir(config, run_dir, resume)
    if initial is not None:
        origin, weights, tokenizer_state = initial
        log_origin(config, origin)  # now that the run directory (and its train.log) exists
        return Start(Tokenizer.from_state_dict(tokenizer_state), checkpoint, origin, weights)
    origin = Origin.of_checkpoint(checkpoint)
    if init_from is not None:
        resumed_from = "nothing (it started from scratch)" if origin is None else origin.checkpoint
        if origin is None or not origin.named_by(init_from):
            logger.warning(
                "resuming %s from its %s: --init-from %s is ignored; the run started from %s",
                run_dir, LAST_FILE, init_from, resumed_from,
            )  # fmt: skip
    return Start(build_tokenizer(config, checkpoint), checkpoint, origin, None)


def open_run_dir(config: Config, run_dir: Path, resume: bool) -> dict | None:
    """Rank 0's part: create ``run_dir`` for a new run (refusing a non-empty one), or load its
    ``last.pt`` and check that ``config`` may resume it."""
    prepare_run_dir(run_dir, resume)
    if not resume:
        return None
    checkpoint = load_checkpoint(run_dir / LAST_FILE)
    check_training_checkpoint(checkpoint, run_dir / LAST_FILE)
    resumed = adopted(config, Origin.of_checkpoint(checkpoint))
    check_resumable(config_from_plain(checkpoint["config"]), resumed, run_dir / LAST_FILE)
    return checkpoint


def build_tokenizer(config: Config, checkpoint: dict | None) -> Tokenizer:
    """The checkpoint's tokenizer on resume, else SentencePiece trained on the training split."""
    if checkpoint is not None:
        return Tokenizer.from_state_dict(checkpoint["tokenizer"])
    pairs = load_pairs(config.data, "train")
    return train_tokenizer(texts(pairs, "src"), texts(pairs, "tgt"), config.tokenizer)


def comparable_config(config: Config) -> dict:
    """``config`` as plain data without what may differ between machines (where a machine keeps
    its data cache, how many processes load data)."""
    plain = to_plain(config)
    for key in MACHINE_LOCAL_DATA_KEYS:
        plain["data"].pop(key)
    return plain


def check_decision(
    world: World, config: Config, decision: Decision, run_dir: Path, resume: bool
) -> tuple[dict | None, str | None]:
    """A process other than rank 0 checks rank 0's ``decision``: the same config (other steps
    per epoch would make the processes wait for each other forever), then, on ``resume``, the
    same ``last.pt`` read from the shared run directory. Returns that checkpoint and why this
    process cannot go on (None: it can)."""
    found = first_difference(
        decision.config, comparable_config(config), "config", ("on rank 0", "here")
    )
    if found is not None:
        return None, (
            f"rank {world.rank} on {world.host} has another config than rank 0 ({found}); "
            "start every machine with the same config file and --set options"
        )
    return read_shared_checkpoint(world, run_dir) if resume else (None, None)


def read_shared_checkpoint(world: World, run_dir: Path) -> tuple[dict | None, str | None]:
    """The ``last.pt`` rank 0 resumes from, read by another process from the shared run
    directory, or why it cannot be read there."""
    path = run_dir / LAST_FILE
    if not path.is_file():
        return None, (
            f"{path}: rank {world.rank} on {world.host} cannot see the checkpoint rank 0 "
            "resumes from; with several machines the run directory must be on a filesystem "
            "every machine mounts at the same path (NFS, Lustre, ...)"
        )
    try:
        return load_checkpoint(path), None
    except Exception as exc:  # every process must hear of it, or the others wait
        return None, f"rank {world.rank} on {world.host}: {exc}"


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


def check_same_data(checkpoint: dict, train_data: Dataset, path: Path) -> None:
    """Refuse to resume on training data other than the run's: another number of pairs, or
    (checkpoints that record it) other content, tokenization or filtering."""
    sampler, recorded = checkpoint.get("sampler", {}), checkpoint.get("train_data")
    saved_pairs = sampler.get("num_pairs", len(train_data))
    if saved_pairs != len(train_data) or recorded not in (None, fingerprint(train_data)):
        found = (
            f"{saved_pairs} training pairs then, {len(train_data)} now"
            if saved_pairs != len(train_data)
            else "the same number of pairs, other content, or read by another version"
        )  # fmt: skip
        raise RunDirError(
            f"{path}: the training data changed since this checkpoint ({found}); resume with "
            "the data the run was trained on, or start a new run (--init-from "
            f"{path} starts one from its weights)"
        )


# ---- data and generators ---------------------------------------------------------------------


def load_train_data(world: World, config: Config, tokenizer: Tokenizer) -> Dataset:
    """The tokenized training split, loaded in turns (:attr:`World.cache_turn`): rank 0
    tokenizes and caches it first, the other processes then read its cache."""
    train_data = None
    for turn in range(CACHE_TURNS):
        with world.together():
            if turn == world.cache_turn:
                train_data, _ = load_split(config.data, "train", tokenizer)
    return train_data


def load_dev_set(
    world: World, config: Config, tokenizer: Tokenizer, max_positions: int | None
) -> DevSet | None:
    """The dev split on rank 0 (None elsewhere, or when ``data.dev`` is empty); its loss
    covers the pairs within the model's ``max_positions``."""
    dev = None
    with world.together():
        if world.is_main and config.data.dev:
            pairs = load_pairs(config.data, "dev")
            limit = None if max_positions is None else max_positions - 1
            tokenized, _ = tokenize_pairs(
                pairs, tokenizer, config.data.cache_dir, limit,
                "dev (loss: pairs within the model's limit)",
            )  # fmt: skip
            dev = DevSet(tokenized, pairs)
    return dev


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


def restore_rng(checkpoint: dict, world: World, seed: int) -> None:
    """This process's generators as ``checkpoint`` holds them (exact when the run had as many
    processes). With another number of processes rank 0 takes the saved ones and says what
    changes; the other ranks draw new seeds from ``seed``, their rank and the step."""
    saved_world_size = int(checkpoint.get("world_size", 1))
    if saved_world_size == world.world_size:
        restore_rng_state(checkpoint.get("rng_per_rank", [checkpoint["rng"]])[world.rank])
        return
    if world.is_main:
        restore_rng_state(checkpoint["rng"])
        logger.warning(
            "resuming a checkpoint of %d process(es) with %d: each step now takes %d x "
            "train.accumulate_steps batches of the epoch (the global batch changes), the rest "
            "of epoch %d is cut into steps differently, and ranks above 0 draw new dropout "
            "seeds",
            saved_world_size, world.world_size, world.world_size,
            checkpoint["sampler"]["epoch"] + 1,
        )  # fmt: skip
    else:  # a rank the checkpoint has no generator state for
        seed_everything(hash((seed, world.rank, checkpoint["progress"]["step"])))
