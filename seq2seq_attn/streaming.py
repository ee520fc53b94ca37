"""Beam search that sentences join while it runs (iteration-level scheduling).

:func:`~seq2seq_attn.decoding.beam_search` takes a batch and runs until its last sentence is
done: a sentence that arrives meanwhile waits for the whole search, and as sentences finish the
search goes on with fewer and fewer rows while every step still costs its fixed part (streaming
the decoder's weights, launching its operations). :class:`StreamingSearch` is the same search
(the same :func:`~seq2seq_attn.decoding.beam_step`, so the same hypotheses) with a door: between
two steps, :meth:`StreamingSearch.add` encodes new sentences and joins their first beams to the
live ones (``DecoderState.join``: each row goes on as it would alone), and
:meth:`StreamingSearch.step` hands back every sentence finished by that step. A server keeps
the search full of work this way instead of waiting for batches to drain.

Sentences are keyed by the order they were added (0, 1, ...). Prefixes, constraints, sampling
and attention records are not streamed: those searches take whole batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DecodeConfig
from .decoding import Beams, Hypothesis, beam_step, best_first, output_limits
from .models.common import Seq2Seq, pad_to


class StreamingSearch:
    """A running beam search (beam size ``decode.beam_size``, 1: greedy) over ``model`` in eval
    mode; the caller holds any autocast around :meth:`add` and :meth:`step`."""

    def __init__(self, model: Seq2Seq, decode: DecodeConfig, bos_id: int, eos_id: int) -> None:
        self.model = model
        self.decode = decode
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.beams: Beams | None = None  # the live sentences, None when there are none
        self.finished: dict[int, list[Hypothesis]] = {}  # by key, for the live sentences
        self.added = 0  # sentences added so far: the next key

    @property
    def live(self) -> int:
        """Sentences added and not finished yet."""
        return len(self.finished)

    @torch.no_grad()  # (see decoding.greedy_search)
    def add(self, src: Tensor, src_mask: Tensor) -> list[int]:
        """Encode a ``(B, S)`` batch and let its sentences join the search at the next step;
        returns their keys, in batch order."""
        first = self.added
        limits = output_limits(src_mask, self.decode, self.model.max_positions)  # (B,)
        joining = Beams.start(
            self.model, src, src_mask, limits, first, self.bos_id, self.decode, expanded=True
        )  # a running search's rows: K a sentence
        self.beams = joining if self.beams is None else join_beams(self.beams, joining)
        keys = list(range(first, first + src.size(0)))
        self.finished.update((key, []) for key in keys)
        self.added += len(keys)
        return keys

    @torch.no_grad()
    def step(self) -> list[tuple[int, list[Hypothesis]]]:
        """Advance every live sentence by one token; the sentences that this step finished,
        as ``(key, their decode.n_best hypotheses, best first)``, in key order."""
        if self.beams is None:
            return []
        beams = beam_step(self.model, self.beams, None, self.eos_id, self.decode, self.finished)
        alive = set() if beams is None else set(beams.sentences.tolist())
        if beams is not None and len(alive) < len(self.finished):  # drop unread history
            beams.tokens = beams.tokens[:, beams.tokens.size(1) - int(beams.steps.max()) :]
        self.beams = beams
        done = [key for key in self.finished if key not in alive]  # (the keys live before)
        return [(key, best_first(self.finished.pop(key), self.decode.n_best)) for key in done]


def join_beams(live: Beams, joining: Beams) -> Beams:
    """The sentences of ``live`` then those of ``joining`` in one set of beams: the shorter
    token history is padded in front (``Beams`` reads each row's last ``steps`` tokens)."""
    width = max(live.tokens.size(1), joining.tokens.size(1))  # (step() keeps it to the longest)
    return Beams(
        sentences=torch.cat([live.sentences, joining.sentences]),
        scores=torch.cat([live.scores, joining.scores]),
        tokens=torch.cat([pad_to(b.tokens, 1, width, front=True) for b in (live, joining)]),
        attention=None,
        prev_tokens=torch.cat([live.prev_tokens, joining.prev_tokens]),
        state=live.state.join(joining.state),
        limits=torch.cat([live.limits, joining.limits]),
        steps=torch.cat([live.steps, joining.steps]),
    )
