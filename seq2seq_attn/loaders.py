"""Loaders: a tokenized dataset (:func:`~seq2seq_attn.data.load_split`) as epochs of padded
batches, for one process or cut into step shares between processes.

:func:`make_sampler` builds the resumable :class:`~seq2seq_attn.batching.TokenBatchSampler` over
a dataset's lengths; :func:`iter_batches` hands out the rest of its epoch batch by batch (what
validation and the benchmarks use), :func:`iter_step_shares` one optimisation step at a time
for process ``rank`` of ``world_size`` (what training uses). Either collates in the calling
process or ahead of time in ``DataLoader`` worker processes; only the batches handed out count
as read, so a checkpoint records the batches trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batching import Batch, BatchList, TokenBatchSampler, collate, rank_share

if TYPE_CHECKING:
    import datasets

__all__ = ["EpochBatches", "StepShare", "iter_batches", "iter_step_shares", "make_sampler"]


def make_sampler(
    ds: datasets.Dataset, max_tokens: int, *, shuffle: bool = True, seed: int = 0
) -> TokenBatchSampler:
    """A :class:`TokenBatchSampler` over a split from :func:`~seq2seq_attn.data.load_split`."""
    columns = ds.select_columns(["src_len", "tgt_len"]).with_format("torch")
    # In chunks: one ds[:] through a filter's indices mapping copies far more than two columns.
    chunks = list(columns.iter(batch_size=65_536))
    src_lengths, tgt_lengths = (
        torch.cat([chunk[name] for chunk in chunks]) if chunks else torch.zeros(0, dtype=torch.long)
        for name in ("src_len", "tgt_len")
    )
    return TokenBatchSampler(src_lengths, tgt_lengths, max_tokens, shuffle=shuffle, seed=seed)


class EpochBatches(torch.utils.data.Dataset):
    """Batches of row indices of a tokenized dataset, collated on request (in a DataLoader
    worker, or in the calling process)."""

    def __init__(self, ds: datasets.Dataset, batches: Sequence[list[int]]) -> None:
        self.ids = ds.select_columns(["src_ids", "tgt_ids"])
        self.batches = batches

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.batches)

    def __getitem__(self, index: int) -> Batch:
        """Batch ``index``, padded; only its rows are read from the Arrow files."""
        indices = self.batches[index]
        rows = self.ids[indices]
        return collate(rows["src_ids"], rows["tgt_ids"], indices)


def _as_is(batch: Batch) -> Batch:
    """The DataLoader's collate function: batches are collated by :class:`EpochBatches`."""
    return batch


def _collated(
    ds: datasets.Dataset,
    batches: Sequence[list[int]],
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> Iterator[Batch]:
    """``batches`` (row indices) as padded batches, in order: collated here, or ahead of time in
    ``num_workers`` DataLoader worker processes. The workers draw their seed from a generator of
    their own, never from torch's global one (which would shift dropout masks with every new
    loader)."""
    epoch_batches = EpochBatches(ds, batches)
    if num_workers == 0:
        return (epoch_batches[i] for i in range(len(epoch_batches)))
    loader = torch.utils.data.DataLoader(
        epoch_batches, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return iter(loader)


def iter_batches(
    ds: datasets.Dataset, sampler: TokenBatchSampler, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[Batch]:
    """The rest of the sampler's current epoch as padded batches, in its order.

    With ``num_workers`` > 0, DataLoader worker processes collate the batches ahead of time;
    the sampler still advances only as batches are handed to the caller, so a checkpoint taken
    between two batches records the batches trained on, not the ones prefetched.
    """
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    produced = _collated(ds, remaining, num_workers, pin_memory, sampler.seed)
    for _handed_out, batch in zip(sampler, produced, strict=True):  # the sampler counts them
        yield batch


@dataclass
class StepShare:
    """One process's batches for one optimisation step."""

    batches: list[Batch]
    stand_in: bool  # the batches only keep this process in step: their loss is weighted 0


def iter_step_shares(
    ds: datasets.Dataset,
    sampler: TokenBatchSampler,
    accumulate_steps: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[StepShare]:
    """The rest of the sampler's current epoch, one optimisation step at a time, for process
    ``rank`` of ``world_size``.

    Each step takes the next ``accumulate_steps * world_size`` batches of the epoch (the last
    step of an epoch takes what is left) and :func:`~seq2seq_attn.batching.rank_share` cuts them
    between the processes, so every process runs the same number of steps per epoch and N
    processes train on exactly the batches one process accumulating N times as many would.
    The sampler's position counts the batches of the steps handed out, on every rank alike (a
    checkpoint records the batches trained on, not the ones prefetched by workers); it moves
    to the next epoch when the caller asks for a step past the last one.
    """
    group_size = accumulate_steps * world_size
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    groups = [
        remaining[start : start + group_size] for start in range(0, len(remaining), group_size)
    ]
    shares = [rank_share(group, rank, world_size) for group in groups]
    mine = BatchList.joined([share for share, _ in shares])  # no Python list per pair
    produced = _collated(ds, mine, num_workers, pin_memory, sampler.seed + rank)
    for group, (share, stand_in) in zip(groups, shares, strict=True):
        batches = [next(produced) for _ in share]
        sampler.advance(len(group))
        yield StepShare(batches, stand_in)
    sampler.next_epoch()
