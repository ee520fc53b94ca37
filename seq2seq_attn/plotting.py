"""Pictures as PNG files: attention heatmaps and learning curves.

matplotlib is an optional extra (``pip install 'seq2seq-attn[plot]'``; ``make install`` has it)
and is imported only when a picture is drawn, so nothing else pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .fileio import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class PlottingError(RuntimeError):
    """A picture that cannot be drawn (matplotlib missing); the message says how to fix it."""


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, or a :class:`PlottingError`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise PlottingError(
            "drawing pictures needs matplotlib: pip install 'seq2seq-attn[plot]' "
            "(make install includes it)"
        ) from None
    return pyplot


def attention_picture_paths(records: Sequence[dict], path: Path) -> list[Path]:
    """Where :func:`plot_attention` draws each record: ``path`` itself for one record, else
    ``STEM-INDEX.png`` beside it (INDEX is the record's ``index``)."""
    if len(records) == 1:
        return [path]
    suffix = path.suffix or ".png"
    return [path.with_name(f"{path.stem}-{record['index']}{suffix}") for record in records]


def plot_attention(records: Sequence[dict], path: Path) -> list[Path]:
    """One PNG heatmap per attention record (``translation.torch_backend.attention_record``:
    subword tokens on both axes, ``weights`` of shape ``(T + 1, S + 1)``); returns the files
    written, named by :func:`attention_picture_paths`."""
    pyplot = _pyplot()
    targets = attention_picture_paths(records, Path(path))
    for record, target in zip(records, targets, strict=True):
        figure = attention_figure(record)
        write_atomic(
            target, lambda handle, figure=figure: figure.savefig(handle, format="png", dpi=120)
        )
        pyplot.close(figure)
    return targets


def attention_figure(record: dict, title_prefix: str = "") -> Figure:
    """The heatmap of one attention record (see :func:`plot_attention`) as a matplotlib figure,
    titled with the sentence, layer and head after ``title_prefix``; close it when done."""
    pyplot = _pyplot()
    src_tokens, tgt_tokens = record["src_tokens"], record["tgt_tokens"]
    figure, axes = pyplot.subplots(
        figsize=(max(4.0, 0.45 * len(src_tokens) + 1.5), max(3.0, 0.4 * len(tgt_tokens) + 1.2))
    )
    image = axes.imshow(record["weights"], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(src_tokens)), src_tokens, rotation=60, ha="right")
    axes.set_yticks(range(len(tgt_tokens)), tgt_tokens)
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    layer = "last layer" if record["layer"] == -1 else f"layer {record['layer']}"
    axes.set_title(f"{title_prefix}sentence {record['index']}: {layer}, head {record['head']}")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


def plot_learning_curves(validations: Sequence[dict], path: Path, title: str) -> Path:
    """Dev BLEU and dev loss against training steps (top) and training minutes (bottom), from
    the ``"valid"`` records of a run's ``metrics.jsonl`` (``step``, ``elapsed`` in seconds,
    ``bleu``, ``loss``), in one PNG at ``path``; records without ``elapsed`` (written by an
    older version) are left out of the minutes panels."""
    if not validations:
        raise PlottingError(f"{path}: no validation records to draw (the run never validated)")
    pyplot = _pyplot()
    timed = [record for record in validations if "elapsed" in record]  # older runs lack it
    axes_x = (
        ("step", 1.0, validations, "training steps"),
        ("elapsed", 60.0, timed, "training minutes"),
    )
    axes_y = (("bleu", "dev BLEU (greedy)"), ("loss", "dev loss"))
    figure, grid = pyplot.subplots(2, 2, figsize=(10, 7), squeeze=False)
    for row, (x_key, unit, records, x_label) in enumerate(axes_x):
        for column, (metric, label) in enumerate(axes_y):
            axes = grid[row][column]
            x_values = [record[x_key] / unit for record in records]
            axes.plot(x_values, [record[metric] for record in records], marker="o", ms=3)
            axes.set_xlabel(x_label if records else f"{x_label} (not recorded by this run)")
            axes.set_ylabel(label)
            axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    pyplot.close(figure)
    return Path(path)
