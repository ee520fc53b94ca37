"""Subword regularization (``tokenizer.sampling``): a new sampled segmentation of each training
pair every epoch, a function of (seed, epoch, pair) alone; batches within ``data.max_tokens``;
exact resume; validation and translation on the deterministic segmentation; config errors."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import pytest
import sentencepiece as spm
import torch
from test_train import Recorder, parameters, toy_config

from seq2seq_attn.batching import Batch
from seq2seq_attn.config import (
    Config,
    ConfigError,
    DataConfig,
    SubwordSamplingConfig,
    TokenizerConfig,
    config_from_plain,
)
from seq2seq_attn.data import load_pairs, load_split, texts
from seq2seq_attn.loaders import SubwordSampling, iter_step_shares, make_sampler, pair_seed
from seq2seq_attn.subword_sampling import UnigramSampler, model_type, sampler_for
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer
from seq2seq_attn.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH, MAX_TOKENS = 100, 512
Segmentations = dict[int, tuple[tuple[int, ...], tuple[int, ...]]]  # row -> (src ids, tgt ids)


def tokenized(corpus: Path, cache: Path, kind: str) -> tuple[datasets.Dataset, Tokenizer]:
    """The corpus slice's 400 training pairs, tokenized by a ``kind`` model of 100 pieces."""
    cfg = DataConfig(
        train=str(corpus / "train"), src_lang="src", tgt_lang="tgt", max_length=MAX_LENGTH,
        max_tokens=MAX_TOKENS, cache_dir=str(cache),
    )  # fmt: skip
    pairs = load_pairs(cfg, "train")
    config = TokenizerConfig(type=kind, vocab_size=100)
    tokenizer = train_tokenizer(texts(pairs, "src"), texts(pairs, "tgt"), config)
    return load_split(cfg, "train", tokenizer)[0], tokenizer


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def split(request, corpus, tmp_path_factory) -> tuple[datasets.Dataset, Tokenizer]:
    """The training pairs, tokenized by a unigram or a BPE model."""
    return tokenized(corpus, tmp_path_factory.mktemp("cache"), request.param)


@pytest.fixture(scope="module")
def unigram_split(corpus, tmp_path_factory) -> tuple[datasets.Dataset, Tokenizer]:
    """The training pairs, tokenized by a unigram model."""
    return tokenized(corpus, tmp_path_factory.mktemp("cache"), "unigram")


def sampling_of(tokenizer: Tokenizer, **limits: int) -> SubwordSampling:
    """Unigram sampling from the whole lattice, or BPE-dropout, both with alpha 0.1."""
    settings = {"max_length": MAX_LENGTH, "max_tokens": MAX_TOKENS} | limits
    return SubwordSampling(tokenizer, 0.1, -1, **settings)


def rows_of(batches: list[Batch]) -> Segmentations:
    """Each row's ids (without BOS/EOS and padding) in ``batches``."""
    rows = {}
    for batch in batches:
        for k, index in enumerate(batch.indices.tolist()):
            src = batch.src[k][batch.src_mask[k]].tolist()[:-1]  # (S_k,) without EOS
            tgt = batch.tgt_out[k][batch.tgt_mask[k]].tolist()[:-1]  # (T_k,) without EOS
            rows[index] = (tuple(src), tuple(tgt))
    return rows


def epochs_of(
    ds: datasets.Dataset, sampling: SubwordSampling, seed: int, epochs: int = 2, workers: int = 0
) -> list[Segmentations]:
    """Every row's segmentation in each of the first ``epochs`` epochs of a training sampler."""
    sampler = make_sampler(ds, MAX_TOKENS, seed=seed)
    found = []
    for _ in range(epochs):
        shares = iter_step_shares(ds, sampler, 1, num_workers=workers, sampling=sampling)
        found.append(rows_of([batch for share in shares for batch in share.batches]))
    return found


def test_each_epoch_samples_a_new_segmentation_and_the_seed_repeats_it(split):
    ds, tokenizer = split
    first, second = epochs_of(ds, sampling_of(tokenizer), seed=5)
    assert sorted(first) == sorted(second) == list(range(len(ds)))  # every pair, once an epoch
    deterministic = {i: (tuple(row["src_ids"]), tuple(row["tgt_ids"])) for i, row in enumerate(ds)}
    longest = max(range(len(ds)), key=lambda i: len(ds[i]["src"]))  # the hardest to repeat
    assert first[longest] != second[longest] != deterministic[longest]
    for side in (0, 1):  # every side a segmentation of the same sentence
        decode = tokenizer.decode_src if side == 0 else tokenizer.decode_tgt
        assert decode([first[longest][side]]) == decode([deterministic[longest][side]])
    changed = sum(first[i] != deterministic[i] for i in first)
    assert changed > len(ds) // 2  # most pairs are segmented otherwise than deterministically
    assert sum(first[i] != second[i] for i in first) > len(ds) // 2
    assert epochs_of(ds, sampling_of(tokenizer), seed=5) == [first, second]
    assert epochs_of(ds, sampling_of(tokenizer), seed=6, epochs=1)[0] != first


def test_a_pairs_segmentation_depends_on_seed_epoch_and_pair_alone(split):
    ds, tokenizer = split
    sampling = sampling_of(tokenizer)
    rows = ds.select_columns(["src", "tgt", "src_ids", "tgt_ids"])
    alone = rows_of(sampling.pieces(rows[[7]], [7], seed=1, epoch=3))
    in_a_batch = rows_of(sampling.pieces(rows[[3, 7, 11]], [3, 7, 11], seed=1, epoch=3))
    assert alone[7] == in_a_batch[7]
    assert rows_of(sampling.pieces(rows[[7]], [7], seed=1, epoch=4)) != alone
    assert (
        len({pair_seed(1, 3, 7), pair_seed(1, 4, 7), pair_seed(2, 3, 7), pair_seed(1, 3, 8)}) == 4
    )


def test_data_workers_give_the_same_sampled_batches(split):
    ds, tokenizer = split
    sampling = sampling_of(tokenizer)
    alone = epochs_of(ds, sampling, seed=2, workers=0)
    assert epochs_of(ds, sampling, seed=2, workers=2) == alone


def test_sampled_batches_keep_within_max_tokens_and_max_length(split):
    ds, tokenizer = split
    max_length, max_tokens = 30, 128
    indices = [i for i in range(len(ds)) if max(ds[i]["src_len"], ds[i]["tgt_len"]) <= max_length]
    indices = indices[:40]
    assert len(indices) == 40
    rows = ds.select_columns(["src", "tgt", "src_ids", "tgt_ids"])[indices]
    sampling = sampling_of(tokenizer, max_length=max_length, max_tokens=max_tokens)
    pieces = sampling.pieces(rows, indices, seed=0, epoch=0)
    assert all(b.src.numel() <= max_tokens and b.tgt_out.numel() <= max_tokens for b in pieces)
    found = rows_of(pieces)
    assert sorted(found) == sorted(indices)  # every pair once
    seeds = [pair_seed(0, 0, index) for index in indices]
    samples = tokenizer.sample_pairs(rows["src"], rows["tgt"], seeds, 0.1, -1)
    fallbacks = sampled = 0
    for k, index in enumerate(indices):
        for side, column in enumerate(("src_ids", "tgt_ids")):
            sample, ids = samples[side][k], rows[column][k]
            expected = tuple(sample) if len(sample) <= max_length else tuple(ids)
            assert found[index][side] == expected
            fallbacks += len(sample) > max_length
            sampled += tuple(sample) != tuple(ids) and len(sample) <= max_length
    assert fallbacks > 0 and sampled > 0  # both cases happened


def processor_of(tokenizer: Tokenizer) -> spm.SentencePieceProcessor:
    """The tokenizer's (joint) SentencePiece model."""
    return spm.SentencePieceProcessor(model_proto=tokenizer.src_model)


def test_without_noise_the_sampler_segments_as_sentencepiece(split, corpus, request):
    tokenizer = split[1]
    processor, kind = processor_of(tokenizer), model_type(tokenizer.src_model)
    assert kind == request.node.callspec.params["split"]  # read from the model's bytes
    # alpha 0 drops no merge; alpha 1000 puts all the mass on the best segmentation
    exact = sampler_for(processor, kind, 0.0 if kind == "bpe" else 1000.0, -1)
    lines = [*(corpus / "train.src").read_text().splitlines(), "Ünïcode ÄÖ  qx!", "", " "]
    rng = random.Random(0)
    assert [exact.sample(line, rng) for line in lines] == processor.encode(lines)


def test_unigram_samples_follow_the_lattice_distribution(unigram_split):
    ds, tokenizer = unigram_split
    processor, alpha = processor_of(tokenizer), 0.1
    vocabulary = {processor.id_to_piece(i): i for i in range(4, processor.get_piece_size())}

    def segmentations(text: str) -> list[list[int]]:
        if not text:
            return [[]]
        return [
            [vocabulary[text[:end]], *rest]
            for end in range(1, len(text) + 1) if text[:end] in vocabulary
            for rest in segmentations(text[end:])
        ]  # fmt: skip

    sentence = ds[0]["src"]
    candidates = segmentations(processor.normalize(sentence))
    assert len(candidates) >= 4
    weights = [math.exp(alpha * sum(processor.get_score(i) for i in c)) for c in candidates]
    sampler = UnigramSampler(processor, alpha, -1)
    draws = [tuple(sampler.sample(sentence, random.Random(seed))) for seed in range(4000)]
    for candidate, weight in zip(candidates, weights, strict=True):
        assert abs(draws.count(tuple(candidate)) / 4000 - weight / sum(weights)) < 0.025
    best = UnigramSampler(processor, alpha, 4)
    nbest = processor.nbest_encode(ds[0]["src"], nbest_size=4)
    drawn = [best.sample(ds[0]["src"], random.Random(seed)) for seed in range(50)]
    assert all(ids in nbest for ids in drawn) and len({tuple(ids) for ids in drawn}) > 1


SAMPLE_IN_A_NEW_PROCESS = """
import json, sys
from seq2seq_attn.tokenizer import Tokenizer
pairs = json.loads(sys.argv[2])
tokenizer = Tokenizer.load(sys.argv[1])
print(json.dumps(tokenizer.sample_pairs(pairs[0], pairs[1], pairs[2], 0.1, -1)))
"""


def test_the_same_seed_gives_the_same_samples_in_another_process(split, tmp_path):
    # SentencePiece's own seeded sampling repeats within a process only; a resumed run is
    # another process
    ds, tokenizer = split
    tokenizer.save(tmp_path)
    rows = ds[:20]
    pairs = [rows["src"], rows["tgt"], [pair_seed(4, 1, index) for index in range(20)]]
    script = [sys.executable, "-c", SAMPLE_IN_A_NEW_PROCESS, str(tmp_path), json.dumps(pairs)]
    other = json.loads(subprocess.run(script, capture_output=True, check=True, text=True).stdout)
    assert [list(side) for side in tokenizer.sample_pairs(*pairs, 0.1, -1)] == other


def with_sampling(config: Config, **data: int) -> Config:
    """``config`` with unigram sampling on (and ``data`` overrides)."""
    tokenizer = dataclasses.replace(
        config.tokenizer, sampling=SubwordSamplingConfig(enabled=True, alpha=0.1)
    )
    return dataclasses.replace(
        config, tokenizer=tokenizer, data=dataclasses.replace(config.data, **data)
    )


def test_training_with_sampling_resumes_exactly(corpus, tmp_path):
    # an epoch boundary lies between the interruption and the end; the parts run in workers
    plain = toy_config(corpus, max_steps=20, accumulate_steps=2, save_every=4, validate_every=0)
    config = with_sampling(plain)
    whole = Recorder()
    train(config, tmp_path / "whole", callbacks=[whole])
    stop, in_workers = threading.Event(), with_sampling(plain, num_workers=2)
    first = Recorder(stop, stop_at=7)
    train(in_workers, tmp_path / "parts", callbacks=[first], stop=stop)
    second = Recorder()
    resumed = train(in_workers, tmp_path / "parts", resume=True, callbacks=[second])
    assert resumed.epoch >= 1
    assert [r.loss for r in first.steps + second.steps] == [r.loss for r in whole.steps]
    expected, actual = (
        parameters(tmp_path / "whole" / "last.pt"),
        parameters(resumed.last_checkpoint),
    )
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_validation_and_translation_use_the_deterministic_segmentation(
    corpus, tmp_path, monkeypatch
):
    sampled: list[str] = []
    sample_pairs = Tokenizer.sample_pairs

    def recording(self, src_texts, tgt_texts, *args):
        sampled.extend(src_texts)
        return sample_pairs(self, src_texts, tgt_texts, *args)

    monkeypatch.setattr(Tokenizer, "sample_pairs", recording)
    recorder, unsampled = Recorder(), Recorder()
    config = with_sampling(toy_config(corpus, max_steps=4, validate_every=2, save_every=0))
    train(config, tmp_path / "run", callbacks=[recorder])
    assert [v.step for v in recorder.validations] == [2, 4]  # dev loss and translations
    plain = toy_config(corpus, max_steps=4, validate_every=0, save_every=0)
    train(plain, tmp_path / "plain", callbacks=[unsampled])  # the same batches, not sampled
    assert [r.tokens for r in recorder.steps] != [r.tokens for r in unsampled.steps]
    lines = {
        split: (corpus / f"{split}.src").read_text().splitlines() for split in ("train", "dev")
    }
    assert sampled and set(sampled) <= set(lines["train"])
    assert not set(sampled) & (set(lines["dev"]) - set(lines["train"]))


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [
        ({"sampling": {"alpha": 0}}, r"tokenizer\.sampling\.alpha: invalid value 0\.0; .*> 0"),
        ({"type": "bpe", "sampling": {"alpha": 1.0}}, r"tokenizer\.sampling\.alpha: .*\(0, 1\)"),
        ({"sampling": {"nbest_size": 0}}, r"tokenizer\.sampling\.nbest_size: invalid value 0"),
        ({"sampling": {"nbest_size": 1}}, r"tokenizer\.sampling\.nbest_size: .*no sampling"),
        ({"sampling": {"alhpa": 0.1}}, r"did you mean 'tokenizer\.sampling\.alpha'"),
        ({"sampling": {"enabled": "yes"}}, r"tokenizer\.sampling\.enabled: expected true or"),
    ],
)
def test_bad_sampling_settings_name_the_key(tokenizer, message):
    with pytest.raises(ConfigError, match=message):
        config_from_plain({"tokenizer": tokenizer})


def test_sampling_settings_load_with_their_defaults(tmp_path: Path):
    config = config_from_plain({"tokenizer": {"type": "bpe", "sampling": {"enabled": True}}})
    assert config.tokenizer.sampling == SubwordSamplingConfig(
        enabled=True, alpha=0.1, nbest_size=-1
    )
    assert config_from_plain({}).tokenizer.sampling.enabled is False
