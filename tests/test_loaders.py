"""Loaders: a tokenized split as padded batches, in the calling process or in DataLoader
workers, counting only the batches handed out; step shares between processes."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from seq2seq_attn.config import DataConfig, TokenizerConfig
from seq2seq_attn.data import load_split
from seq2seq_attn.loaders import EpochBatches, iter_batches, iter_step_shares, make_sampler
from seq2seq_attn.tokenizer import PAD_ID, Tokenizer, train_tokenizer

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"


@pytest.fixture(scope="module")
def toy_tokenizer() -> Tokenizer:
    src = (TOY / "train.src").read_text(encoding="utf-8").splitlines()[:1500]
    tgt = (TOY / "train.tgt").read_text(encoding="utf-8").splitlines()[:1500]
    return train_tokenizer(src, tgt, TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def dev_split(tmp_path_factory, toy_tokenizer) -> datasets.Dataset:
    """The toy dev set (500 pairs), tokenized."""
    cache = tmp_path_factory.mktemp("loaders") / "cache"
    cfg = DataConfig(train=str(TOY / "dev"), src_lang="src", tgt_lang="tgt", cache_dir=str(cache))
    return load_split(cfg, "train", toy_tokenizer)[0]


def test_batches_from_the_toy_corpus_cover_every_pair(dev_split):
    ds = dev_split
    sampler = make_sampler(ds, max_tokens=300, seed=3)
    seen = []
    for batch in iter_batches(ds, sampler):
        assert batch.src.numel() <= 300 and batch.tgt_out.numel() <= 300
        seen += batch.indices.tolist()
        first = batch.indices[0].item()
        assert batch.src[0, : batch.src_mask[0].sum() - 1].tolist() == ds[first]["src_ids"]
    assert sorted(seen) == list(range(len(ds)))


def test_worker_processes_give_the_same_batches_and_count_only_those_handed_out(dev_split):
    ds = dev_split
    in_process = [batch.indices.tolist() for batch in iter_batches(ds, make_sampler(ds, 300))]
    sampler = make_sampler(ds, 300)
    with_workers = iter_batches(ds, sampler, num_workers=2)
    first = [next(with_workers).indices.tolist() for _ in range(3)]
    assert sampler.position == 3  # the workers have prefetched more; those do not count
    rest = [batch.indices.tolist() for batch in with_workers]
    assert first + rest == in_process
    assert (sampler.epoch, sampler.position) == (1, 0)


def test_epoch_batches_collate_only_the_rows_asked_for(dev_split):
    batches = EpochBatches(dev_split, [[4, 1], [7]])
    assert len(batches) == 2
    batch = batches[0]
    assert batch.indices.tolist() == [4, 1]
    lengths = [len(dev_split[i]["src_ids"]) for i in (4, 1)]
    assert batch.src.shape == (2, max(lengths) + 1)  # (B, T): the ids and EOS
    shorter = lengths.index(min(lengths))
    assert (batch.src[shorter, min(lengths) + 1 :] == PAD_ID).all()


def test_a_resumed_sampler_hands_out_the_rest_of_its_epoch(dev_split):
    whole = [
        batch.indices.tolist() for batch in iter_batches(dev_split, make_sampler(dev_split, 300))
    ]
    sampler = make_sampler(dev_split, 300)
    sampler.advance(5)
    assert [batch.indices.tolist() for batch in iter_batches(dev_split, sampler)] == whole[5:]


def test_step_shares_of_two_processes_together_are_the_steps_of_one(dev_split):
    one = list(iter_step_shares(dev_split, make_sampler(dev_split, 300), accumulate_steps=2))
    samplers = [make_sampler(dev_split, 300) for _ in range(2)]
    shares = [list(iter_step_shares(dev_split, s, 1, rank, 2)) for rank, s in enumerate(samplers)]
    assert len(shares[0]) == len(shares[1]) == len(one)
    for step, (mine, theirs) in zip(one, zip(*shares, strict=True), strict=True):
        real = [b for share in (mine, theirs) if not share.stand_in for b in share.batches]
        assert sorted(i for b in real for i in b.indices.tolist()) == sorted(
            i for b in step.batches for i in b.indices.tolist()
        )
    assert all((s.epoch, s.position) == (1, 0) for s in samplers)
