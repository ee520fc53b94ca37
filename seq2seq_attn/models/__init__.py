"""Model families, :func:`build_model` (the one place that chooses between them) and the
:class:`Ensemble` of several trained models."""

from __future__ import annotations

from ..config import ModelConfig
from .common import DecoderState, EncoderOutput, Seq2Seq
from .ensemble import Ensemble
from .rnn import RNNSeq2Seq
from .transformer import Transformer

__all__ = ["DecoderState", "EncoderOutput", "Ensemble", "Seq2Seq", "build_model"]


def build_model(
    config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, joint_vocab: bool = False
) -> Seq2Seq:
    """The model that ``config`` (the ``model`` section) describes.

    ``joint_vocab``: source and target share one vocabulary, so the source and target
    embeddings are one tensor (and, with ``tie_embeddings``, the output projection too).
    """
    if joint_vocab and src_vocab_size != tgt_vocab_size:
        raise ValueError(
            f"joint_vocab needs one vocabulary, got sizes {src_vocab_size} and {tgt_vocab_size}"
        )
    if config.family == "rnn":
        return RNNSeq2Seq(config, src_vocab_size, tgt_vocab_size, joint_vocab)
    return Transformer(config, src_vocab_size, tgt_vocab_size, joint_vocab)
