"""Multi30k preparation (``seq2seq_attn.multi30k`` and its command line,
``scripts/prepare_multi30k.py``): local copies, the MULTI30K_DIR variable, a faked download."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import urllib.error
from pathlib import Path

import pytest

from seq2seq_attn import multi30k as prep

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data/multi30k")


def load_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_multi30k", ROOT / "scripts" / "prepare_multi30k.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()
LINES = {"de": ["ein Hund", "zwei Katzen"], "en": ["a dog", "two cats"], "cs": ["pes", "dvě kočky"]}


def fake_text(name: str) -> bytes:
    """A small stand-in for one raw file: two lines tagged with the file name."""
    split, lang = name.rsplit(".", 1)
    return "".join(f"{line} ({split})\n" for line in LINES.get(lang, ["x", "y"])).encode()


@pytest.fixture
def fake_release(monkeypatch):
    """Point the script's checksums at the fake files."""
    table = {name: hashlib.sha256(fake_text(name)).hexdigest() for name in prep.SHA256}
    monkeypatch.setattr(prep, "SHA256", table)


def write_release(directory: Path, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in prep.SHA256:
        data = fake_text(name)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


@pytest.mark.parametrize("compress", [True, False])
def test_from_a_local_directory_writes_plain_files(tmp_path, fake_release, compress):
    source = write_release(tmp_path / "raw", compress)
    out = tmp_path / "out"
    assert script.main(["--from", str(source), "--pair", "de-en", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 10 and "test_2017_mscoco.de" in names and "train.en" in names
    assert (out / "train.de").read_bytes() == fake_text("train.de")  # decompressed


def test_the_environment_variable_is_the_second_choice(tmp_path, fake_release, monkeypatch):
    source = write_release(tmp_path / "raw")
    monkeypatch.setenv("MULTI30K_DIR", str(source))
    assert script.main(["--pair", "cs-en", "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(
        f"{s}.{lang}" for s in ("train", "val", "test_2016_flickr") for lang in ("cs", "en")
    )


def test_the_script_falls_back_to_the_shared_copy(tmp_path, fake_release, monkeypatch):
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    monkeypatch.setattr(script, "SHARED_COPY", write_release(tmp_path / "shared"))
    assert script.main(["--pair", "de-en", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "val.en").read_bytes() == fake_text("val.en")


def test_download_through_an_opener_checks_every_file(tmp_path, fake_release):
    requested = []

    def opener(url):
        requested.append(url)
        return io.BytesIO(gzip.compress(fake_text(url.rsplit("/", 1)[1].removesuffix(".gz"))))

    written = prep.prepare("fr", "de", tmp_path, base_url="https://example.test/raw", opener=opener)
    assert len(written) == 10
    assert "https://example.test/raw/train.fr.gz" in requested and len(requested) == 10
    assert (tmp_path / "val.fr").read_bytes() == fake_text("val.fr")


def test_a_corrupted_download_is_refused_and_nothing_is_written(tmp_path, fake_release):
    def opener(url):
        return io.BytesIO(gzip.compress(b"tampered\n"))

    with pytest.raises(prep.PrepareError, match=r"train\.de\.gz: SHA-256 .* expected"):
        prep.prepare("de", "en", tmp_path, base_url="https://example.test", opener=opener)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_suggests_a_local_copy(tmp_path, fake_release):
    def opener(url):
        raise urllib.error.URLError("no network")

    with pytest.raises(prep.PrepareError, match=r"download failed.*MULTI30K_DIR=DIR"):
        prep.prepare("de", "en", tmp_path, opener=opener)


def test_misaligned_and_missing_files_and_bad_pairs(tmp_path, fake_release, monkeypatch, capsys):
    source = write_release(tmp_path / "raw")
    (source / "val.en.gz").write_bytes(gzip.compress(b"one line only\n"))
    monkeypatch.setitem(prep.SHA256, "val.en", hashlib.sha256(b"one line only\n").hexdigest())
    with pytest.raises(prep.PrepareError, match=r"val\.de has 2 lines but val\.en has 1"):
        prep.prepare("de", "en", tmp_path / "out", source)
    (source / "train.fr.gz").unlink()
    with pytest.raises(prep.PrepareError, match=r"neither train\.fr\.gz nor train\.fr"):
        prep.prepare("fr", "en", tmp_path / "out", source)
    assert script.main(["--pair", "de-de", "--from", str(source)]) == 1
    assert script.main(["--pair", "de-en", "--from", str(tmp_path / "nowhere")]) == 1
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason="no local Multi30k copy (/work/shared)")
def test_the_recorded_checksums_match_the_shared_copy():
    for name in ("val.de", "val.en", "val.fr", "val.cs"):
        assert prep.read_local(SHARED, name).count(b"\n") == 1014


def test_the_raw_files_folder_is_chosen_in_order(tmp_path, monkeypatch):
    explicit, variable, fallback = (tmp_path / name for name in ("explicit", "variable", "shared"))
    for folder in (explicit, variable, fallback):
        folder.mkdir()
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    assert prep.source_dir(None, tmp_path / "absent") is None  # nothing local: download
    assert prep.source_dir(None, fallback) == fallback
    monkeypatch.setenv("MULTI30K_DIR", str(variable))
    assert prep.source_dir(None, fallback) == variable
    assert prep.source_dir(explicit, fallback) == explicit
    monkeypatch.setenv("MULTI30K_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(prep.PrepareError, match=r"MULTI30K_DIR=.*nowhere: not a directory"):
        prep.source_dir(None, fallback)
