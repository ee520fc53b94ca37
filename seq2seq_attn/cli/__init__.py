"""Command-line entry points ``attn-train`` and ``attn-translate``.

The only modules that import typer and rich: commands parse options, set up logging and hand off
to library code; progress comes back through the training callbacks and is drawn here.
"""

from .train_cmd import train_app
from .translate_cmd import translate_app

__all__ = ["train_app", "translate_app"]
