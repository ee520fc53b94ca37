"""seq2seq-attn: train, understand and use attention-based translation models."""

__version__ = "0.1.0"
