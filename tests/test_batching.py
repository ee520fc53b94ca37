"""Token-bucketed sampler (coverage, token limit, determinism, resuming) and padded batches."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from seq2seq_attn.batching import Batch, BatchList, TokenBatchSampler, collate, length_batches
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, PAD_ID


def random_lengths(n: int = 2000, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(1, 60) for _ in range(n)]
    return src, [max(1, s + rng.randint(-5, 8)) for s in src]


def sampler(max_tokens: int = 1000, seed: int = 0, **kwargs) -> TokenBatchSampler:
    src, tgt = random_lengths()
    return TokenBatchSampler(src, tgt, max_tokens, seed=seed, **kwargs)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_pair_exactly_once_per_epoch(shuffle):
    batches = sampler(shuffle=shuffle)
    for _ in range(3):
        seen = [index for batch in batches for index in batch]
        assert sorted(seen) == list(range(2000))
    assert batches.epoch == 3 and batches.position == 0


@pytest.mark.parametrize("max_tokens", [70, 500, 4096])  # the longest pair needs 69
def test_padded_slots_respect_the_token_limit(max_tokens):
    src, tgt = random_lengths()
    batches = TokenBatchSampler(src, tgt, max_tokens, seed=1)
    for batch in batches:
        assert len(batch) * (max(src[i] for i in batch) + 1) <= max_tokens
        assert len(batch) * (max(tgt[i] for i in batch) + 1) <= max_tokens


def test_batches_are_nearly_full_and_group_similar_lengths():
    batches = sampler(max_tokens=2000)
    assert batches.padding_efficiency() > 0.8
    random_order = TokenBatchSampler(*random_lengths(), 2000, seed=0)
    random_order.sizes = random_order.sizes[torch.randperm(2000)]  # break the length grouping
    assert batches.padding_efficiency() > random_order.padding_efficiency() + 0.1


def test_an_oversized_pair_gets_a_batch_of_its_own():
    batches = TokenBatchSampler([3, 50, 3, 3], [3, 2, 3, 3], max_tokens=20, shuffle=False)
    assert list(batches) == [[0, 2, 3], [1]]


def test_deterministic_per_seed_and_different_across_seeds_and_epochs():
    first, second, other = sampler(seed=7), sampler(seed=7), sampler(seed=8)
    assert list(first) == list(second)
    assert first.batches(0) != other.batches(0)
    assert first.batches(0) != first.batches(1)
    unshuffled = sampler(shuffle=False)
    assert unshuffled.batches(0) == unshuffled.batches(1)


@pytest.mark.parametrize("stop_after", [0, 1, 17])
def test_resumes_mid_epoch_to_the_same_batches(stop_after):
    reference = sampler(seed=5)
    expected = list(reference) + list(reference)  # epochs 0 and 1

    interrupted = sampler(seed=5)
    got = list(itertools.islice(iter(interrupted), stop_after))  # a run stopped mid-epoch
    state = json.loads(json.dumps(interrupted.state_dict()))  # plain data only
    assert (state["epoch"], state["position"], state["seed"]) == (0, stop_after, 5)

    resumed = sampler(seed=0)  # a fresh sampler; the seed comes from the state
    resumed.load_state_dict(state)
    got += list(resumed) + list(resumed)
    assert got == expected


def test_resume_refuses_other_data_or_token_limit():
    state = sampler().state_dict()
    with pytest.raises(ValueError, match="num_pairs"):
        TokenBatchSampler([1, 2], [1, 2], 1000).load_state_dict(state)
    with pytest.raises(ValueError, match="max_tokens"):
        sampler(max_tokens=999).load_state_dict(state)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="equal length"):
        TokenBatchSampler([1, 2, 3], [1, 2], 100)


def test_collate_builds_shifted_padded_tensors():
    batch = collate([[11, 12, 13], [21]], [[31, 32], [41, 42, 43, 44]], indices=[7, 3])
    assert batch.src.tolist() == [[11, 12, 13, EOS_ID], [21, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 31, 32, PAD_ID, PAD_ID], [BOS_ID, 41, 42, 43, 44]]
    assert batch.tgt_out.tolist() == [[31, 32, EOS_ID, PAD_ID, PAD_ID], [41, 42, 43, 44, EOS_ID]]
    assert batch.tgt_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.long
    assert batch.src_mask.dtype == torch.bool
    assert batch.indices.tolist() == [7, 3]
    assert (batch.num_src_tokens, batch.num_tgt_tokens) == (6, 8)
    assert (batch.size, batch.padded_slots) == (2, 18)


def test_batch_to_moves_every_tensor():
    batch = collate([[5, 6]], [[7]], indices=[0])
    moved = batch.to("meta")
    assert isinstance(moved, Batch)
    assert all(t.device.type == "meta" for t in (moved.src, moved.src_mask, moved.tgt_in))
    assert all(t.device.type == "meta" for t in (moved.tgt_out, moved.tgt_mask, moved.indices))
    assert moved.num_src_tokens == 3 and batch.src.device.type == "cpu"


def test_length_batches_respect_the_token_budget():
    lengths = [5, 2, 9, 3, 3, 12]
    batches = length_batches(lengths, max_tokens=10)
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 10
    assert batches[0] == [1, 3, 4]  # shortest first
    capped = length_batches(lengths, max_tokens=1000, max_items=2)
    assert capped == [[1, 3], [4, 0], [2, 5]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_pinned_batch_keeps_its_values():
    batch = collate([[5, 6, 7], [8]], [[9], [10, 11]], [0, 1])
    pinned = batch.pin_memory()
    assert pinned.src.is_pinned() and pinned.tgt_out.is_pinned()
    assert torch.equal(pinned.src, batch.src) and pinned.num_tgt_tokens == batch.num_tgt_tokens


def test_an_epoch_of_batches_is_one_index_tensor_with_runs():
    sizes = [3, 9, 4, 4, 7, 2, 8, 1, 5, 6]
    sampler = TokenBatchSampler(sizes, sizes, max_tokens=16, seed=3)
    epoch = sampler.batches(0)
    assert isinstance(epoch, BatchList) and epoch.order.shape == (len(sizes),)  # 8 bytes a pair
    as_lists = [epoch[i] for i in range(len(epoch))]
    assert all(isinstance(batch, list) for batch in as_lists)
    assert sorted(index for batch in as_lists for index in batch) == list(range(len(sizes)))
    assert epoch == as_lists and list(epoch) == as_lists
    assert epoch[1:3] == as_lists[1:3] and isinstance(epoch[1:3], BatchList)
    assert epoch != as_lists[:-1]
