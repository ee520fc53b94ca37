"""Typed configuration: one dataclass per section of the YAML config.

Each section validates its own values in ``__post_init__`` and raises :class:`ConfigError`
naming the key, the bad value and how to fix it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key, the value and the fix."""


def require(condition: bool, key: str, value: object, fix: str) -> None:
    """Raise :class:`ConfigError` for ``key = value`` unless ``condition``; ``fix`` says what to do.

    ``key`` is the dotted path the user writes (``model.num_heads``).
    """
    if not condition:
        raise ConfigError(f"{key}: invalid value {value!r}; {fix}")


# ---- model section -------------------------------------------------------------------------


# ---- data and tokenizer sections ----------------------------------------------------------


# ---- train and decode sections, the whole config, YAML loading -----------------------------
