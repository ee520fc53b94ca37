"""Token-bucketed batches: the :class:`Batch` of padded tensors, the one length-bucketing rule
(:func:`pack_sorted`) and the resumable sampler built on it.

Split from ``data.py`` (which re-exports ``Batch``, ``collate`` and ``TokenBatchSampler``) to keep
modules small and translation free of HF datasets; it needs only torch and the tokenizer's
special ids. Shapes are batch-first; masks are ``True`` = real token.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch.nn.utils.rnn import pad_sequence

from .tokenizer import BOS_ID, EOS_ID, PAD_ID

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One padded batch of B pairs (PAD=0 fills the slots after each sentence).

    ``src`` is the source ids followed by EOS; ``tgt_in`` is BOS + target (the decoder input);
    ``tgt_out`` is target + EOS (what the decoder predicts), so T = longest target + 1.
    """

    src: torch.Tensor  # (B, S) long
    src_mask: torch.Tensor  # (B, S) bool, True = real token
    tgt_in: torch.Tensor  # (B, T) long
    tgt_out: torch.Tensor  # (B, T) long
    tgt_mask: torch.Tensor  # (B, T) bool, True = real position in tgt_in / tgt_out
    indices: torch.Tensor  # (B,) long, the rows of the dataset, to restore corpus order
    num_src_tokens: int  # real source tokens, EOS included
    num_tgt_tokens: int  # real target positions to predict, EOS included

    @property
    def size(self) -> int:
        """Number of pairs B."""
        return self.src.size(0)

    @property
    def padded_slots(self) -> int:
        """Slots of ``src`` plus ``tgt_out``, padding included (B*S + B*T)."""
        return self.src.numel() + self.tgt_out.numel()

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (what a DataLoader with ``pin_memory`` calls),
        so that copies to a GPU can overlap computation."""
        pinned = {
            field.name: value.pin_memory()
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **pinned)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        moved = {
            field.name: value.to(device, non_blocking=non_blocking)
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def _padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad 1-D long tensors with PAD into (B, L)."""
    return pad_sequence(rows, batch_first=True, padding_value=PAD_ID)


def collate(
    src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], indices: Sequence[int]
) -> Batch:
    """Id lists (without BOS/EOS) of B pairs -> a padded :class:`Batch`."""
    bos, eos = torch.tensor([BOS_ID]), torch.tensor([EOS_ID])
    src_rows = [torch.cat([torch.as_tensor(ids, dtype=torch.long), eos]) for ids in src_ids]
    tgt_rows = [torch.as_tensor(ids, dtype=torch.long) for ids in tgt_ids]
    src = _padded(src_rows)  # (B, S)
    tgt_in = _padded([torch.cat([bos, row]) for row in tgt_rows])  # (B, T)
    tgt_out = _padded([torch.cat([row, eos]) for row in tgt_rows])  # (B, T)
    src_mask = src != PAD_ID
    tgt_mask = tgt_out != PAD_ID
    return Batch(
        src=src,
        src_mask=src_mask,
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        tgt_mask=tgt_mask,
        indices=torch.as_tensor(list(indices), dtype=torch.long),
        num_src_tokens=int(src_mask.sum()),
        num_tgt_tokens=int(tgt_mask.sum()),
    )


def pack_sorted(
    sizes: Sequence[int], max_tokens: int, max_items: int | None = None
) -> list[tuple[int, int]]:
    """Cut ascending ``sizes`` into ``[start, end)`` runs whose padded cost
    ``(end - start) * sizes[end - 1]`` is at most ``max_tokens`` and whose length is at most
    ``max_items`` (when given); a single larger item gets a run of its own. The one
    length-bucketing rule of the project: training batches and translation batches use it."""
    runs, start, n = [], 0, len(sizes)
    room = n if max_items is None else max_items
    while start < n:
        count = max(1, min(max_tokens // sizes[start], n - start, room))
        if count * sizes[start + count - 1] > max_tokens:  # the sizes grew inside the run
            count = max(1, max_tokens // sizes[start + count - 1])
        while (
            start + count < n and count < room and (count + 1) * sizes[start + count] <= max_tokens
        ):
            count += 1
        runs.append((start, start + count))
        start += count
    return runs


def length_batches(
    lengths: Sequence[int], max_tokens: int, max_items: int | None = None
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length (stable) and cut by :func:`pack_sorted` into
    batches of at most ``max_tokens`` padded slots and ``max_items`` items."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    runs = pack_sorted([lengths[index] for index in order], max_tokens, max_items)
    return [order[start:end] for start, end in runs]


def rank_share(
    group: Sequence[list[int]], rank: int, world_size: int
) -> tuple[Sequence[list[int]], bool]:
    """Rank ``rank``'s part of one step's ``group`` of batches, and whether it is a stand-in.

    The group is cut into ``world_size`` contiguous parts as even as possible (a full group of
    ``world_size * A`` batches gives each rank ``A``). When the epoch's last group holds fewer
    batches than ranks, a rank left without one gets the group's first batch as a stand-in: it
    runs forward and backward on it (every rank must join the gradient all-reduce, or the others
    hang) but its loss is weighted 0, so the update is the one of the real batches alone.
    """
    if not group:
        raise ValueError("rank_share: a step needs at least one batch")
    share = group[rank * len(group) // world_size : (rank + 1) * len(group) // world_size]
    return (share, False) if len(share) else (group[:1], True)


class BatchList(Sequence[list[int]]):
    """An epoch's batches of row indices, held as one index tensor and (start, end) runs into it:
    8 bytes a pair instead of a Python list per batch (a 10M-pair corpus would need gigabytes).
    Indexing gives a batch as a list of ints; slicing gives a :class:`BatchList`; it compares
    equal to a list of the same batches."""

    def __init__(self, order: torch.Tensor, runs: list[tuple[int, int]]) -> None:
        self.order, self.runs = order, runs  # (N,) row indices; half-open runs into ``order``

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.runs)

    @overload
    def __getitem__(self, key: int) -> list[int]: ...

    @overload
    def __getitem__(self, key: slice) -> BatchList: ...

    def __getitem__(self, key: int | slice) -> list[int] | BatchList:
        """Batch ``key`` (a list of row indices), or the batches of a slice."""
        if isinstance(key, slice):
            return BatchList(self.order, self.runs[key])
        start, end = self.runs[key]
        return self.order[start:end].tolist()

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same batches."""
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(
            mine == list(theirs) for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-like sequences are unhashable

    def __repr__(self) -> str:
        return f"BatchList({len(self)} batches of {len(self.order)} rows)"

    @staticmethod
    def joined(parts: Sequence[BatchList]) -> BatchList:
        """The batches of ``parts`` (slices of one :class:`BatchList`) one after the other."""
        if not parts:
            return BatchList(torch.zeros(0, dtype=torch.long), [])
        return BatchList(parts[0].order, [run for part in parts for run in part.runs])


class TokenBatchSampler:
    """Batches of row indices holding at most ``max_tokens`` padded slots.

    A pair's size is max(src_len + 1, tgt_len + 1) (EOS / BOS included) and a batch costs
    B * its largest size, so both ``src`` (B, S) and ``tgt_out`` (B, T) hold at most
    ``max_tokens`` slots. Pairs are sorted by size (ties broken randomly) so that a batch holds
    similar lengths; with ``shuffle`` the batch order is shuffled per epoch from ``seed``.
    Iterating yields the rest of the current epoch, then advances the epoch; ``state_dict`` /
    ``load_state_dict`` save and restore (epoch, position) to resume mid-epoch.
    """

    def __init__(
        self,
        src_lengths: torch.Tensor | Sequence[int],
        tgt_lengths: torch.Tensor | Sequence[int],
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        """``src_lengths``/``tgt_lengths`` are the id counts (without BOS/EOS) of each row."""
        src = torch.as_tensor(src_lengths, dtype=torch.long)
        tgt = torch.as_tensor(tgt_lengths, dtype=torch.long)
        if src.shape != tgt.shape or src.dim() != 1:
            raise ValueError(
                f"src_lengths {tuple(src.shape)} and tgt_lengths {tuple(tgt.shape)} must be "
                "1-D and of equal length (one entry per pair)"
            )
        if max_tokens < 2:
            raise ValueError(f"max_tokens={max_tokens}: use at least 2 (one token + EOS)")
        self.src_sizes, self.tgt_sizes = src + 1, tgt + 1  # (N,) slots with EOS / BOS
        self.sizes = torch.maximum(self.src_sizes, self.tgt_sizes)  # (N,)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, BatchList] | None = None
        oversized = int((self.sizes > max_tokens).sum())
        if oversized:
            logger.warning(
                "%d pairs exceed max_tokens=%d; each gets a batch", oversized, max_tokens
            )

    def batches(self, epoch: int) -> BatchList:
        """All batches of ``epoch`` in order (a pure function of seed, epoch and lengths)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) & 0xFFFF_FFFF_FFFF)
        if self.shuffle:
            perm = torch.randperm(len(self.sizes), generator=generator)
            order = perm[torch.argsort(self.sizes[perm], stable=True)]
        else:
            order = torch.argsort(self.sizes, stable=True)
        runs = pack_sorted(self.sizes[order].tolist(), self.max_tokens)
        if self.shuffle:
            runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()]
        result = BatchList(order, runs)
        self._cache = (epoch, result)
        return result

    def __len__(self) -> int:
        """Number of batches in the current epoch."""
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        """Yield the remaining batches of the current epoch, then move to the next epoch."""
        epoch_batches = self.batches(self.epoch)
        while self.position < len(epoch_batches):
            self.position += 1  # counted as handed out, so a state saved now resumes after it
            yield epoch_batches[self.position - 1]
        self.epoch, self.position = self.epoch + 1, 0

    def advance(self, count: int) -> None:
        """Count ``count`` more batches of the current epoch as handed out (what iterating does
        one batch at a time)."""
        self.position = min(self.position + count, len(self.batches(self.epoch)))

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (what iterating does after the last batch)."""
        self.epoch, self.position = self.epoch + 1, 0

    def padding_efficiency(self, epoch: int | None = None) -> float:
        """Real tokens / padded slots over all batches of ``epoch`` (default: the current one)."""
        real = padded = 0
        for indices in self.batches(self.epoch if epoch is None else epoch):
            rows = torch.as_tensor(indices)
            src_sizes, tgt_sizes = self.src_sizes[rows], self.tgt_sizes[rows]  # (B,)
            real += int(src_sizes.sum() + tgt_sizes.sum())
            padded += len(indices) * int(src_sizes.max() + tgt_sizes.max())
        return real / padded if padded else 1.0

    def state_dict(self) -> dict[str, int]:
        """Plain data to resume from: epoch, position (batches handed out), seed and checks."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "num_pairs": len(self.sizes),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume where :meth:`state_dict` was taken (same data and max_tokens required)."""
        for key, mine in (("num_pairs", len(self.sizes)), ("max_tokens", self.max_tokens)):
            if state.get(key, mine) != mine:
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {mine}; resume "
                    "with the same data and data.max_tokens as the saved run"
                )
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
