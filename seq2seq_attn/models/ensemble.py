"""An ensemble of independently trained models that decodes as one :class:`Seq2Seq`.

Each member keeps its own encoder output and decoder state (KV caches, recurrent state); at
every step the members' fp32 log-probabilities are averaged. Search needs nothing special:
the ensemble is one more model behind the protocol. Members may mix families; they must share
the target vocabulary (``translation.open_translator`` checks that they share the tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .common import DecoderState, EncoderOutput, SelfAttentionMaps, Seq2Seq


@dataclass
class EnsembleEncoderOutput(EncoderOutput):
    """Every member's encoder output; ``states``, ``mask`` and ``final`` are the first
    member's (what a caller that looks at one output sees)."""

    members: list[EncoderOutput] = field(default_factory=list)

    @classmethod
    def of(cls, members: list[EncoderOutput]) -> EnsembleEncoderOutput:
        """Wrap the members' outputs (one per member, in member order)."""
        first = members[0]
        return cls(states=first.states, mask=first.mask, final=first.final, members=members)

    def select(self, batch_indices: Tensor) -> EnsembleEncoderOutput:
        """Rows ``batch_indices`` (``(B',)`` long) of every member's output; the inherited
        :meth:`repeat_interleave` goes through here, so it repeats every member's too."""
        return EnsembleEncoderOutput.of([member.select(batch_indices) for member in self.members])


@dataclass
class EnsembleState:
    """The members' decoder states, in member order."""

    members: list[DecoderState]

    def select(self, batch_indices: Tensor, beams: int | None = None) -> EnsembleState:
        """Rows ``batch_indices`` of every member's state (see ``DecoderState.select``)."""
        return EnsembleState([member.select(batch_indices, beams) for member in self.members])

    def join(self, other: EnsembleState) -> EnsembleState:
        """Every member's state joined with the same member's in ``other`` (see
        ``DecoderState.join``)."""
        pairs = zip(self.members, other.members, strict=True)
        return EnsembleState([mine.join(theirs) for mine, theirs in pairs])


class Ensemble(Seq2Seq):
    """The average of several models' per-step log-probabilities.

    In place of logits, :meth:`decode_step` and :meth:`forward` return the mean of the
    members' fp32 ``log_softmax(logits)``; the search's own ``log_softmax`` renormalises that
    mean, so its scores stay log-probabilities. Attention (``decode_step``'s,
    :meth:`attention_maps` and :meth:`self_attention_maps`) is the first member's.
    ``max_positions`` is the smallest member limit (``None`` when no member has one).
    """

    def __init__(self, members: Sequence[Seq2Seq]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        limits = [member.max_positions for member in members if member.max_positions is not None]
        self.max_positions = min(limits) if limits else None

    def encode(self, src: Tensor, src_mask: Tensor) -> EnsembleEncoderOutput:
        """Every member's encoder over ``src`` ``(B, S)``."""
        return EnsembleEncoderOutput.of([member.encode(src, src_mask) for member in self.members])

    def init_state(self, encoder_output: EncoderOutput, beams: int = 1) -> EnsembleState:
        """Every member's first decoder state, from its own encoder output."""
        if not isinstance(encoder_output, EnsembleEncoderOutput):
            raise TypeError("Ensemble.init_state needs the output of Ensemble.encode")
        return EnsembleState(
            [
                member.init_state(output, beams)
                for member, output in zip(self.members, encoder_output.members, strict=True)
            ]
        )

    def decode_step(
        self, prev_tokens: Tensor, state: EnsembleState, need_attention: bool = False
    ) -> tuple[Tensor, EnsembleState, Tensor | None]:
        """One step of every member; returns the mean log-probabilities ``(B, V)`` (fp32), the
        members' new states and the first member's attention ``(B, S)`` when asked for."""
        outputs = [
            member.decode_step(prev_tokens, member_state, need_attention and index == 0)
            for index, (member, member_state) in enumerate(
                zip(self.members, state.members, strict=True)
            )
        ]  # only the first member computes attention: the others may take their fast path
        log_probs = torch.stack([logits.float().log_softmax(dim=-1) for logits, _, _ in outputs])
        attention = outputs[0][2] if need_attention else None
        states = EnsembleState([member_state for _, member_state, _ in outputs])
        return log_probs.mean(dim=0), states, attention  # (M, B, V) -> (B, V)

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced mean log-probabilities ``(B, T, V)`` (fp32) of the members."""
        log_probs = [
            member(src, src_mask, tgt_in).float().log_softmax(dim=-1)  # (B, T, V)
            for member in self.members
        ]
        return torch.stack(log_probs).mean(dim=0)  # (M, B, T, V) -> (B, T, V)

    def attention_maps(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """The first member's teacher-forced attention ``(B, L, H, T, S)``."""
        return self.members[0].attention_maps(src, src_mask, tgt_in)

    def self_attention_maps(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor
    ) -> SelfAttentionMaps | None:
        """The first member's teacher-forced self-attention (``None`` for an RNN)."""
        return self.members[0].self_attention_maps(src, src_mask, tgt_in)
