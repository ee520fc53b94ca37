"""Translation behind one protocol: :func:`open_translator` opens a checkpoint, a run directory
or an exported CTranslate2 folder as a :class:`Translator`, configured by one
:class:`TranslationSettings`; its errors are :class:`TranslationError`.

Backends: :mod:`.torch_backend` (checkpoints and ensembles, and the search over a model in
memory that validation runs) and :mod:`.ct2_backend` (exported folders).
"""

from .common import (
    Capabilities,
    TranslationError,
    TranslationSettings,
    TranslationStream,
    Translator,
)
from .opener import open_translator

__all__ = [
    "Capabilities",
    "TranslationError",
    "TranslationSettings",
    "TranslationStream",
    "Translator",
    "open_translator",
]
