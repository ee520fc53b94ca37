"""Export a Transformer checkpoint to a CTranslate2 model folder, and what makes a folder one.

:func:`export_checkpoint` maps every weight of the project's :class:`Transformer` onto
``ctranslate2.specs.TransformerSpec`` (pre/post-norm, sinusoidal or learned positions,
ReLU/GELU, tied or untied output, joint or separate vocabularies) and writes a folder that
CTranslate2 loads directly: ``model.bin`` and its vocabularies, the SentencePiece model(s) and
``seq2seq_attn.json`` (the decode settings and where the weights came from): the
:data:`EXPORT_FILES`. A folder may hold other files too (notes, test sets): a new export
replaces only its own. The folder is translated by :mod:`seq2seq_attn.translation.ct2_backend`.

``ctranslate2`` is an optional dependency: it is imported only when a function here needs it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from .config import DecodeConfig
from .fileio import replace_files_atomic, sweep_staging
from .tokenizer import BOS_ID, EOS_ID, SRC_FILE, TGT_FILE, UNK_ID, Tokenizer

if TYPE_CHECKING:
    from .models.transformer import Transformer

MODEL_FILE = "model.bin"
"""CTranslate2's weights file: any CTranslate2 model folder has one."""
INFO_FILE = "seq2seq_attn.json"
"""The file that marks a folder as exported by this project (format, decode settings)."""
EXPORT_FILES = frozenset(
    {
        MODEL_FILE,
        "config.json",  # CTranslate2's model config
        *(f"{side}_vocabulary.json" for side in ("shared", "source", "target")),  # CTranslate2
        SRC_FILE,  # Tokenizer.save
        TGT_FILE,  # Tokenizer.save, separate vocabularies only
        INFO_FILE,
    }
)
"""Every file an export may write; ``--force`` replaces these (and removes those the new export
does not write), keeping any other file of the folder."""
FORMAT_VERSION = 1
QUANTIZATIONS = (
    "none", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
    "bfloat16", "float32",
)  # fmt: skip
"""``--quantization`` choices: ``none`` keeps float32 weights; the others are CTranslate2's."""
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which the project's models use


class ExportError(ValueError):
    """A checkpoint or folder that cannot be exported or loaded; the message says why and how
    to fix it."""


def import_ctranslate2():
    """The ``ctranslate2`` module, or an :class:`ExportError` saying how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ExportError(
            "CTranslate2 is not installed: pip install 'seq2seq-attn[ctranslate2]' (or "
            "pip install ctranslate2; make install includes it)"
        ) from None
    return ctranslate2


def transformer_spec(model: Transformer, tokenizer: Tokenizer):
    """The ``TransformerSpec`` holding every weight of ``model`` (fp32, on the CPU)."""
    ctranslate2 = import_ctranslate2()
    specs = ctranslate2.specs
    section = model.config.transformer
    activation = {"relu": specs.Activation.RELU, "gelu": specs.Activation.GELU}
    spec = specs.TransformerSpec.from_config(
        (section.encoder_layers, section.decoder_layers),
        section.num_heads,
        pre_norm=section.pre_norm,
        activation=activation[section.activation],
    )
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = _weight(model.src_embed.weight)
    decoder.embeddings.weight = _weight(model.tgt_embed.weight)
    encoder.scale_embeddings = decoder.scale_embeddings = True  # times sqrt(d_model), as ours
    encoder.position_encodings.encodings = _positions(model.src_positions)
    decoder.position_encodings.encodings = _positions(model.tgt_positions)
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers, strict=True):
        _set_self_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block.norm)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.ff_block.norm)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers, strict=True):
        _set_self_attention(layer_spec.self_attention, layer.self_attn, layer.self_block.norm)
        _set_cross_attention(layer_spec.attention, layer.cross_attn, layer.cross_block.norm)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.ff_block.norm)
    if section.pre_norm:  # post-norm stacks have no final norm, in either implementation
        _set_layer_norm(encoder.layer_norm, model.encoder_norm)
        _set_layer_norm(decoder.layer_norm, model.decoder_norm)
    _set_linear(decoder.projection, model.output)

    spec.config.add_source_eos = True  # our sources end in EOS, with no BOS
    spec.config.add_source_bos = False
    spec.config.decoder_start_token = tokenizer.tgt_pieces([BOS_ID])[0]
    spec.config.bos_token = tokenizer.tgt_pieces([BOS_ID])[0]
    spec.config.eos_token = tokenizer.tgt_pieces([EOS_ID])[0]
    spec.config.unk_token = tokenizer.tgt_pieces([UNK_ID])[0]
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    # One token per SentencePiece id, so CTranslate2's ids are the project's ids.
    spec.register_source_vocabulary(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
    spec.register_target_vocabulary(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))
    return spec


def _weight(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous fp32 CPU copy, detached from the model."""
    return tensor.detach().to("cpu", torch.float32).contiguous().clone()


def _positions(encoding) -> torch.Tensor:
    """The project's own ``(max_positions, D)`` position table (learned or sinusoidal), row 0
    for the first token; CTranslate2's own table would differ (``[sin | cos]``, from 1)."""
    return _weight(encoding(encoding.max_positions))


def _set_linear(spec, linears: torch.nn.Linear | Sequence[torch.nn.Linear]) -> None:
    """A ``LinearSpec`` from one linear layer, or several stacked on the output axis."""
    layers = [linears] if isinstance(linears, torch.nn.Linear) else list(linears)
    spec.weight = _weight(torch.cat([layer.weight for layer in layers]))
    if layers[0].bias is not None:
        spec.bias = _weight(torch.cat([layer.bias for layer in layers]))


def _set_layer_norm(spec, norm: torch.nn.LayerNorm) -> None:
    """A ``LayerNormSpec`` (gamma, beta)."""
    spec.gamma = _weight(norm.weight)
    spec.beta = _weight(norm.bias)


def _set_self_attention(spec, attention, norm: torch.nn.LayerNorm) -> None:
    """Self-attention: ``linear[0]`` is the fused q/k/v projection, ``linear[1]`` the output."""
    _set_linear(spec.linear[0], (attention.q_proj, attention.k_proj, attention.v_proj))
    _set_linear(spec.linear[1], attention.out_proj)
    _set_layer_norm(spec.layer_norm, norm)


def _set_cross_attention(spec, attention, norm: torch.nn.LayerNorm) -> None:
    """Cross-attention: ``linear[0]`` q, ``linear[1]`` the fused k/v, ``linear[2]`` output."""
    _set_linear(spec.linear[0], attention.q_proj)
    _set_linear(spec.linear[1], (attention.k_proj, attention.v_proj))
    _set_linear(spec.linear[2], attention.out_proj)
    _set_layer_norm(spec.layer_norm, norm)


def _set_feed_forward(spec, feed_forward, norm: torch.nn.LayerNorm) -> None:
    """The feed-forward block and the layer norm of its residual."""
    _set_linear(spec.linear_0, feed_forward.linear1)
    _set_linear(spec.linear_1, feed_forward.linear2)
    _set_layer_norm(spec.layer_norm, norm)


def export_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    quantization: str = "none",
    force: bool = False,
) -> Path:
    """Write a CTranslate2 model folder for a Transformer checkpoint (or a run directory's
    ``best.pt``, else ``last.pt``) and return its path.

    A symbolic link as ``output_dir`` is followed (``current -> exports/v3`` writes
    ``exports/v3``; the link stays). The files are written beside the folder and moved in when
    complete, so an interrupted export leaves the earlier files or the new ones; what a killed
    export left there is cleared first. A non-empty folder is written only with ``force`` and
    when it holds an earlier export: its :data:`EXPORT_FILES` are replaced, any other file is
    kept. Raises :class:`ExportError` for an RNN checkpoint, an unknown quantization, a link
    that leads nowhere or an occupied folder, ``CheckpointError`` for a missing or damaged
    checkpoint.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            f"--quantization {quantization!r} is not known; choose one of "
            f"{', '.join(QUANTIZATIONS)}"
        )
    output_dir = Path(output_dir)
    folder = _target_folder(output_dir)
    path = find_checkpoint(Path(checkpoint))
    _check_output_dir(folder, path, force)
    model, tokenizer, config = model_from_checkpoint(load_checkpoint(path, mmap=True), path)
    if config.model.family != "transformer":
        raise ExportError(
            f"{path}: an RNN checkpoint ({config.model.rnn.decoder} attention) cannot be exported: "
            "CTranslate2 has no RNN decoder; translate it with attn-translate CHECKPOINT instead"
        )
    spec = transformer_spec(model, tokenizer)
    spec.validate()
    spec.optimize(quantization=None if quantization == "none" else quantization)
    with replace_files_atomic(folder, EXPORT_FILES) as staging:
        spec.save(str(staging))
        tokenizer.save(staging)
        info = {
            "format": FORMAT_VERSION,
            "checkpoint": str(path),
            "quantization": quantization,
            "max_positions": model.max_positions,
            "decode": dataclasses.asdict(config.decode),
            "joint_vocabulary": tokenizer.joint,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return output_dir


def _target_folder(output_dir: Path) -> Path:
    """The folder to write for ``output_dir``, symbolic links followed, with the staging
    folders a killed export left beside it cleared first (which may bring the folder back);
    :class:`ExportError` for a link that leads nowhere."""
    try:
        folder = output_dir.resolve()
    except (OSError, RuntimeError) as error:  # a loop of links
        raise ExportError(
            f"{output_dir}: cannot follow the link ({error}); choose another -o"
        ) from None
    sweep_staging(folder, EXPORT_FILES)
    if output_dir.is_symlink() and not folder.exists():
        raise ExportError(
            f"{output_dir}: a symbolic link to {folder}, which does not exist; create that "
            "folder (mkdir), or point the link or -o at a folder"
        )
    return folder


def _check_output_dir(output_dir: Path, checkpoint: Path, force: bool) -> None:
    """Refuse an ``output_dir`` whose files an export would destroy: a file, the checkpoint's
    own folder, or a non-empty folder (with ``force``: one written by attn-export has its
    :data:`EXPORT_FILES` replaced)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"{output_dir}: exists and is not a folder; choose another -o")
    if output_dir.resolve() in checkpoint.resolve().parents:
        raise ExportError(
            f"{output_dir}: holds the checkpoint {checkpoint}; choose another -o (a new folder)"
        )
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not force:
        raise ExportError(
            f"{output_dir}: the folder is not empty; choose another -o, or pass --force to "
            "replace an earlier export (its other files are kept)"
        )
    if not is_exported(output_dir):
        raise ExportError(
            f"{output_dir}: not a folder written by attn-export, so --force will not replace "
            "it; choose another -o"
        )


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_checkpoint`."""
    path = Path(path)
    return (path / INFO_FILE).is_file() and (path / MODEL_FILE).is_file()


def read_info(directory: Path) -> dict:
    """The folder's ``seq2seq_attn.json``, checked; :class:`ExportError` names what is wrong."""
    info_path = directory / INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(
            f"{info_path}: cannot read it ({error}); export the model again"
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_VERSION:
        raise ExportError(
            f"{info_path}: format {info.get('format') if isinstance(info, dict) else None!r} "
            f"is not {FORMAT_VERSION}; export the model again with this version's attn-export"
        )
    try:
        DecodeConfig(**info["decode"])
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(
            f"{info_path}: no valid decode settings ({error}); export the model again with "
            "attn-export"
        ) from None
    return info
