"""The ``model`` section: which family to build and the sizes of the Transformer and the RNN.

Each dataclass validates its own values in ``__post_init__`` and raises
:class:`~seq2seq_attn.config.loader.ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .loader import require

FAMILIES = ("transformer", "rnn")
NORM_POSITIONS = ("pre", "post")
POSITIONALS = ("sinusoidal", "learned")
ACTIVATIONS = ("relu", "gelu")
RNN_CELLS = ("gru", "lstm")
RNN_DECODERS = ("bahdanau", "luong")
LUONG_SCORES = ("dot", "general", "concat")


def _require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Require ``value`` to be one of ``choices``."""
    require(value in choices, key, value, f"choose one of {', '.join(choices)}")


def _require_positive(key: str, value: int) -> None:
    """Require a positive integer size or count."""
    require(value >= 1, key, value, "use a positive integer")


def _require_probability(key: str, value: float) -> None:
    """Require a dropout probability in [0, 1)."""
    require(0.0 <= value < 1.0, key, value, "use a probability in [0, 1)")


@dataclass
class TransformerConfig:
    """``model.transformer``: sizes and options of the Transformer (Vaswani et al., 2017)."""

    d_model: int = 256
    num_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    ff_size: int = 1024
    attention_dropout: float = 0.1  # on the attention weights
    activation_dropout: float = 0.0  # inside the feed-forward block, after the activation
    norm_position: str = "pre"  # pre | post (layer norm before or after each residual block)
    positional: str = "sinusoidal"  # sinusoidal | learned
    activation: str = "relu"  # relu | gelu
    tie_embeddings: bool = True  # output projection = target embedding (= source when joint)

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "encoder_layers", "decoder_layers", "ff_size"):
            _require_positive(f"model.transformer.{name}", getattr(self, name))
        require(
            self.d_model % self.num_heads == 0,
            "model.transformer.num_heads",
            self.num_heads,
            f"use a divisor of model.transformer.d_model ({self.d_model})",
        )
        _require_probability("model.transformer.attention_dropout", self.attention_dropout)
        _require_probability("model.transformer.activation_dropout", self.activation_dropout)
        _require_choice("model.transformer.norm_position", self.norm_position, NORM_POSITIONS)
        _require_choice("model.transformer.positional", self.positional, POSITIONALS)
        _require_choice("model.transformer.activation", self.activation, ACTIVATIONS)

    @property
    def pre_norm(self) -> bool:
        """Layer norm before each residual block (and a final norm on each stack)."""
        return self.norm_position == "pre"

    @property
    def learned_positions(self) -> bool:
        """A learned position table instead of fixed sinusoids."""
        return self.positional == "learned"


@dataclass
class RNNConfig:
    """``model.rnn``: the recurrent encoder-decoder with attention.

    ``hidden_size`` is the decoder state size and also the encoder output size: a bidirectional
    encoder runs ``hidden_size // 2`` units per direction, so every Luong score (``dot``
    included) works with every encoder.
    """

    cell: str = "gru"  # gru | lstm
    embedding_size: int = 256
    hidden_size: int = 512
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    decoder: str = "bahdanau"  # bahdanau (additive, before the step) | luong (after the step)
    luong_score: str = "general"  # dot | general | concat; read by the luong decoder only
    attention_size: int = 512  # hidden size of additive (bahdanau / concat) scores

    def __post_init__(self) -> None:
        for name in (
            "embedding_size", "hidden_size", "encoder_layers", "decoder_layers", "attention_size"
        ):  # fmt: skip
            _require_positive(f"model.rnn.{name}", getattr(self, name))
        _require_choice("model.rnn.cell", self.cell, RNN_CELLS)
        _require_choice("model.rnn.decoder", self.decoder, RNN_DECODERS)
        _require_choice("model.rnn.luong_score", self.luong_score, LUONG_SCORES)
        require(
            not self.bidirectional or self.hidden_size % 2 == 0,
            "model.rnn.hidden_size",
            self.hidden_size,
            "use an even size with model.rnn.bidirectional (half per direction)",
        )

    @property
    def num_gates(self) -> int:
        """Gate blocks in a layer's input/hidden matmuls: 3 for a GRU, 4 for an LSTM."""
        return 4 if self.cell == "lstm" else 3


@dataclass
class ModelConfig:
    """``model``: which family to build, shared options, and each family's own section."""

    family: str = "transformer"  # transformer | rnn
    dropout: float = 0.1  # on embeddings, residuals and between recurrent layers
    max_positions: int = 512  # longest source or target (tokens) the Transformer accepts
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)

    def __post_init__(self) -> None:
        _require_choice("model.family", self.family, FAMILIES)
        _require_probability("model.dropout", self.dropout)
        _require_positive("model.max_positions", self.max_positions)
