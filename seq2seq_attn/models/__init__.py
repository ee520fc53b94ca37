"""Model families and :func:`build_model`, the one place that chooses between them."""

from __future__ import annotations

from ..config import ModelConfig
from .common import DecoderState, EncoderOutput, Seq2Seq
from .rnn import RNNOptions, RNNSeq2Seq
from .transformer import Transformer, TransformerOptions

__all__ = ["DecoderState", "EncoderOutput", "Seq2Seq", "build_model"]


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
        return RNNSeq2Seq(rnn_options(config), src_vocab_size, tgt_vocab_size, joint_vocab)
    return Transformer(transformer_options(config), src_vocab_size, tgt_vocab_size, joint_vocab)


def transformer_options(config: ModelConfig) -> TransformerOptions:
    """``model.transformer`` and the shared options as :class:`TransformerOptions`."""
    section = config.transformer
    return TransformerOptions(
        d_model=section.d_model,
        num_heads=section.num_heads,
        encoder_layers=section.encoder_layers,
        decoder_layers=section.decoder_layers,
        ff_size=section.ff_size,
        dropout=config.dropout,
        attention_dropout=section.attention_dropout,
        activation_dropout=section.activation_dropout,
        pre_norm=section.norm_position == "pre",
        learned_positions=section.positional == "learned",
        activation=section.activation,
        tie_embeddings=section.tie_embeddings,
        max_positions=config.max_positions,
    )


def rnn_options(config: ModelConfig) -> RNNOptions:
    """``model.rnn`` and the shared dropout as :class:`RNNOptions`."""
    section = config.rnn
    return RNNOptions(
        cell=section.cell,
        embedding_size=section.embedding_size,
        hidden_size=section.hidden_size,
        encoder_layers=section.encoder_layers,
        decoder_layers=section.decoder_layers,
        bidirectional=section.bidirectional,
        decoder=section.decoder,
        luong_score=section.luong_score,
        attention_size=section.attention_size,
        dropout=config.dropout,
    )
