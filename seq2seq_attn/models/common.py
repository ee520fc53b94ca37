"""What both model families share: embeddings, positions, the encoder output and the protocol.

Decoding and training code talk to a model only through :class:`Seq2Seq` (``encode``,
``init_state``, ``decode_step``, ``forward``, ``attention_maps``, ``self_attention_maps``) and to
a decoder state only through :class:`DecoderState` (``select``, ``join``), so they never need to
know which family they hold.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to(tensor: Tensor, dim: int, size: int, front: bool = False) -> Tensor:
    """``tensor`` grown to ``size`` along ``dim`` with zeros (False) at the end, or in front."""
    missing = size - tensor.size(dim)
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    filler = tensor.new_zeros(shape)
    return torch.cat([filler, tensor] if front else [tensor, filler], dim=dim)


def fit_to(tensor: Tensor, dim: int, size: int) -> Tensor:
    """``tensor`` cut or padded (zeros, False) at the end of ``dim`` to ``size``."""
    return tensor.narrow(dim, 0, size) if tensor.size(dim) > size else pad_to(tensor, dim, size)


def source_width(*masks: Tensor) -> int:
    """The longest real source in ``(B, S)`` masks padded at the end: the width they need."""
    return int(torch.cat([mask.sum(dim=1) for mask in masks]).max())


def select_rows(tensor: Tensor | None, batch_indices: Tensor) -> Tensor | None:
    """``tensor.index_select(0, batch_indices)``, passing ``None`` through."""
    return None if tensor is None else tensor.index_select(0, batch_indices)


@dataclass
class EncoderOutput:
    """What a decoder reads from the encoder, batch-first.

    Attributes:
        states: ``(B, S, D)`` encoder states (the attention memory).
        mask: ``(B, S)`` boolean, ``True`` at real source tokens (may attend).
        final: ``(B, F)`` a summary of the whole sentence (the RNN's final states, which its
            bridge turns into the decoder's first state), or ``None`` when a family has none.
    """

    states: Tensor
    mask: Tensor
    final: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of sentences ``B``."""
        return self.states.size(0)

    def select(self, batch_indices: Tensor) -> EncoderOutput:
        """A new output holding rows ``batch_indices`` (``(B',)`` long) in that order."""
        return EncoderOutput(
            states=self.states.index_select(0, batch_indices),
            mask=self.mask.index_select(0, batch_indices),
            final=select_rows(self.final, batch_indices),
        )

    def repeat_interleave(self, repeats: int) -> EncoderOutput:
        """Each sentence ``repeats`` times in a row (``B -> B * repeats``), e.g. for beams."""
        indices = torch.arange(self.batch_size, device=self.states.device)
        return self.select(indices.repeat_interleave(repeats))


@dataclass(frozen=True)
class SelfAttentionMaps:
    """Teacher-forced self-attention weights of every layer and head, for pictures.

    Attributes:
        encoder: ``(B, L_enc, H, S, S)``: query source position, key source position; padded
            keys get 0.
        decoder: ``(B, L_dec, H, T, T)``: query target position, key target position; causal,
            so 0 above the diagonal.
    """

    encoder: Tensor
    decoder: Tensor


StateT = TypeVar("StateT", bound="DecoderState")


class DecoderState(Protocol):
    """Everything a decoder carries between steps (caches, recurrent state, encoder memory).

    Beam search reorders, shrinks and (after a first step of one row a sentence) expands it
    with :meth:`select` and nothing else.
    """

    def select(self: StateT, batch_indices: Tensor, beams: int | None = None) -> StateT:
        """A new state holding batch rows ``batch_indices`` (``(B',)`` long, repeats allowed)
        in that order; ``self`` is left as it was. A state built with ``beams > 1`` (see
        :meth:`Seq2Seq.init_state`) takes whole groups: each ``beams`` consecutive indices
        from one sentence's rows. ``beams``: the rows per sentence of the new state (default:
        this state's), e.g. a one-row-a-sentence state expanded to a beam search's ``K``."""
        ...

    def join(self: StateT, other: StateT) -> StateT:
        """A new state holding the rows of ``self`` then those of ``other`` (same model, same
        ``beams``), which may have decoded a different number of steps and read sources of a
        different length: each row goes on exactly as it would have alone. This is how a
        search takes in sentences while it runs (:mod:`~seq2seq_attn.streaming`)."""
        ...


class Seq2Seq(nn.Module, ABC):
    """An encoder-decoder translation model: the one interface that search and training use.

    Shapes: ``src`` ``(B, S)`` and ``tgt_in`` ``(B, T)`` token ids; ``src_mask`` ``(B, S)``
    boolean with ``True`` at real tokens. ``tgt_in`` starts with BOS and may end in padding
    (logits at padded positions are to be ignored by the loss).
    """

    max_positions: int | None = None
    """Longest source or target (in tokens) the model accepts; ``None``: no limit."""

    @abstractmethod
    def encode(self, src: Tensor, src_mask: Tensor) -> EncoderOutput:
        """Run the encoder over a padded source batch."""

    @abstractmethod
    def init_state(self, encoder_output: EncoderOutput, beams: int = 1) -> DecoderState:
        """The decoder state before the first target token (nothing decoded yet), with
        ``beams`` rows per sentence (each sentence's rows next to each other: ``B * beams``).

        The state's :meth:`~DecoderState.select` may then assume that a selection keeps each
        sentence's rows together (as beam search's does: ``beams`` rows taken from one
        sentence's rows, for the sentences that remain), so that what is the same for every
        beam (the Transformer's cross-attention keys and values) is kept once per sentence.
        """

    @abstractmethod
    def decode_step(
        self, prev_tokens: Tensor, state: DecoderState, need_attention: bool = False
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One incremental decoding step.

        Args:
            prev_tokens: ``(B,)`` the previous target token of every row (BOS at the start).
            state: from :meth:`init_state` or the previous step. It may be updated in place
                (caches grow); use only the returned state afterwards.
            need_attention: return this step's attention; without it a family may return
                ``None`` and take a faster path (the Transformer's fused attention kernel).

        Returns:
            ``(logits (B, V), new state, attention (B, S) or None)``; the attention is this
            step's alignment over source positions (the Transformer's: its last decoder layer,
            averaged over heads).
        """

    @abstractmethod
    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for the next token after each ``tgt_in`` token."""

    @abstractmethod
    def attention_maps(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced attention weights for plots, ``(B, L, H, T, S)``: every decoder
        layer ``L`` and head ``H`` that attends to the source (``L = H = 1`` for an RNN)."""

    def self_attention_maps(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor
    ) -> SelfAttentionMaps | None:
        """Teacher-forced encoder and (causal) decoder self-attention weights of every layer and
        head, with the masks of training; ``None`` for a family without self-attention."""
        return None

    def linear_flops_per_token(self) -> tuple[int, int] | None:
        """Forward FLOPs (two per multiply-add) of the products with weight matrices, per source
        token and per target token, or ``None`` where a family does not count them."""
        return None

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters; a tensor shared by several modules (tied weights) counts once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class Dropout(nn.Module):
    """``nn.Dropout`` (zero each element with probability ``p`` in training, scale the rest by
    ``1 / (1 - p)``) with cheaper random masks on the CPU.

    ``torch.bernoulli_`` draws one 32-bit number per element, which made dropout about 9% of a
    CPU training step; here one 64-bit draw makes four 16-bit ones, so ``p`` is honoured to
    1/65,536 (and the scale is exact for the probability used). Other devices use
    ``F.dropout``. The draws come from torch's global generator, so ``torch.manual_seed`` and
    a restored RNG state reproduce them.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``x`` with dropout applied in training mode; unchanged in eval mode or for p = 0."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p == 1.0:
            return F.dropout(x, self.p, training=True)
        return _CpuDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _CpuDropout(torch.autograd.Function):
    """:class:`Dropout`'s CPU path: keeps the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        count = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
        draws = words.view(torch.int16)[:count].view(x.shape)  # uniform over [-2^15, 2^15)
        threshold = min(round(p * 65536) - 32768, 32767)
        keep = draws >= threshold  # probability (32768 - threshold) / 65536
        ctx.scale = 65536 / (32768 - threshold)
        ctx.save_for_backward(keep)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


class Embeddings(nn.Module):
    """Token embeddings, optionally multiplied by ``sqrt(dim)`` (Vaswani et al., 2017, 3.4)."""

    def __init__(self, vocab_size: int, dim: int, scale: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.scale = math.sqrt(dim) if scale else 1.0

    @property
    def weight(self) -> nn.Parameter:
        """The ``(V, D)`` embedding matrix (what an output projection ties to)."""
        return self.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, T) -> (B, T, D)``."""
        embedded = self.embedding(tokens)
        return embedded * self.scale if self.scale != 1.0 else embedded


def sinusoid_table(max_positions: int, dim: int) -> Tensor:
    """Vaswani et al.'s encodings: ``sin`` at even and ``cos`` at odd features, ``(P, D)``."""
    positions = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)  # (P, 1)
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = positions * rates  # (P, ceil(D/2))
    table = torch.zeros(max_positions, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class PositionalEncoding(nn.Module):
    """Position vectors for positions ``offset .. offset + length - 1``: fixed sinusoids or a
    learned table of ``max_positions`` rows."""

    def __init__(self, dim: int, max_positions: int, learned: bool = False) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.learned = nn.Embedding(max_positions, dim) if learned else None
        if self.learned is None:
            self.register_buffer("table", sinusoid_table(max_positions, dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """``(length, D)`` encodings, to be added to ``(B, length, D)`` embeddings."""
        if offset + length > self.max_positions:
            raise ValueError(
                f"sequence of {offset + length} positions is longer than model.max_positions "
                f"({self.max_positions}); shorten it or raise model.max_positions"
            )
        return self.vectors[offset : offset + length]

    def at(self, positions: Tensor) -> Tensor:
        """``(B, D)`` the encodings of ``positions`` ``(B,)`` (each below ``max_positions``:
        the search's length limits keep them there)."""
        return self.vectors.index_select(0, positions)

    @property
    def vectors(self) -> Tensor:
        """``(max_positions, D)`` every position's encoding: the sinusoids or the learned table."""
        return self.table if self.learned is None else self.learned.weight
