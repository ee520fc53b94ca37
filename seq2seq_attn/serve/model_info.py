"""What ``GET /v1/model`` says about the served model: family, size, languages, attention
shape, decode defaults, backend and limits, as plain JSON data gathered once at start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..translation import Translator
from ..translation.torch_backend import TorchTranslator
from .schema import ServeLimits


def describe_model(translator: Translator, path: Path, ensemble: int, limits: ServeLimits) -> dict:
    """The ``/v1/model`` answer for ``translator`` opened from ``path`` (with ``ensemble``
    models in all)."""
    decode = translator.decode
    info: dict = {
        "name": str(path),
        "ensemble": ensemble,
        "decode": {
            "beam_size": decode.beam_size,
            "length_penalty": decode.length_penalty,
            "max_length_ratio": decode.max_length_ratio,
            "n_best": decode.n_best,
        },
        "capabilities": dataclasses.asdict(translator.capabilities),
        "limits": dataclasses.asdict(limits),
    }
    if isinstance(translator, TorchTranslator):  # the torch backend knows its config
        info.update(_checkpoint_fields(translator))
    else:  # a CTranslate2 folder: attn-export writes Transformers only
        compute_type = getattr(translator, "compute_type", None)
        info.update(
            backend="ctranslate2", family="transformer", parameters=None, src_lang=None,
            tgt_lang=None, layers=None, heads=None, device=None, precision=compute_type,
        )  # fmt: skip
    info["capabilities"]["self_attention"] = info["family"] == "transformer" and bool(
        info["capabilities"]["attention"]
    )
    return info


def _checkpoint_fields(translator: TorchTranslator) -> dict:
    """Family, size, languages, attention layers and heads, device and precision of a
    checkpoint opened by the torch backend."""
    config, model = translator.config, translator.model
    family = config.model.family
    if family == "transformer":
        section = config.model.transformer
        layers = {"encoder": section.encoder_layers, "decoder": section.decoder_layers}
        heads = section.num_heads
    else:  # one attention over the source per target step
        rnn = config.model.rnn
        family = f"rnn-{rnn.decoder}" + (f"-{rnn.luong_score}" if rnn.decoder == "luong" else "")
        layers, heads = {"encoder": 0, "decoder": 1}, 1
    return {
        "backend": "torch",
        "family": family,
        "parameters": model.num_parameters(),
        "src_lang": config.data.src_lang,
        "tgt_lang": config.data.tgt_lang,
        "layers": layers,
        "heads": heads,
        "device": str(translator.device),
        "precision": translator.precision.name,
    }
