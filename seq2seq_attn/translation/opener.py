"""One entry point for every kind of model: :func:`open_translator` recognises a checkpoint
file, a run directory or a folder written by ``attn-export`` and opens it with its backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import CheckpointError, find_checkpoint
from ..config import ConfigError
from ..export import MODEL_FILE, is_exported
from .common import TranslationError, TranslationSettings, Translator
from .ct2_backend import open_exported
from .torch_backend import open_checkpoints


def open_translator(
    path: str | Path,
    settings: TranslationSettings | None = None,
    ensemble: Sequence[str | Path] = (),
) -> Translator:
    """The model at ``path`` ready to translate with ``settings`` (default: the model's own
    decode settings, on the best device).

    ``path``: a ``.pt`` checkpoint, a run directory (its ``best.pt``, else ``last.pt``), both
    translated by the torch backend, or an exported folder, translated by CTranslate2.
    ``ensemble``: more checkpoints or run directories to decode with (averaged
    log-probabilities; the first model's decode settings and attention).

    Raises :class:`~seq2seq_attn.translation.common.TranslationError` for everything that
    stops a model from opening; its ``unreadable`` tells a file that cannot be read from a request
    that cannot be honoured.
    """
    path, settings = Path(path), settings or TranslationSettings()
    if is_exported(path):
        return _open_exported(path, settings, ensemble)
    _check_checkpoint_request(path, settings, ensemble)
    try:
        paths = [find_checkpoint(Path(member)) for member in (path, *ensemble)]
    except CheckpointError as error:
        raise TranslationError(str(error)) from None
    try:
        return open_checkpoints(paths, settings)
    except CheckpointError as error:
        raise TranslationError(str(error), unreadable=True) from None
    except ValueError as error:  # ConfigError, tokenizers that differ
        raise TranslationError(str(error)) from None


def _open_exported(
    folder: Path, settings: TranslationSettings, ensemble: Sequence[str | Path]
) -> Translator:
    """An exported folder through the CTranslate2 backend."""
    if ensemble:
        raise TranslationError(
            f"{folder} is a CTranslate2 folder: --ensemble needs .pt checkpoints (or run "
            "directories) for every model"
        )
    try:
        return open_exported(folder, settings)
    except ConfigError as error:
        raise TranslationError(str(error)) from None


def _check_checkpoint_request(
    path: Path, settings: TranslationSettings, ensemble: Sequence[str | Path]
) -> None:
    """Refuse what a checkpoint (or ensemble) cannot take: CTranslate2 settings, exported
    folders among ensemble members, CTranslate2 folders without this project's marker."""
    if settings.compute_type is not None:
        raise TranslationError(
            "--compute-type is for folders written by attn-export; for a checkpoint use --precision"
        )
    for member in map(Path, ensemble):
        if is_exported(member):
            raise TranslationError(
                f"--ensemble {member}: a CTranslate2 folder (attn-export); ensembles need .pt "
                "checkpoints or run directories"
            )
    for member in (path, *map(Path, ensemble)):
        if (member / MODEL_FILE).is_file():
            raise TranslationError(
                f"{member}: a CTranslate2 model without seq2seq_attn.json; attn-translate reads "
                "folders written by attn-export (export the checkpoint again) or .pt checkpoints"
            )
