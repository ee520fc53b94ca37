"""Command-line entry points ``attn-train``, ``attn-translate``, ``attn-score``,
``attn-export`` and ``attn-serve``.

The only modules that import typer and rich: commands parse options, set up logging and hand off
to library code; progress comes back through the training callbacks and is drawn here.

Each command lives in its own module and is imported only when asked for, so that starting
``attn-translate`` never pays for what only ``attn-train`` needs (HF datasets, the training loop).
"""

from __future__ import annotations

import importlib

__all__ = ["export_app", "score_app", "serve_app", "train_app", "translate_app"]

_HOMES = {
    "train_app": ".train_cmd",
    "translate_app": ".translate_cmd",
    "export_app": ".export_cmd",
    "score_app": ".score_cmd",
    "serve_app": ".serve_cmd",
}


def __getattr__(name: str) -> object:
    """``train_app`` / ``translate_app`` / ``score_app`` / ``export_app`` / ``serve_app``,
    importing their module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
