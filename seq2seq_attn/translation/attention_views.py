"""Every attention map of one translated sentence, as plain JSON data (attn-serve's explorer).

:func:`attention_views` runs a (source, hypothesis) pair teacher-forced, which for a search
output equals what the search saw, and returns the ``"attention"`` object of the serve API:
the subword tokens of both sides, the cross-attention of every decoder layer and head, and
(for a Transformer) the encoder and causal decoder self-attention of every layer and head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..decoding import Hypothesis
from ..models.common import Seq2Seq
from ..tokenizer import BOS_ID, EOS_ID, Tokenizer

DECIMALS = 4  # weights are rounded to this many decimals: enough for pictures, short JSON


def attention_views(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    src_text: str,
    hypothesis: Hypothesis,
    device: torch.device | str,
) -> dict:
    """The attention of ``hypothesis`` translating ``src_text`` (an ensemble's first model's).

    Returns a dict with ``src_tokens`` (the ``S`` source pieces the search saw plus
    ``"</s>"``), ``tgt_tokens`` (the ``T`` hypothesis pieces plus ``"</s>"``), ``cross``
    ``[L][H][T + 1][S + 1]``, and ``encoder`` ``[L_enc][H][S + 1][S + 1]`` and ``decoder``
    ``[L_dec][H][T + 1][T + 1]`` (causal: 0 above the diagonal), both ``None`` for a family
    without self-attention (an RNN). Weights are fp32 rounded to 4 decimals; rows sum to 1.
    Either side longer than ``model.max_positions - 1`` tokens is cut to that many, as the
    search cuts sources. The model is in eval mode meanwhile.
    """
    src_ids = _cut(tokenizer.encode_src([src_text])[0], model)
    tgt_ids = _cut(hypothesis.tokens, model)
    src = torch.tensor([[*src_ids, EOS_ID]], device=device)  # (1, S + 1)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]], device=device)  # (1, T + 1)
    src_mask = torch.ones_like(src, dtype=torch.bool)  # (1, S + 1)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(src.device.type, enabled=False):
            cross = model.attention_maps(src, src_mask, tgt_in)[0]  # (L, H, T + 1, S + 1)
            self_maps = model.self_attention_maps(src, src_mask, tgt_in)
    finally:
        model.train(was_training)
    return {
        "src_tokens": [*tokenizer.src_pieces(src_ids), "</s>"],
        "tgt_tokens": [*tokenizer.tgt_pieces(tgt_ids), "</s>"],
        "cross": _rounded(cross),
        "encoder": None if self_maps is None else _rounded(self_maps.encoder[0]),
        "decoder": None if self_maps is None else _rounded(self_maps.decoder[0]),
    }


def _cut(ids: Sequence[int], model: Seq2Seq) -> list[int]:
    """``ids`` cut to leave room for the EOS (source) or BOS (target) in ``max_positions``."""
    limit = model.max_positions
    return list(ids) if limit is None else list(ids[: limit - 1])


def _rounded(weights: torch.Tensor) -> list:
    """Nested lists of ``weights`` ``(L, H, Tq, Tk)`` as Python floats, rounded (in float64,
    so that each prints as its short decimal)."""
    return weights.double().round(decimals=DECIMALS).cpu().tolist()
