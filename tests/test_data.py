"""Loading parallel corpora: plain/gzip/TSV/JSONL/hub sources, bad input, filtering, caching."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from seq2seq_attn.config import ConfigError, DataConfig, TokenizerConfig
from seq2seq_attn.corpus import count_lines
from seq2seq_attn.data import (
    LARGE_SPLIT,
    DataError,
    load_pairs,
    load_split,
    texts,
    tokenizing_processes,
)
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toy"
PAIRS = [("ein Hund", "a dog"), ("zwei Katzen", "two cats"), ("drei Mäuse", "three mice")]


def write_plain(directory: Path, pairs, compress: bool = False, name: str = "train") -> str:
    """Write ``{name}.de``/``{name}.en`` (gzipped when ``compress``); return the prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, lang in enumerate(("de", "en")):
        data = "".join(pair[index] + "\n" for pair in pairs).encode("utf-8")
        if compress:
            (directory / f"{name}.{lang}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / f"{name}.{lang}").write_bytes(data)
    return str(directory / name)


def plain_cfg(tmp_path: Path, prefix: str, **kwargs) -> DataConfig:
    return DataConfig(train=prefix, cache_dir=str(tmp_path / "cache"), **kwargs)


def rows(ds: datasets.Dataset) -> list[tuple[str, str]]:
    return list(zip(ds["src"], ds["tgt"], strict=True))


@pytest.fixture(scope="module")
def toy_tokenizer() -> Tokenizer:
    src = (TOY / "train.src").read_text(encoding="utf-8").splitlines()[:1500]
    tgt = (TOY / "train.tgt").read_text(encoding="utf-8").splitlines()[:1500]
    return train_tokenizer(
        [*src, "ein Hund zwei Katzen drei Mäuse"], tgt, TokenizerConfig(vocab_size=400)
    )


@pytest.mark.parametrize("compress", [False, True])
def test_plain_files_plain_or_gzipped(tmp_path, compress):
    prefix = write_plain(tmp_path / "corpus", PAIRS, compress)
    ds = load_pairs(plain_cfg(tmp_path, prefix), "train")
    assert ds.column_names == ["src", "tgt"]
    assert rows(ds) == PAIRS


def test_crlf_line_endings_and_a_missing_final_newline(tmp_path):
    (tmp_path / "c.de").write_bytes(b"eins\r\nzwei")
    (tmp_path / "c.en").write_bytes(b"one\r\ntwo\r\n")
    assert count_lines(tmp_path / "c.de") == count_lines(tmp_path / "c.en") == 2
    ds = load_pairs(plain_cfg(tmp_path, str(tmp_path / "c")), "train")
    assert rows(ds) == [("eins", "one"), ("zwei", "two")]


def test_different_line_counts_name_both_files_and_counts(tmp_path):
    prefix = write_plain(tmp_path, PAIRS)
    (tmp_path / "train.en").write_text("a dog\ntwo cats\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_pairs(plain_cfg(tmp_path, prefix), "train")
    message = str(error.value)
    assert "train.de has 3 lines" in message and "train.en has 2" in message


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    prefix = write_plain(tmp_path, PAIRS)
    (tmp_path / "train.en").write_bytes(b"a dog\ntwo cats\nthree m\xe4use\n")
    with pytest.raises(DataError, match=r"train\.en:3: not valid UTF-8"):
        load_pairs(plain_cfg(tmp_path, prefix), "train")


def test_a_missing_file_is_named_with_the_available_ones(tmp_path):
    prefix = write_plain(tmp_path, PAIRS)
    with pytest.raises(DataError, match=r"train\.fr: no such file.*train\.de, train\.en"):
        load_pairs(plain_cfg(tmp_path, prefix, tgt_lang="fr"), "train")
    with pytest.raises(DataError, match=r"data\.dev is empty"):
        load_pairs(plain_cfg(tmp_path, prefix, dev=""), "dev")


def test_tsv_with_configured_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    lines = ["id\tgerman\tenglish"] + [f"{i}\t{de}\t{en}" for i, (de, en) in enumerate(PAIRS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DataConfig(
        kind="tsv", train=str(path), src_column="german", tgt_column="english",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert rows(load_pairs(cfg, "train")) == PAIRS
    with pytest.raises(DataError, match=r"no column 'deutsch'.*\['id', 'german', 'english'\]"):
        load_pairs(DataConfig(**{**vars(cfg), "src_column": "deutsch"}), "train")
    path.write_text(lines[0] + "\n" + lines[1] + "\n1\tzu\tviele\tfelder\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.tsv:3: 4 tab-separated fields"):
        load_pairs(cfg, "train")


def test_jsonl_with_configured_columns(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"de": de, "en": en, "n": 1}, ensure_ascii=False) for de, en in PAIRS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DataConfig(
        kind="jsonl", train=str(path), src_column="de", tgt_column="en",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert rows(load_pairs(cfg, "train")) == PAIRS
    with pytest.raises(DataError, match=r"no column 'fr'.*\['de', 'en', 'n'\]"):
        load_pairs(DataConfig(**{**vars(cfg), "tgt_column": "fr"}), "train")
    path.write_text(lines[0] + '\n{"de": "nur deutsch"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: no column 'en'"):
        load_pairs(cfg, "train")
    path.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: invalid JSON"):
        load_pairs(cfg, "train")


def test_hub_path_through_load_dataset_with_a_translation_column(tmp_path):
    """The code users run for a hub name, on a local dataset directory (no network here)."""
    hub_dir = tmp_path / "hub_dataset"
    hub_dir.mkdir()
    table = {"translation": [{"de": de, "en": en, "fr": "x"} for de, en in PAIRS]}
    datasets.Dataset.from_dict(table).to_parquet(str(hub_dir / "train.parquet"))
    cfg = DataConfig(
        kind="hub", hub_name=str(hub_dir), train="train", dev="validation", test="test",
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert rows(load_pairs(cfg, "train")) == PAIRS
    with pytest.raises(DataError, match=r"no language 'cs'.*\['de', 'en', 'fr'\]"):
        load_pairs(DataConfig(**{**vars(cfg), "tgt_lang": "cs"}), "train")


def test_hub_path_from_save_to_disk_with_two_language_columns(tmp_path):
    table = {"de": [p[0] for p in PAIRS], "en": [p[1] for p in PAIRS], "score": [1, 2, 3]}
    splits = {"train": datasets.Dataset.from_dict(table)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(
        kind="hub", hub_name=str(tmp_path / "saved"), src_column="de", tgt_column="en",
        train="train", dev="validation", test="", cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert rows(load_pairs(cfg, "train")) == PAIRS
    with pytest.raises(DataError, match=r"no split 'validation'.*\['train'\]"):
        load_pairs(cfg, "dev")
    with pytest.raises(DataError, match=r"no column 'german'.*\['de', 'en', 'score'\]"):
        load_pairs(DataConfig(**{**vars(cfg), "src_column": "german"}), "train")


def test_empty_and_long_pairs_are_dropped_counted_and_never_misaligned(tmp_path, toy_tokenizer):
    src = (TOY / "dev.src").read_text(encoding="utf-8").splitlines()[:6]
    tgt = (TOY / "dev.tgt").read_text(encoding="utf-8").splitlines()[:6]
    pairs = list(zip(src, tgt, strict=True))
    pairs[1] = ("", "lonely target")
    pairs[3] = ("  ", "")
    pairs[4] = (" ".join([pairs[4][0]] * 10), pairs[4][1])
    kept_pairs = [pairs[0], pairs[2], pairs[5]]
    longest = max(len(ids) for ids in toy_tokenizer.encode_src([p[0] for p in kept_pairs]))
    longest = max([longest, *map(len, toy_tokenizer.encode_tgt([p[1] for p in kept_pairs]))])
    assert len(toy_tokenizer.encode_src([pairs[4][0]])[0]) > longest
    cfg = plain_cfg(tmp_path, write_plain(tmp_path, pairs), max_length=longest)
    ds, report = load_split(cfg, "train", toy_tokenizer)
    assert (report.total, report.empty, report.too_long, report.kept) == (6, 2, 1, 3)
    assert rows(ds) == kept_pairs
    assert toy_tokenizer.decode_src(ds["src_ids"]) == [p[0] for p in kept_pairs]
    assert toy_tokenizer.decode_tgt(ds["tgt_ids"]) == [p[1] for p in kept_pairs]
    dev, dev_report = load_split(
        DataConfig(**{**vars(cfg), "dev": cfg.train}), "dev", toy_tokenizer
    )
    assert dev_report.too_long == 0 and len(dev) == 4  # no length filter outside train


def counting_tokenizer(tokenizer: Tokenizer, calls: list[int]) -> Tokenizer:
    """``tokenizer``'s model, appending the size of each batch of sources it encodes to
    ``calls``."""

    class CountingTokenizer(Tokenizer):
        def encode_src(self, texts):
            calls.append(len(texts))
            return super().encode_src(texts)

    return CountingTokenizer(tokenizer.src_model)


def test_second_load_skips_tokenization(tmp_path, toy_tokenizer, monkeypatch):
    calls: list[int] = []
    counting = counting_tokenizer(toy_tokenizer, calls)
    cfg = DataConfig(
        train=str(TOY / "train"), src_lang="src", tgt_lang="tgt", max_length=50,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    first, _ = load_split(cfg, "train", counting)
    assert sum(calls) == 5000
    cached = sorted(p.name for p in (tmp_path / "cache" / "processed").iterdir())
    second, _ = load_split(cfg, "train", counting)
    assert sum(calls) == 5000, "the second load tokenized again"
    assert sorted(p.name for p in (tmp_path / "cache" / "processed").iterdir()) == cached
    assert second["src_ids"][:5] == first["src_ids"][:5]
    other = train_tokenizer(
        texts(first, "src"), texts(first, "tgt"), TokenizerConfig(vocab_size=300)
    )
    third, _ = load_split(cfg, "train", other)
    assert third["src_ids"][:5] == other.encode_src(first["src"][:5])  # new tokenizer, new cache


def test_a_changed_file_is_read_again(tmp_path):
    prefix = write_plain(tmp_path, PAIRS)
    cfg = plain_cfg(tmp_path, prefix)
    assert len(load_pairs(cfg, "train")) == 3
    write_plain(tmp_path, PAIRS[:2])
    assert rows(load_pairs(cfg, "train")) == PAIRS[:2]


def test_toy_corpus_regenerates_byte_for_byte(tmp_path):
    script = ROOT / "scripts" / "make_toy_corpus.py"
    subprocess.run([sys.executable, script, "--out", tmp_path], check=True, capture_output=True)
    names = sorted(p.name for p in TOY.iterdir() if p.suffix in (".src", ".tgt"))
    assert names == sorted(
        f"{s}.{side}" for s in ("train", "dev", "test") for side in ("src", "tgt")
    )
    for name in names:
        assert (tmp_path / name).read_bytes() == (TOY / name).read_bytes(), name


def test_toy_corpus_has_the_promised_shape():
    src = (TOY / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (TOY / "train.tgt").read_text(encoding="utf-8").splitlines()
    assert len(src) == len(tgt) == 5000
    lengths = [len(line.split()) for line in src]
    assert min(lengths) == 3 and max(lengths) <= 15
    assert all(len(s.split()) == len(t.split()) for s, t in zip(src, tgt, strict=True))
    reordered = sum(s.split()[-1] != s.split()[1] for s in src)  # the verb is not kept in place
    assert 200 < len({w for line in src for w in line.split()}) < 400
    assert reordered > 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "csv"}, "data.kind"),
        ({"max_length": 0}, "data.max_length"),
        ({"max_tokens": 50, "max_length": 100}, "data.max_tokens"),
        ({"tgt_lang": "de"}, "data.tgt_lang"),
        ({"kind": "hub", "hub_name": "wmt14", "train": "train"}, "data.dev"),
        ({"kind": "hub", "train": "train", "dev": "", "test": ""}, "data.hub_name"),
        ({"src_column": "tgt"}, "data.src_column"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DataConfig(**kwargs)


def test_two_tokenizing_processes_cache_what_one_does_and_reuse_it(tmp_path, toy_tokenizer):
    config = {"train": str(TOY / "train"), "src_lang": "src", "tgt_lang": "tgt", "max_length": 20}
    one, one_report = load_split(
        DataConfig(**config, cache_dir=str(tmp_path / "one"), num_proc=1), "train", toy_tokenizer
    )
    two_cfg = DataConfig(**config, cache_dir=str(tmp_path / "two"), num_proc=2)
    two, two_report = load_split(two_cfg, "train", toy_tokenizer)
    assert (two_report.kept, two_report.too_long) == (one_report.kept, one_report.too_long)
    assert two[:] == one[:]
    processed = tmp_path / "two" / "processed"
    shards = sorted(path.name for path in processed.iterdir())
    assert any(name.endswith("_00001_of_00002.arrow") for name in shards)  # two processes ran
    again, _ = load_split(two_cfg, "train", toy_tokenizer)
    assert sorted(path.name for path in processed.iterdir()) == shards  # reused, not rebuilt
    assert again[:] == one[:]


def test_large_splits_are_tokenized_on_every_core():
    assert tokenizing_processes(3, 10) == 3  # asked for
    assert tokenizing_processes(0, LARGE_SPLIT - 1) == 1
    assert tokenizing_processes(0, LARGE_SPLIT) == len(os.sched_getaffinity(0))


def test_a_cache_built_by_other_process_counts_is_reused(tmp_path, toy_tokenizer):
    config = {"train": str(TOY / "train"), "src_lang": "src", "tgt_lang": "tgt", "max_length": 20}
    cache = str(tmp_path / "cache")
    two, _ = load_split(DataConfig(**config, cache_dir=cache, num_proc=2), "train", toy_tokenizer)
    processed = tmp_path / "cache" / "processed"
    built = sorted(path.name for path in processed.iterdir())
    for count in (1, 3):  # another machine, or other cores
        again, _ = load_split(
            DataConfig(**config, cache_dir=cache, num_proc=count), "train", toy_tokenizer
        )
        assert sorted(path.name for path in processed.iterdir()) == built
        assert again[:] == two[:]


def test_the_cache_is_keyed_on_content_not_size_and_mtime(tmp_path, toy_tokenizer):
    calls: list[int] = []
    counting = counting_tokenizer(toy_tokenizer, calls)
    prefix = write_plain(tmp_path / "corpus", PAIRS)
    cfg = plain_cfg(tmp_path, prefix)
    first, _ = load_split(cfg, "train", counting)
    files = [Path(f"{prefix}.{lang}") for lang in ("de", "en")]
    before = [path.stat() for path in files]
    edited = [("ein Mond", "a cat"), *PAIRS[1:]]  # the same sizes: Hund -> Mond, dog -> cat
    write_plain(tmp_path / "corpus", edited)
    for path, stat in zip(files, before, strict=True):
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `touch -r` would
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second, _ = load_split(cfg, "train", counting)
    assert rows(second) == edited and sum(calls) == 6, "the stale cache was reused"
    assert second["src_ids"] == toy_tokenizer.encode_src([src for src, _ in edited])
    assert second["src_ids"][0] != first["src_ids"][0]
    third, _ = load_split(cfg, "train", counting)  # unchanged content: the cache is used
    assert sum(calls) == 6 and third["src_ids"] == second["src_ids"]
