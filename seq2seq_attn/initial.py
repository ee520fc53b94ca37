"""Starting a new run from a trained model (``--init-from``, fine-tuning).

The run takes the model's weights and its tokenizer (never retrained), with a fresh optimizer,
schedule and step counter. The config's model section must describe that model: only the dropout
keys may differ (a mismatch names the key and both values). Its tokenizer section is replaced by
the model's, so that the run's ``config.yaml`` says which tokenizer it uses; the keys that act
during training (subword sampling) stay the config's. The :class:`Origin` travels in every
checkpoint of the run, so a resume knows it without being told. :mod:`seq2seq_attn.session`
calls these on rank 0.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import CheckpointError, check_model_fields, find_checkpoint, load_checkpoint
from .config import Config, ConfigError, ModelConfig, config_from_plain, first_difference, to_plain
from .rundir import BEST_FILE, LAST_FILE

logger = logging.getLogger(__name__)

# model keys a run started from a trained model may set anew (fine-tuning often raises dropout)
DROPOUT_KEYS = {"": ("dropout",), "transformer": ("attention_dropout", "activation_dropout")}
TOKENIZER_RUN_KEYS = ("sampling",)  # tokenizer keys that act during training, not in the model


@dataclass(frozen=True)
class Origin:
    """The trained model a run started from (``--init-from``): the checkpoint's path and step,
    and the tokenizer section of its config (which the run adopts)."""

    checkpoint: str  # the resolved path of the checkpoint file
    step: int | None  # its training step (None for a file without progress, e.g. averaged)
    tokenizer: dict  # its config's tokenizer section, but for TOKENIZER_RUN_KEYS

    def describe(self) -> str:
        """``path (step N)`` for logs, the banner and ``summary.json``."""
        return self.checkpoint + ("" if self.step is None else f" (step {self.step})")

    @classmethod
    def of_checkpoint(cls, checkpoint: dict | None) -> Origin | None:
        """The origin a run's checkpoint records (None: the run started from scratch)."""
        recorded = None if checkpoint is None else checkpoint.get("origin")
        return None if recorded is None else cls(**recorded)

    def named_by(self, init_from: Path) -> bool:
        """Whether ``--init-from init_from`` may mean this origin's checkpoint (a run directory:
        its best.pt or last.pt); never raises, whatever ``init_from`` holds now."""
        names = (BEST_FILE, LAST_FILE) if init_from.is_dir() else ("",)
        return Path(self.checkpoint) in {(init_from / name).resolve() for name in names}

    def to_plain(self) -> dict:
        """As plain data, for checkpoints."""
        return asdict(self)


def open_initial(config: Config, init_from: Path) -> tuple[Origin, dict, dict]:
    """The trained model a new run starts from: its :class:`Origin`, weights and tokenizer
    state, from a checkpoint file or a run directory (its ``best.pt``, else ``last.pt``).

    Raises ``CheckpointError`` for a file that is not a training checkpoint, ``ConfigError``
    when ``config``'s model section builds another model (naming the key and both values).
    """
    path = find_checkpoint(init_from).resolve()
    state = load_checkpoint(path, mmap=True)  # the optimizer state is never read
    missing = [key for key in ("config", "tokenizer", "model") if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: cannot start a run from it: no {', '.join(missing)}; pass a checkpoint "
            f"or the run directory of a seq2seq-attn training run (an exported CTranslate2 "
            "folder cannot be trained further)"
        )
    check_model_fields(state, path)
    source = config_from_plain(state["config"], f"{path} (its config)")
    check_same_model(source.model, config.model, path)
    tokenizer = {
        key: value
        for key, value in to_plain(source.tokenizer).items()
        if key not in TOKENIZER_RUN_KEYS
    }
    step = state.get("progress", {}).get("step")
    origin = Origin(str(path), None if step is None else int(step), tokenizer)
    try:  # before the run directory exists: the adopted tokenizer must suit the config
        adopted(config, origin)
    except ConfigError as error:
        raise ConfigError(
            f"{error} (the tokenizer section is {path}'s: tokenizer.type {tokenizer['type']!r})"
        ) from None
    return origin, state["model"], state["tokenizer"]


def log_origin(config: Config, origin: Origin) -> None:
    """Say which model a new run starts from, and which tokenizer keys of ``config`` it
    replaces with that model's."""
    logger.info("starting from the weights and tokenizer of %s", origin.describe())
    for key, value in origin.tokenizer.items():
        if getattr(config.tokenizer, key) != value:
            logger.warning(
                "tokenizer.%s: %r in the config is not used; the run keeps the tokenizer of "
                "%s (%s: %r)", key, getattr(config.tokenizer, key), origin.checkpoint, key, value,
            )  # fmt: skip


def _architecture(model: ModelConfig) -> dict:
    """The model section as plain data without the dropout keys and the unused family's part."""
    plain = to_plain(model)
    plain.pop("rnn" if model.family == "transformer" else "transformer")
    for part, keys in DROPOUT_KEYS.items():
        section = plain.get(part, {}) if part else plain
        for key in keys:
            section.pop(key, None)
    return plain


def check_same_model(source: ModelConfig, config: ModelConfig, path: Path) -> None:
    """Refuse a model section that would build another model than the checkpoint at ``path``
    holds; the dropout keys may differ."""
    labels = (f"in {path}", "in the config")
    found = first_difference(source.family, config.family, "model.family", labels)
    found = found or first_difference(_architecture(source), _architecture(config), "model", labels)
    if found:
        raise ConfigError(
            f"{found}: a run started from {path} must build the same model; copy the model "
            "section of that run's config.yaml (only the dropout keys may differ)"
        )


def adopted(config: Config, origin: Origin | None) -> Config:
    """``config`` with the tokenizer section of the model the run started from (unchanged for
    a run from scratch); the keys that act during training stay the config's."""
    if origin is None:
        return config
    plain = to_plain(config)
    plain["tokenizer"].update(origin.tokenizer)
    return config_from_plain(plain)
