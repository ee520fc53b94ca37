"""The translation protocol: one opener for checkpoints, run directories and exported folders,
one settings type whose decode fields override the model's, one error type."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from seq2seq_attn.checkpoint import save_checkpoint
from seq2seq_attn.config import Config, DecodeConfig, ModelConfig, TokenizerConfig, to_plain
from seq2seq_attn.config import TransformerConfig as TfConfig
from seq2seq_attn.models import build_model
from seq2seq_attn.tokenizer import train_tokenizer
from seq2seq_attn.translation import (
    TranslationError,
    TranslationSettings,
    Translator,
    open_translator,
    torch_backend,
)
from seq2seq_attn.translation.torch_backend import TorchTranslator

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = TranslationSettings(device="cpu")
MODEL_DECODE = DecodeConfig(beam_size=3, length_penalty=1.0, max_length_offset=4)


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory):
    """A run directory holding the ``best.pt`` of an untrained tiny Transformer."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    tokenizer = train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60))
    small = TfConfig(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=1, ff_size=48)
    config = Config(model=ModelConfig(max_positions=128, transformer=small), decode=MODEL_DECODE)
    torch.manual_seed(0)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, True)
    run_dir = tmp_path_factory.mktemp("run")
    state = {"config": to_plain(config), "tokenizer": tokenizer.state_dict(),
             "model": model.state_dict()}  # fmt: skip
    save_checkpoint(state, run_dir / "best.pt")
    return run_dir / "best.pt"


def test_decode_fields_that_are_none_keep_the_models_own():
    assert CPU.decode_settings(MODEL_DECODE) == MODEL_DECODE
    changed = TranslationSettings(beam_size=5, length_penalty=0.0, n_best=2)
    assert changed.decode_settings(MODEL_DECODE) == dataclasses.replace(
        MODEL_DECODE, beam_size=5, length_penalty=0.0, n_best=2
    )
    model_three = dataclasses.replace(MODEL_DECODE, n_best=3)
    assert TranslationSettings(beam_size=1).decode_settings(model_three).n_best == 1
    assert CPU.decode_settings(model_three).n_best == 3
    with pytest.raises(TranslationError, match="n_best <= beam_size, got beam_size=3"):
        TranslationSettings(n_best=4).decode_settings(MODEL_DECODE)
    with pytest.raises(ValueError, match=r"decode\.beam_size"):
        TranslationSettings(beam_size=0).decode_settings(MODEL_DECODE)


def test_a_checkpoint_and_its_run_directory_open_alike(checkpoint, corpus):
    lines = (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:4]
    by_file = open_translator(checkpoint, CPU)
    by_folder = open_translator(checkpoint.parent, CPU)
    assert isinstance(by_file, TorchTranslator) and isinstance(by_file, Translator)
    assert by_file.decode == MODEL_DECODE and by_file.capabilities.attention
    assert by_file.detokenize(by_file.translate(lines)) == by_folder.detokenize(
        by_folder.translate(lines)
    )
    (best,) = by_file.translate(lines[:1])
    record = by_file.attention(0, lines[0], best)
    assert record["tgt_tokens"][-1] == "</s>" and len(record["weights"]) == len(best.tokens) + 1


def test_exported_folders_open_with_ctranslate2_and_keep_no_attention(checkpoint, tmp_path):
    pytest.importorskip("ctranslate2")
    from seq2seq_attn.export import export_checkpoint

    folder = export_checkpoint(checkpoint, tmp_path / "ct2")
    translator = open_translator(folder, TranslationSettings(device="cpu", beam_size=2))
    assert not translator.capabilities.attention
    assert translator.decode == dataclasses.replace(MODEL_DECODE, beam_size=2)
    (best,) = translator.translate(["ta zo"])
    with pytest.raises(TranslationError, match="keeps no attention weights"):
        translator.attention(0, "ta zo", best)
    with pytest.raises(TranslationError, match=r"--ensemble needs \.pt checkpoints"):
        open_translator(folder, CPU, ensemble=[checkpoint])
    (folder / "src.model").unlink()  # damaged, but refused for attention before any loading
    with pytest.raises(TranslationError, match="keeps no attention weights") as raised:
        open_translator(folder, TranslationSettings(device="cpu", attention=True))
    assert not raised.value.unreadable


@pytest.mark.parametrize(
    ("setup", "settings", "message", "unreadable"),
    [
        ("missing", CPU, "no such checkpoint file", True),
        ("empty folder", CPU, "a directory without best.pt or last.pt", False),
        ("truncated", CPU, "truncated or corrupt checkpoint", True),
        ("ok", TranslationSettings(device="banana"), "--device: invalid value 'banana'", False),
        ("ok", TranslationSettings(compute_type="int8"), "for folders written by attn-", False),
    ],
)
def test_every_failure_is_one_error_type(
    checkpoint, tmp_path, setup, settings, message, unreadable
):
    path = {"missing": tmp_path / "missing.pt", "empty folder": tmp_path, "ok": checkpoint,
            "truncated": tmp_path / "truncated.pt"}[setup]  # fmt: skip
    if setup == "truncated":
        shutil.copyfile(checkpoint, path)
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TranslationError, match=message) as raised:
        open_translator(path, settings)
    assert raised.value.unreadable is unreadable


def test_a_cpu_translator_keeps_freed_memory_for_the_next_step(checkpoint, monkeypatch):
    """Opened on the CPU, a translator has the allocator keep what it frees
    (``device.keep_freed_memory``, whose effect on page faults ``tests/test_device.py``
    measures): the logits of the next search step reuse the pages of the last."""
    calls = []
    monkeypatch.setattr(torch_backend, "keep_freed_memory", lambda: calls.append(1) or True)
    open_translator(checkpoint, CPU)
    assert calls == [1]
