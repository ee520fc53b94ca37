"""SentencePiece training, fixed ids, encode/decode round trips, rebuilding from bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from seq2seq_attn.config import ConfigError, TokenizerConfig
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer

TOY = Path(__file__).resolve().parent.parent / "data" / "toy"
GERMAN = ["Ein Mann schläft in einem grünen Raum.", "Zwei Hunde spielen im Schnee."]


def toy_lines(side: str, limit: int = 2000) -> list[str]:
    """The first lines of the toy corpus's training split."""
    return (TOY / f"train.{side}").read_text(encoding="utf-8").splitlines()[:limit]


@pytest.fixture(scope="module")
def joint() -> Tokenizer:
    return train_tokenizer(
        toy_lines("src") + GERMAN, toy_lines("tgt"), TokenizerConfig(vocab_size=500)
    )


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("is_joint", [True, False])
def test_fixed_special_ids_for_every_kind(model_type, is_joint):
    cfg = TokenizerConfig(type=model_type, vocab_size=300, joint=is_joint)
    tokenizer = train_tokenizer(toy_lines("src", 500), toy_lines("tgt", 500), cfg)
    assert tokenizer.joint is is_joint
    for processor in (tokenizer._src, tokenizer._tgt):
        assert (
            (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
            == (
                PAD_ID,
                UNK_ID,
                BOS_ID,
                EOS_ID,
            )
            == (0, 1, 2, 3)
        )
    ids = tokenizer.encode_src(toy_lines("src", 5))
    assert all(min(row) > EOS_ID for row in ids)


def test_round_trip_gives_the_detokenized_text(joint):
    sentences = toy_lines("tgt", 50)
    assert joint.decode_tgt(joint.encode_tgt(sentences)) == sentences
    assert joint.decode_src(joint.encode_src(GERMAN)) == GERMAN


def test_decode_cuts_at_eos_and_drops_pad_and_bos(joint):
    ids = joint.encode_tgt(["xo keiyo"])[0]
    rows = [[BOS_ID, *ids, EOS_ID, *ids, PAD_ID], torch.tensor([*ids, PAD_ID, PAD_ID])]
    assert joint.decode_tgt(rows) == ["xo keiyo", "xo keiyo"]


def test_unknown_characters_map_to_unk(joint):
    assert UNK_ID in joint.encode_src(["日本"])[0]


def test_separate_models_have_their_own_vocabularies():
    cfg = TokenizerConfig(vocab_size=200, joint=False)
    tokenizer = train_tokenizer(toy_lines("src", 1000), toy_lines("tgt", 1000), cfg)
    assert tokenizer.src_model != tokenizer.tgt_model
    src_pieces = set(tokenizer._src.id_to_piece(i) for i in range(tokenizer.src_vocab_size))
    tgt_pieces = set(tokenizer._tgt.id_to_piece(i) for i in range(tokenizer.tgt_vocab_size))
    # 'x' occurs only in target words, so only the target model has pieces with it
    assert any("x" in piece for piece in tgt_pieces)
    assert not any("x" in piece for piece in src_pieces)


def test_training_is_deterministic():
    cfg = TokenizerConfig(vocab_size=300)
    first = train_tokenizer(toy_lines("src", 800), toy_lines("tgt", 800), cfg)
    second = train_tokenizer(toy_lines("src", 800), toy_lines("tgt", 800), cfg)
    assert first.fingerprint == second.fingerprint


def test_rebuilds_from_bytes_alone_through_a_weights_only_checkpoint(joint):
    buffer = io.BytesIO()
    torch.save({"tokenizer": joint.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["tokenizer"]
    rebuilt = Tokenizer.from_state_dict(state)
    sentences = toy_lines("src", 20)
    assert rebuilt.encode_src(sentences) == joint.encode_src(sentences)
    assert rebuilt.fingerprint == joint.fingerprint
    with pytest.raises(ValueError, match="src_model"):
        Tokenizer.from_state_dict({"model": b""})


def test_save_and_load_a_directory(tmp_path, joint):
    joint.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").fingerprint == joint.fingerprint
    with pytest.raises(FileNotFoundError, match=r"src\.model"):
        Tokenizer.load(tmp_path)


def test_a_model_with_other_special_ids_is_refused():
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(toy_lines("src", 300)),
        model_writer=writer,
        vocab_size=100,
        hard_vocab_limit=False,
        minloglevel=2,
    )  # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad
    with pytest.raises(ValueError, match="special ids"):
        Tokenizer(writer.getvalue())


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"type": "wordpiece"}, "tokenizer.type"),
        ({"vocab_size": 4}, "tokenizer.vocab_size"),
        ({"character_coverage": 1.5}, "tokenizer.character_coverage"),
        ({"max_sentences": 0}, "tokenizer.max_sentences"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        TokenizerConfig(**kwargs)
