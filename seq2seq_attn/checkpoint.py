"""Checkpoint files: atomic writes of plain data, safe loads that never run pickled code, the
model and tokenizer rebuilt from a checkpoint alone, and averaging (the file names of a run
directory come from :mod:`seq2seq_attn.rundir`).

A checkpoint holds only tensors and plain Python data (dict, list, tuple, str, bytes, int, float,
bool, None), so every load can use ``torch.load(..., weights_only=True)``: a file carrying pickled
objects is refused, never executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .config import Config, config_from_plain
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
    write_atomic(path, lambda handle: torch.save(state, handle))


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
    last_step = int(load_checkpoint(run_dir / LAST_FILE)["progress"]["step"])
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
    config = config_from_plain(state["config"], f"{path} (its config)")
    tokenizer = Tokenizer.from_state_dict(state["tokenizer"])
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    model.load_state_dict(state["model"])
    return model.eval(), tokenizer, config


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
        if state["config"]["model"] != newest["config"]["model"] or (
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
