"""Checkpoint files: atomic writes of plain data, safe loads that never run pickled code, the
model and tokenizer rebuilt from a checkpoint alone, and averaging (the file names of a run
directory come from :mod:`seq2seq_attn.rundir`).

A checkpoint holds only tensors and plain Python data (dict, list, tuple, str, bytes, int, float,
bool, None), so every load can use ``torch.load(..., weights_only=True)``: a file carrying pickled
objects is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import torch

from .config import Config, ConfigError, config_from_plain
from .events import Progress
from .fileio import write_atomic
from .models import Seq2Seq, build_model
from .rundir import BEST_FILE, LAST_FILE, STEP_PATTERN, numbered_checkpoints
from .tokenizer import Tokenizer

PLAIN_TYPES = (str, bytes, int, float, bool, type(None), torch.Tensor)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or unsafe; the message names the file."""


def check_plain(value: object, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first entry that is not a tensor or plain Python data."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is not a string or integer")
            check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, PLAIN_TYPES):
        raise TypeError(
            f"{where} holds a {type(value).__name__}; checkpoints hold only tensors and plain "
            "Python data so that they load with weights_only=True"
        )


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (:func:`~seq2seq_attn.fileio.write_atomic`): a
    crash or kill at any moment leaves either the previous file or the new one, never a
    partial file. The state is checked to be plain data first, so it always loads safely.
    """
    check_plain(state)
    write_atomic(path, lambda handle: _torch_save(state, handle))


def _torch_save(state: dict, handle: IO[bytes]) -> None:
    """``torch.save`` into ``handle``, raising the ``OSError`` of a failed write (a full disk)
    itself: torch's zip writer reports it as a ``RuntimeError`` raised while it cleans up."""
    try:
        torch.save(state, handle)
    except RuntimeError as error:
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def find_checkpoint(path: Path) -> Path:
    """A ``.pt`` file as given, or a run directory's ``best.pt`` (``last.pt`` when there is no
    best yet); :class:`CheckpointError` for a directory with neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (BEST_FILE, LAST_FILE):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path}: a directory without {BEST_FILE} or {LAST_FILE}; pass a checkpoint file"
    )


def recent_checkpoints(run_dir: str | Path, count: int) -> dict[int, Path]:
    """The last ``count`` checkpoints of a run by step, oldest first (what checkpoint averaging
    averages): the numbered ones up to the step of ``last.pt`` (a kill between two saves can
    leave a newer one), then ``last.pt`` itself when no numbered checkpoint holds its step."""
    run_dir = Path(run_dir)
    last = load_checkpoint(run_dir / LAST_FILE)
    fields = _Fields(run_dir / LAST_FILE, REBUILD_FIX)
    last_step = fields.count(fields.mapping(last, "progress"), "step", "progress")
    recent = {
        step: path for step, path in numbered_checkpoints(run_dir).items() if step <= last_step
    }
    recent.setdefault(last_step, run_dir / LAST_FILE)
    return dict(list(recent.items())[-count:])


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    ``mmap=True`` maps the file instead of reading it: a tensor's bytes are read only when it
    is used, so taking the weights out of a training checkpoint skips its optimizer state.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or carries pickled Python
            objects (refused without running them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(error))
        if found is None:  # bytes the safe unpickler cannot read at all
            raise _corrupt(path, error) from None
        raise CheckpointError(
            f"{path}: refused: the file contains pickled Python objects ({found.group(1)}), not "
            "only tensors and plain data. It was not written by seq2seq-attn or has been "
            "tampered with; nothing in it was executed."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        raise _corrupt(path, error) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a seq2seq-attn checkpoint (top level is not a dict)")
    return state


def _corrupt(path: Path, error: Exception) -> CheckpointError:
    """The error for a checkpoint that cannot be read back, with torch's first line of detail."""
    detail = str(error).split("\n")[0] or type(error).__name__
    return CheckpointError(
        f"{path}: truncated or corrupt checkpoint ({detail}); use another checkpoint of the run "
        f"({LAST_FILE}, {BEST_FILE} or a numbered one)"
    )


# ---- fields checked before use -------------------------------------------------------------

MAX_COUNT = 2**63 - 1  # steps, epochs, positions, seeds: what an int64 holds
MAX_WORLD_SIZE = 1 << 20  # processes of one run
PROGRESS_KEYS = tuple(field.name for field in dataclasses.fields(Progress))
PROGRESS_COUNTS = tuple(field.name for field in dataclasses.fields(Progress) if field.type == "int")
ORIGIN_KEYS = ("checkpoint", "step", "tokenizer")
PYTHON_RNG_WORDS = 625  # random.getstate(): 624 Mersenne Twister words and the position
REBUILD_FIX = f"use another checkpoint of the run ({LAST_FILE}, {BEST_FILE} or a numbered one)"
RESUME_FIX = (
    "the file is damaged or was not written by seq2seq-attn: replace it by an intact numbered "
    f"checkpoint of the run (rm {LAST_FILE}, then cp the {STEP_PATTERN} to {LAST_FILE}: never "
    f"write into {LAST_FILE}, the newest {STEP_PATTERN} is the same file) and resume, or start "
    "a new run"
)


def _describe(value: object) -> str:
    """What a checkpoint field holds, in a few words (never the repr of a large value)."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"an int of {bits} bits"
    if isinstance(value, str) and len(value) <= 40:
        return f"the str {value!r}"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, str | bytes | list | tuple | Mapping):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def _is_int(value: object, low: int = 0, high: int = MAX_COUNT) -> bool:
    """Whether ``value`` is an int (never a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: object, low: float = -math.inf) -> bool:
    """Whether ``value`` is a finite int or float (never a bool) of at least ``low``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value) and value >= low


class _Fields:
    """Checked reads of one checkpoint's fields: a field that is missing or holds the wrong
    kind of value raises :class:`CheckpointError` naming the file, the field, what it holds
    and ``fix``, before anything uses it."""

    def __init__(self, path: Path | str, fix: str) -> None:
        self.path, self.fix = path, fix

    def require(self, ok: bool, field: str, expected: str, value: object) -> None:
        """Raise unless ``ok``: ``field`` holds ``value``, not ``expected``."""
        if not ok:
            raise CheckpointError(
                f"{self.path}: field {field} holds {_describe(value)}, expected {expected}; "
                f"{self.fix}"
            )

    def get(self, state: Mapping, key: str, parent: str = "") -> object:
        """``state[key]``, where ``state`` is the field ``parent`` ("" for the top level)."""
        if key not in state:
            where = f"field {parent} has no key {key!r}" if parent else f"no field {key}"
            raise CheckpointError(f"{self.path}: {where}; {self.fix}")
        return state[key]

    def mapping(self, state: Mapping, key: str, parent: str = "") -> Mapping:
        """``state[key]``, required to be a mapping."""
        value = self.get(state, key, parent)
        self.require(isinstance(value, Mapping), _join(parent, key), "a mapping", value)
        return value

    def count(self, state: Mapping, key: str, parent: str = "", low: int = 0) -> int:
        """``state[key]``, required to be an int in ``[low, 2**63 - 1]``."""
        value = self.get(state, key, parent)
        self.require(_is_int(value, low), _join(parent, key), f"an int >= {low}", value)
        return value

    def only_keys(self, state: Mapping, known: tuple[str, ...], field: str) -> None:
        """Refuse a key of ``state`` (the field ``field``) that is not in ``known``."""
        for key in state:
            if key not in known:
                raise CheckpointError(
                    f"{self.path}: field {field} has the unknown key {_describe(key)} (known: "
                    f"{', '.join(known)}); {self.fix}"
                )


def _join(parent: str, key: str) -> str:
    """The dotted name of ``key`` inside the field ``parent``."""
    return f"{parent}.{key}" if parent else key


def check_model_fields(state: Mapping, path: Path | str, fix: str = REBUILD_FIX) -> None:
    """Check the fields that rebuild a model (``config``, ``tokenizer``, ``model``) before any
    is used: a mapping, SentencePiece bytes (``tgt_model`` bytes or None), a mapping of names
    to tensors; :class:`CheckpointError` naming ``path``, the field and ``fix`` otherwise."""
    fields = _Fields(path, fix)
    fields.mapping(state, "config")
    tokenizer = fields.mapping(state, "tokenizer")
    src_model = fields.get(tokenizer, "src_model", "tokenizer")
    fields.require(
        isinstance(src_model, bytes) and len(src_model) > 0, "tokenizer.src_model",
        "the bytes of a SentencePiece model", src_model,
    )  # fmt: skip
    tgt_model = tokenizer.get("tgt_model")
    fields.require(
        tgt_model is None or (isinstance(tgt_model, bytes) and len(tgt_model) > 0),
        "tokenizer.tgt_model", "the bytes of a SentencePiece model, or None (joint)", tgt_model,
    )  # fmt: skip
    _check_weights(fields, state, "model")


def _check_weights(fields: _Fields, state: Mapping, key: str) -> None:
    """``state[key]``: a mapping of names (str) to tensors."""
    for name, tensor in fields.mapping(state, key).items():
        field = f"{key}[{name!r}]" if isinstance(name, str) else f"{key}[{_describe(name)}]"
        fields.require(
            isinstance(name, str) and isinstance(tensor, torch.Tensor), field,
            "a tensor named by a str", tensor,
        )  # fmt: skip


def check_training_checkpoint(state: Mapping, path: Path | str) -> None:
    """Check every field a resume reads (those of :func:`check_model_fields`, ``progress``,
    ``sampler``, the optimizer's, the generators', ``origin``, and with a moving average of the
    weights ``training_weights`` and ``ema_updates``) before any is used; raises
    :class:`CheckpointError` naming ``path``, the field, what it holds and the fix."""
    check_model_fields(state, path, RESUME_FIX)
    fields = _Fields(path, RESUME_FIX)
    _check_progress(fields, state)
    sampler = fields.mapping(state, "sampler")
    for key in ("epoch", "position", "seed"):
        fields.count(sampler, key, "sampler")
    for key in ("max_tokens", "num_pairs"):
        if key in sampler:
            fields.count(sampler, key, "sampler")
    _check_optimisation(fields, state)
    _check_generators(fields, state)
    _check_origin(fields, state)
    if "training_weights" in state:  # "model" holds the moving average (train.ema_decay)
        _check_weights(fields, state, "training_weights")
        fields.count(state, "ema_updates")


def _check_progress(fields: _Fields, state: Mapping) -> None:
    """``progress``: the counters of :class:`~seq2seq_attn.events.Progress` (``step`` required,
    the others have defaults), seconds and the best BLEU."""
    progress = fields.mapping(state, "progress")
    fields.only_keys(progress, PROGRESS_KEYS, "progress")
    fields.count(progress, "step", "progress")
    for key, value in progress.items():
        if key in PROGRESS_COUNTS:
            fields.require(_is_int(value), f"progress.{key}", "an int >= 0", value)
        else:  # seconds, and the best BLEU (None before the first validation)
            optional = key == "best_bleu"
            ok = _is_number(value, low=0) or (optional and value is None)
            expected = "a number >= 0" + (" or None" if optional else "")
            fields.require(ok, f"progress.{key}", expected, value)


def _check_optimisation(fields: _Fields, state: Mapping) -> None:
    """The optimizer's, schedule's and loss scaler's states, and the non-finite step count."""
    optimizer = fields.mapping(state, "optimizer")
    fields.mapping(optimizer, "state", "optimizer")
    groups = fields.get(optimizer, "param_groups", "optimizer")
    fields.require(
        isinstance(groups, list | tuple) and len(groups) > 0, "optimizer.param_groups",
        "a non-empty list of parameter groups", groups,
    )  # fmt: skip
    for index, group in enumerate(groups):
        field = f"optimizer.param_groups[{index}]"
        fields.require(isinstance(group, Mapping), field, "a mapping", group)
        params = fields.get(group, "params", field)
        ok = isinstance(params, list | tuple) and all(_is_int(item) for item in params)
        fields.require(ok, f"{field}.params", "a list of parameter indices", params)
    schedule = fields.mapping(state, "schedule")
    scale = fields.get(schedule, "scale", "schedule")
    fields.require(_is_number(scale) and scale > 0, "schedule.scale", "a number > 0", scale)
    best = fields.get(schedule, "best", "schedule")
    fields.require(best is None or _is_number(best), "schedule.best", "a number or None", best)
    fields.count(schedule, "bad_validations", "schedule")
    fields.mapping(state, "scaler")
    fields.count(state, "nonfinite_in_a_row")


def _check_generators(fields: _Fields, state: Mapping) -> None:
    """``rng`` (rank 0's generators), ``world_size`` and ``rng_per_rank`` (one per process)."""
    _check_rng(fields, fields.mapping(state, "rng"), "rng")
    world_size = fields.count(state, "world_size", low=1) if "world_size" in state else 1
    fields.require(world_size <= MAX_WORLD_SIZE, "world_size", "a number of processes", world_size)
    if "rng_per_rank" in state:
        per_rank = state["rng_per_rank"]
        fields.require(
            isinstance(per_rank, list | tuple) and len(per_rank) == world_size, "rng_per_rank",
            f"a list of world_size = {world_size} generator states", per_rank,
        )  # fmt: skip
        for rank, rng in enumerate(per_rank):
            field = f"rng_per_rank[{rank}]"
            fields.require(isinstance(rng, Mapping), field, "a mapping", rng)
            _check_rng(fields, rng, field)


def _check_rng(fields: _Fields, rng: Mapping, field: str) -> None:
    """What :func:`~seq2seq_attn.session.rng_state` wrote: Python's and torch's generators."""
    python = fields.get(rng, "python", field)
    ok = isinstance(python, list | tuple) and len(python) == 3 and _is_int(python[0])
    words = python[1] if ok else None
    ok = ok and isinstance(words, list | tuple) and len(words) == PYTHON_RNG_WORDS
    ok = ok and all(_is_int(word, high=2**32 - 1) for word in words)
    ok = ok and (python[2] is None or isinstance(python[2], float))
    expected = f"[version, {PYTHON_RNG_WORDS} 32-bit words, gauss] (random.getstate)"
    fields.require(ok, f"{field}.python", expected, python)
    states = [fields.get(rng, "torch", field)]
    cuda = rng.get("cuda", [])
    fields.require(isinstance(cuda, list | tuple), f"{field}.cuda", "a list of tensors", cuda)
    for index, value in enumerate([*states, *cuda]):
        name = f"{field}.torch" if index == 0 else f"{field}.cuda[{index - 1}]"
        ok = isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
        fields.require(ok, name, "a generator state (a 1-D uint8 tensor)", value)


def _check_origin(fields: _Fields, state: Mapping) -> None:
    """``origin``: absent or None (a run from scratch), else the model the run started from."""
    origin = state.get("origin")
    if origin is None:
        return
    fields.require(isinstance(origin, Mapping), "origin", "a mapping or None", origin)
    fields.only_keys(origin, ORIGIN_KEYS, "origin")
    checkpoint = fields.get(origin, "checkpoint", "origin")
    fields.require(isinstance(checkpoint, str), "origin.checkpoint", "a path", checkpoint)
    step = fields.get(origin, "step", "origin")
    fields.require(step is None or _is_int(step), "origin.step", "an int >= 0 or None", step)
    fields.mapping(origin, "tokenizer", "origin")


def model_from_checkpoint(
    state: dict, path: Path | str = "checkpoint"
) -> tuple[Seq2Seq, Tokenizer, Config]:
    """Rebuild the model (eval mode, on the CPU), its tokenizer and its config from a training
    checkpoint alone (what :func:`load_checkpoint` returned for ``path``)."""
    missing = [key for key in ("config", "tokenizer", "model") if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a seq2seq-attn training checkpoint (no {', '.join(missing)}); use "
            f"{LAST_FILE}, {BEST_FILE} or a {STEP_PATTERN} file of a run directory"
        )
    check_model_fields(state, path)
    config = _config_of(state, path)
    try:
        tokenizer = Tokenizer.from_state_dict(state["tokenizer"])
    except (ValueError, RuntimeError) as error:  # bytes that are no SentencePiece model
        detail = str(error).split("\n")[0]
        raise CheckpointError(f"{path}: field tokenizer: {detail}; {REBUILD_FIX}") from None
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # names or shapes that its config's model does not have
        detail = " ".join(str(error).split())[:500]
        raise CheckpointError(
            f"{path}: field model does not fit the model its config describes ({detail}); "
            f"{REBUILD_FIX}"
        ) from None
    return model.eval(), tokenizer, config


def _config_of(state: Mapping, path: Path | str) -> Config:
    """The checkpoint's config, validated like a YAML one; errors name the file."""
    source = f"{path} (its config)"
    try:
        return config_from_plain(state["config"], source)
    except ConfigError as error:
        if str(error).startswith(source):
            raise
        raise ConfigError(f"{source}: {error}") from None


def average_checkpoints(paths: list[Path]) -> dict:
    """A translation checkpoint whose weights are the mean of ``paths``' weights (checkpoint
    averaging: the last few checkpoints of a run usually translate better together).

    All checkpoints must come from one run: the same model config and tokenizer, or a
    :class:`CheckpointError` names the odd one. Floating-point tensors are averaged (in fp64,
    stored back in their own dtype); integer buffers must agree. The result holds ``config``,
    ``tokenizer`` and ``model`` of the newest (last) path, plus ``averaged_from``; it translates
    with :func:`model_from_checkpoint` but cannot resume training (no optimizer state).
    """
    if not paths:
        raise CheckpointError("average_checkpoints: no checkpoint given")
    states = [load_checkpoint(path) for path in paths]
    newest = states[-1]
    for path, state in zip(paths, states, strict=True):
        missing = [key for key in ("config", "tokenizer", "model") if key not in state]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)})")
        check_model_fields(state, path)
        if state["config"].get("model") != newest["config"].get("model") or (
            state["tokenizer"] != newest["tokenizer"]
        ):
            raise CheckpointError(
                f"{path}: another model or tokenizer than {paths[-1]}; average checkpoints of "
                "one run only"
            )
        if _shapes(state["model"]) != _shapes(newest["model"]):
            raise CheckpointError(f"{path}: its weights differ in names or shapes from {paths[-1]}")
    averaged = {}
    for name, tensor in newest["model"].items():
        values = [state["model"][name] for state in states]
        if tensor.is_floating_point():
            mean = torch.stack([value.double() for value in values]).mean(dim=0)
            averaged[name] = mean.to(tensor.dtype)
        elif all(torch.equal(value, tensor) for value in values):
            averaged[name] = tensor
        else:
            raise CheckpointError(f"{name}: integer buffer differs between the checkpoints")
    return {
        "format": newest.get("format"),
        "config": newest["config"],
        "tokenizer": newest["tokenizer"],
        "model": averaged,
        "averaged_from": [str(path) for path in paths],
    }


def _shapes(weights: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    """Name -> shape of every tensor of a state dict."""
    return {name: tensor.shape for name, tensor in weights.items()}
