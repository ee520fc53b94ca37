"""Loaders: a tokenized dataset (:func:`~seq2seq_attn.data.load_split`) as epochs of padded
batches, for one process or cut into step shares between processes.

:func:`make_sampler` builds the resumable :class:`~seq2seq_attn.batching.TokenBatchSampler` over
a dataset's lengths; :func:`iter_batches` hands out the rest of its epoch batch by batch (what
validation and the benchmarks use), :func:`iter_step_shares` one optimisation step at a time
for process ``rank`` of ``world_size`` (what training uses). Either collates in the calling
process or ahead of time in ``DataLoader`` worker processes; only the batches handed out count
as read, so a checkpoint records the batches trained on.

With :class:`SubwordSampling` (``tokenizer.sampling``, training only) each batch's pairs are
re-encoded from their text with a sampled segmentation, a new one every epoch; a batch then
comes as one or more padded pieces (one step trains on all of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batching import Batch, BatchList, TokenBatchSampler, collate, length_batches, rank_share
from .stop_signals import blocked_stop_signals, ignore_stop_signals
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    import datasets

__all__ = [
    "EpochBatches",
    "SampledEpochBatches",
    "StepShare",
    "SubwordSampling",
    "iter_batches",
    "iter_step_shares",
    "make_sampler",
    "pair_seed",
]


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


def pair_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of row ``index``'s sampled segmentation in ``epoch`` of a run seeded ``seed``:
    a 64-bit hash of the three."""
    digest = hashlib.blake2b(f"{seed} {epoch} {index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class SubwordSampling:
    """Subword regularization of training batches (``tokenizer.sampling``).

    Each pair of a batch is re-encoded from its text with a segmentation sampled from
    :func:`pair_seed` (run seed, epoch, row): the same in any process, worker or batch. A side
    whose sample has more than ``max_length`` ids keeps its deterministic ids (never cut: a
    truncated target would teach the model to stop early). The batch was bucketed by the
    deterministic lengths, and samples are usually longer, so its pairs are re-bucketed by
    their sampled sizes into pieces of at most ``max_tokens`` padded slots each.
    """

    tokenizer: Tokenizer
    alpha: float
    nbest_size: int
    max_length: int
    max_tokens: int

    def pieces(
        self, rows: dict[str, list], indices: list[int], seed: int, epoch: int
    ) -> list[Batch]:
        """The pairs ``rows`` (columns ``src``/``tgt`` and ``src_ids``/``tgt_ids``) of dataset
        rows ``indices``, sampled for ``epoch`` and collated into padded pieces."""
        seeds = [pair_seed(seed, epoch, index) for index in indices]
        src_samples, tgt_samples = self.tokenizer.sample_pairs(
            rows["src"], rows["tgt"], seeds, self.alpha, self.nbest_size
        )
        src_ids = self._within_length(src_samples, rows["src_ids"])
        tgt_ids = self._within_length(tgt_samples, rows["tgt_ids"])
        sizes = [max(len(src), len(tgt)) + 1 for src, tgt in zip(src_ids, tgt_ids, strict=True)]
        return [
            collate(
                [src_ids[k] for k in part], [tgt_ids[k] for k in part], [indices[k] for k in part]
            )
            for part in length_batches(sizes, self.max_tokens)
        ]

    def _within_length(
        self, samples: list[list[int]], deterministic: list[list[int]]
    ) -> list[list[int]]:
        """Each sample, or the deterministic ids where the sample exceeds ``max_length``."""
        return [
            sample if len(sample) <= self.max_length else ids
            for sample, ids in zip(samples, deterministic, strict=True)
        ]


class SampledEpochBatches(torch.utils.data.Dataset):
    """Batches of row indices of a tokenized dataset, each re-encoded with sampled
    segmentations for ``epoch`` and collated on request into padded pieces
    (:class:`SubwordSampling`); ``seed`` is the run's (the sampler's) seed."""

    def __init__(
        self,
        ds: datasets.Dataset,
        batches: Sequence[list[int]],
        sampling: SubwordSampling,
        seed: int,
        epoch: int,
    ) -> None:
        self.rows = ds.select_columns(["src", "tgt", "src_ids", "tgt_ids"])
        self.batches, self.sampling, self.seed, self.epoch = batches, sampling, seed, epoch

    def __len__(self) -> int:
        """Number of batches."""
        return len(self.batches)

    def __getitem__(self, index: int) -> list[Batch]:
        """Batch ``index`` as padded pieces; only its rows are read from the Arrow files."""
        indices = self.batches[index]
        return self.sampling.pieces(self.rows[indices], indices, self.seed, self.epoch)


def _as_is(batch: Batch | list[Batch]) -> Batch | list[Batch]:
    """The DataLoader's collate function: batches are collated by the dataset."""
    return batch


def _pieces(item: Batch | list[Batch]) -> list[Batch]:
    """One collated batch as a list of padded pieces."""
    return item if isinstance(item, list) else [item]


def _collated(
    ds: datasets.Dataset,
    batches: Sequence[list[int]],
    num_workers: int,
    pin_memory: bool,
    sampler: TokenBatchSampler,
    worker_seed: int,
    sampling: SubwordSampling | None,
) -> Iterator[list[Batch]]:
    """``batches`` (row indices) of the sampler's current epoch, in order, each as its padded
    pieces (one, unless ``sampling``): collated here, or ahead of time in ``num_workers``
    DataLoader worker processes. The workers draw their seed from a generator of their own
    (``worker_seed``), never from torch's global one (which would shift dropout masks with
    every new loader)."""
    epoch_batches: torch.utils.data.Dataset = (
        EpochBatches(ds, batches)
        if sampling is None
        else SampledEpochBatches(ds, batches, sampling, sampler.seed, sampler.epoch)
    )
    if num_workers == 0:
        return (_pieces(epoch_batches[i]) for i in range(len(batches)))
    loader = torch.utils.data.DataLoader(
        epoch_batches, batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(worker_seed),
        worker_init_fn=ignore_stop_signals,  # a signal to the process group: the main one stops
    )  # fmt: skip
    with blocked_stop_signals():  # the workers are forked now, and ignore them from birth
        batches = iter(loader)
    return (_pieces(item) for item in batches)


def iter_batches(
    ds: datasets.Dataset,
    sampler: TokenBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """The rest of the sampler's current epoch as padded batches, in its order.

    With ``num_workers`` > 0, DataLoader worker processes collate the batches ahead of time;
    the sampler still advances only as batches are handed to the caller, so a checkpoint taken
    between two batches records the batches trained on, not the ones prefetched.
    """
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    produced = _collated(ds, remaining, num_workers, pin_memory, sampler, sampler.seed, None)
    for _handed_out, pieces in zip(sampler, produced, strict=True):  # the sampler counts them
        yield from pieces  # one piece: no sampling


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
    sampling: SubwordSampling | None = None,
) -> Iterator[StepShare]:
    """The rest of the sampler's current epoch, one optimisation step at a time, for process
    ``rank`` of ``world_size``.

    Each step takes the next ``accumulate_steps * world_size`` batches of the epoch (the last
    step of an epoch takes what is left) and :func:`~seq2seq_attn.batching.rank_share` cuts them
    between the processes, so every process runs the same number of steps per epoch and N
    processes train on exactly the batches one process accumulating N times as many would.
    The sampler's position counts the batches of the steps handed out, on every rank alike (a
    checkpoint records the batches trained on, not the ones prefetched by workers); it moves
    to the next epoch when the caller asks for a step past the last one. With ``sampling``
    (subword regularization) a batch may come as several pieces, all in the same step.
    """
    group_size = accumulate_steps * world_size
    remaining = sampler.batches(sampler.epoch)[sampler.position :]
    groups = [
        remaining[start : start + group_size] for start in range(0, len(remaining), group_size)
    ]
    shares = [rank_share(group, rank, world_size) for group in groups]
    mine = BatchList.joined([share for share, _ in shares])  # no Python list per pair
    produced = _collated(ds, mine, num_workers, pin_memory, sampler, sampler.seed + rank, sampling)
    for group, (share, stand_in) in zip(groups, shares, strict=True):
        batches = [piece for _ in share for piece in next(produced)]
        sampler.advance(len(group))
        yield StepShare(batches, stand_in)
    sampler.next_epoch()
