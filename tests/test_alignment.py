"""Word alignments from attention: pieces grouped into words, word attention against a
hand-made matrix and a per-sentence reference, AER against hand counts, Pharaoh files, the toy
corpus's gold alignments, and the quality script end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_attn.alignment import (
    GoldAlignment,
    align,
    alignment_error_rate,
    alignment_quality,
    argmax_links,
    check_gold,
    diagonal_links,
    format_pharaoh,
    piece_words,
    read_pharaoh,
    select_heads,
    word_attention,
    word_count,
)
from seq2seq_attn.checkpoint import save_checkpoint
from seq2seq_attn.config import Config, ModelConfig, RNNConfig, TokenizerConfig, to_plain
from seq2seq_attn.config import TransformerConfig as TfConfig
from seq2seq_attn.corpus import TextFileError
from seq2seq_attn.decoding import Hypothesis
from seq2seq_attn.models import build_model
from seq2seq_attn.tokenizer import EOS_ID, UNK_ID, train_tokenizer
from seq2seq_attn.translation import TranslationSettings, open_translator

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "data" / "toy"
SMALL_TF = TfConfig(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=2, ff_size=48)
KINDS = {
    "transformer": ModelConfig(max_positions=128, transformer=SMALL_TF),
    "rnn": ModelConfig(family="rnn", rnn=RNNConfig(embedding_size=16, hidden_size=32)),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def load_script(name: str):
    """A module of scripts/ by file name (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer(corpus):
    """A small joint tokenizer of the toy corpus: most words split into several pieces."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60))


def make_model(kind: str, tokenizer, config: ModelConfig | None = None):
    """A seeded, untrained model of ``kind`` for ``tokenizer``."""
    torch.manual_seed(0)
    return build_model(
        config or KINDS[kind], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, True
    ).eval()


def toy_pairs(split: str, count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` source and target lines of a toy split."""
    src = (TOY / f"{split}.src").read_text(encoding="utf-8").splitlines()[:count]
    tgt = (TOY / f"{split}.tgt").read_text(encoding="utf-8").splitlines()[:count]
    return src, tgt


# ---- pieces into words ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["▁a", "b", "▁c"], [0, 0, 1]),
        (["a", "▁b"], [0, 1]),  # no dummy prefix: the first piece starts a word anyway
        (["▁", "a", "▁b"], [0, 0, 1]),  # a bare ▁ is the space before its word
        (["▁", "▁a", "▁b"], [0, 0, 1]),
        (["▁a", "▁", "b", "▁c"], [0, 1, 1, 2]),
        (["▁a", "▁"], [0, 0]),  # a trailing space joins the last word
        (["▁"], [None]),
        ([], []),
    ],
)
def test_pieces_group_into_whitespace_words(pieces, expected):
    assert piece_words(pieces) == expected
    assert word_count(pieces) == len({word for word in expected if word is not None})


def test_piece_words_match_the_texts_whitespace_split(tokenizer):
    src, tgt = toy_pairs("dev", 100)
    # unknown letters (H, ä, ü, !) inside and outside words, and spaces to normalise
    texts = [*src, *tgt, "ein Hund, der läuft.", "  a  b  ", "x", "über-all (dort) !", " ", "ä"]
    unknown = tokenizer.tgt_pieces([UNK_ID])[0]
    for text, ids in zip(texts, tokenizer.encode_tgt(texts), strict=True):
        assert word_count(tokenizer.tgt_pieces(ids)) == len(text.split()), text
        decoded = tokenizer.decode_tgt([ids])[0]  # an unknown piece becomes " ⁇ "
        assert word_count(tokenizer.tgt_pieces(ids), unknown) == len(decoded.split()), decoded
    assert "Hund" not in tokenizer.decode_tgt(tokenizer.encode_tgt(["Hund"]))[0]
    several = [ids for ids in tokenizer.encode_src(src) if len(ids) > len(src[0].split())]
    assert several  # the test tokenizer really splits words


def test_an_unknown_piece_stands_alone_only_in_decoded_words():
    pieces = ["▁", "<unk>", "u", "nd", "▁to", "<unk>"]  # " Hund to?" -> " ⁇ und to ⁇ "
    assert piece_words(pieces) == [0, 0, 0, 0, 1, 1]
    assert piece_words(pieces, "<unk>") == [0, 0, 1, 1, 2, 3]


# ---- from a hand-made attention matrix -------------------------------------------------------


class FixedAttention:
    """A stand-in model whose teacher-forced attention is a given ``(T + 1, S + 1)`` matrix
    per source, looked up by the source ids (a batch's padding left as zeros)."""

    max_positions = None
    training = False

    def __init__(self, matrices: dict[tuple[int, ...], torch.Tensor]) -> None:
        self.matrices = matrices

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def attention_maps(self, src, src_mask, tgt_in):
        maps = torch.zeros(src.size(0), 1, 1, tgt_in.size(1), src.size(1))
        for row in range(src.size(0)):
            key = tuple(src[row][src_mask[row]].tolist()[:-1])  # without the EOS
            matrix = self.matrices[key]
            maps[row, 0, 0, : matrix.size(0), : matrix.size(1)] = matrix
        return maps


class PieceTable:
    """A stand-in tokenizer: ids index one list of pieces for both sides."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def src_pieces(self, ids):
        return [self.pieces[i] for i in ids]

    tgt_pieces = src_pieces


def test_hand_made_attention_gives_the_expected_links():
    # source "the cat sat" = ▁the ▁ca t ▁sat; target "le chat" = ▁le ▁ch at
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    table = PieceTable([*specials, "▁the", "▁ca", "t", "▁sat", "▁le", "▁ch", "at"])
    src, tgt = [4, 5, 6, 7], [8, 9, 10]
    weights = torch.tensor(
        [  # columns: ▁the ▁ca t ▁sat </s>; rows: ▁le ▁ch at </s>
            [0.50, 0.10, 0.10, 0.20, 0.10],
            [0.10, 0.30, 0.30, 0.25, 0.05],  # "cat" gets 0.6 from two pieces, "sat" 0.25
            [0.10, 0.20, 0.10, 0.50, 0.10],  # alone this piece points at "sat"
            [0.00, 0.00, 0.00, 0.00, 1.00],
        ]
    )
    model = FixedAttention({tuple(src): weights})
    (words,) = word_attention(model, table, [src], [tgt])
    expected = torch.tensor([[0.50, 0.20, 0.20], [0.10, 0.45, 0.375]])  # (J, I): mean, sum
    torch.testing.assert_close(words[0, 0], expected)
    assert argmax_links(words[0, 0]) == [(0, 0), (1, 1)]
    assert format_pharaoh(align(model, table, [src], [tgt])[0]) == "0-0 1-1"


def test_batched_padding_does_not_change_a_hand_made_alignment():
    table = PieceTable(["<pad>", "<unk>", "<s>", "</s>", "▁a", "▁b", "▁c"])
    short, long = [4, 5], [4, 5, 6]
    matrices = {
        tuple(short): torch.tensor([[0.1, 0.8, 0.1], [0.0, 0.0, 1.0]]),
        tuple(long): torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.6, 0.2, 0.1, 0.1], [0, 0, 0, 1.0]]),
    }
    model = FixedAttention(matrices)
    links = align(model, table, [short, long], [[6], [5, 4]])
    assert links == [[(1, 0)], [(0, 1), (2, 0)]]


# ---- the toy corpus's gold alignments ----------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_toy_gold_alignments_translate_each_source_word_into_its_target_word(split):
    toy = load_script("make_toy_corpus")
    _, dictionary = toy.make_lexicon(random.Random(toy.SEED))
    src, tgt = toy_pairs(split, 10_000)
    gold = read_pharaoh(TOY / f"{split}.align")
    assert len(gold) == len(src) == len(tgt)
    for src_line, tgt_line, links in zip(src, tgt, gold, strict=True):
        src_words, tgt_words = src_line.split(), tgt_line.split()
        assert links.sure == links.possible
        assert sorted(i for i, _ in links.sure) == list(range(len(src_words)))  # one each
        assert sorted(j for _, j in links.sure) == list(range(len(tgt_words)))
        assert all(tgt_words[j] == dictionary[src_words[i]] for i, j in links.sure)


def test_the_generator_returns_the_links_it_writes():
    toy = load_script("make_toy_corpus")
    rng = random.Random(7)
    classes, dictionary = toy.make_lexicon(rng)
    reordered = 0
    for _ in range(200):
        pair = toy.make_pair(rng, classes, dictionary)
        src_words, tgt_words = pair.src.split(), pair.tgt.split()
        assert [tgt_words[j] for _, j in pair.links] == [dictionary[w] for w in src_words]
        reordered += any(i != j for i, j in pair.links)
    assert reordered > 100  # the verb moves in every pair with anything after it


# ---- AER and Pharaoh files -------------------------------------------------------------------


def test_aer_precision_recall_match_hand_counts():
    predicted = [[(0, 0), (1, 1), (2, 1)]]
    sure, possible = [{(0, 0), (1, 2)}], [{(1, 1)}]  # possible lists only the extra link
    aer, precision, recall = alignment_error_rate(predicted, sure, possible)
    # |A∩S| = 1, |A∩P| = 2 (P ⊇ S), |A| = 3, |S| = 2
    assert (aer, precision, recall) == pytest.approx((1 - 3 / 5, 2 / 3, 1 / 2))
    with_sure_listed = [possible[0] | sure[0]]
    assert alignment_error_rate(predicted, sure, with_sure_listed) == (aer, precision, recall)
    assert alignment_error_rate(predicted, sure) == pytest.approx((1 - 2 / 5, 1 / 3, 1 / 2))


def test_aer_counts_over_the_corpus_not_per_sentence():
    predicted = [[(0, 0)], [(0, 0), (1, 1), (2, 2)]]
    sure = [[(0, 1)], [(0, 0), (1, 1), (2, 2)]]
    aer, precision, recall = alignment_error_rate(predicted, sure)
    assert (aer, precision, recall) == pytest.approx((1 - 6 / 8, 3 / 4, 3 / 4))
    assert alignment_error_rate([[]], [[]]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one per sentence"):
        alignment_error_rate(predicted, sure[:1])


def test_pharaoh_files_read_sure_and_possible_links_and_name_bad_lines(tmp_path):
    path = tmp_path / "gold.align"
    path.write_text("0-0 1p2 2-1\n\n3-3\n", encoding="utf-8")
    gold = read_pharaoh(path)
    assert gold[0].sure == {(0, 0), (2, 1)}
    assert gold[0].possible == {(0, 0), (2, 1), (1, 2)}
    assert gold[1] == GoldAlignment(frozenset(), frozenset())
    path.write_text("0-0\n1-1 2-x\n", encoding="utf-8")
    with pytest.raises(TextFileError, match=rf"{path}:2: '2-x' is not an alignment link"):
        read_pharaoh(path)


def test_gold_links_outside_the_sentence_name_the_line():
    gold = [GoldAlignment(frozenset({(0, 0)}), frozenset({(0, 0)}))] * 2
    gold[1] = GoldAlignment(frozenset({(2, 0)}), frozenset({(2, 0)}))
    check_gold(gold[:1], ["a b"], ["x y"], "g.align")
    with pytest.raises(TextFileError, match=r"g\.align:2: link 2-0 is outside"):
        check_gold(gold, ["a b", "a b"], ["x y", "x y"], "g.align")
    with pytest.raises(TextFileError, match=r"g\.align has 2 lines but the source has 1"):
        check_gold(gold, ["a b"], ["x y"], "g.align")


def test_diagonal_baseline_links_each_target_word_by_relative_position():
    assert diagonal_links(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert diagonal_links(4, 2) == [(1, 0), (3, 1)]
    assert diagonal_links(2, 4) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert diagonal_links(0, 2) == [] and diagonal_links(2, 0) == []


# ---- tiny models end to end ------------------------------------------------------------------


def reference_word_attention(model, tokenizer, src_ids, tgt_ids) -> torch.Tensor:
    """One unpadded sentence through ``attention_maps``, pieces pooled with loops:
    ``(L, H, J, I)``."""
    src = torch.tensor([[*src_ids, EOS_ID]])
    tgt_in = torch.tensor([[2, *tgt_ids]])
    with torch.inference_mode():
        maps = model.attention_maps(src, torch.ones_like(src, dtype=torch.bool), tgt_in)[0]
    src_words = piece_words(tokenizer.src_pieces(src_ids))
    tgt_words = piece_words(tokenizer.tgt_pieces(tgt_ids))
    words = torch.zeros(*maps.shape[:2], max(tgt_words) + 1, max(src_words) + 1)
    for j in range(words.size(2)):
        rows = [t for t, word in enumerate(tgt_words) if word == j]
        for i in range(words.size(3)):
            columns = [s for s, word in enumerate(src_words) if word == i]
            words[:, :, j, i] = maps[:, :, rows][:, :, :, columns].sum(dim=3).mean(dim=2)
    return words


@pytest.mark.parametrize("kind", list(KINDS))
def test_batched_word_attention_equals_one_sentence_at_a_time(kind, tokenizer):
    model = make_model(kind, tokenizer)
    src, tgt = toy_pairs("dev", 12)
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    batched = word_attention(model, tokenizer, src_ids, tgt_ids, max_tokens=4096)
    assert len(batched) == len(src)
    for index in range(len(src)):
        expected = reference_word_attention(model, tokenizer, src_ids[index], tgt_ids[index])
        torch.testing.assert_close(batched[index], expected, atol=1e-5, rtol=1e-4)
        words = (len(tgt[index].split()), len(src[index].split()))
        assert tuple(batched[index].shape[2:]) == words


@pytest.mark.parametrize("kind", list(KINDS))
def test_align_gives_one_link_per_target_word_within_the_word_counts(kind, tokenizer):
    model = make_model(kind, tokenizer)
    src, tgt = toy_pairs("test", 8)
    links = align(model, tokenizer, tokenizer.encode_src(src), tokenizer.encode_tgt(tgt))
    assert len(links) == len(src)
    for src_line, tgt_line, line in zip(src, tgt, links, strict=True):
        assert sorted(j for _, j in line) == list(range(len(tgt_line.split())))
        assert all(0 <= i < len(src_line.split()) for i, _ in line)
    one_by_one = [align(model, tokenizer, [s], [t], max_tokens=1)[0] for s, t in zip(
        tokenizer.encode_src(src), tokenizer.encode_tgt(tgt), strict=True)]  # fmt: skip
    assert one_by_one == links


def test_layers_and_heads_select_or_average(tokenizer):
    model = make_model("transformer", tokenizer)
    src, tgt = toy_pairs("dev", 1)
    (maps,) = word_attention(model, tokenizer, tokenizer.encode_src(src), tokenizer.encode_tgt(tgt))
    assert maps.shape[:2] == (2, 4)
    torch.testing.assert_close(select_heads(maps, -1, 2), maps[1, 2])
    torch.testing.assert_close(select_heads(maps, 0), maps[0].mean(dim=0))
    torch.testing.assert_close(select_heads(maps), maps.mean(dim=(0, 1)))
    with pytest.raises(ValueError, match=r"layer 2 is out of range.*use 0\.\.1"):
        select_heads(maps, 2)
    with pytest.raises(ValueError, match=r"head -5 is out of range"):
        select_heads(maps, 0, -5)


def test_sources_and_targets_beyond_max_positions_are_cut(tokenizer):
    config = ModelConfig(max_positions=6, transformer=SMALL_TF)
    model = make_model("transformer", tokenizer, config)
    src, tgt = toy_pairs("dev", 3)
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    assert max(map(len, src_ids)) > 5
    found = word_attention(model, tokenizer, src_ids, tgt_ids)
    for maps, src_line, tgt_line in zip(found, src_ids, tgt_ids, strict=True):
        assert maps.size(3) == word_count(tokenizer.src_pieces(src_line[:5]))
        assert maps.size(2) == word_count(tokenizer.tgt_pieces(tgt_line[:5]))


def test_an_rnns_quality_table_has_its_one_attention_and_the_baseline(tokenizer):
    model = make_model("rnn", tokenizer)
    src, tgt = toy_pairs("dev", 4)
    maps = word_attention(model, tokenizer, tokenizer.encode_src(src), tokenizer.encode_tgt(tgt))
    rows = alignment_quality(maps, read_pharaoh(TOY / "dev.align")[:4])
    assert [row.name for row in rows] == ["layer 0 head 0", "diagonal"]


def test_quality_table_rows_and_the_script(tokenizer, tmp_path, monkeypatch, capsys):
    model = make_model("transformer", tokenizer)
    src, tgt = toy_pairs("dev", 10)
    gold = read_pharaoh(TOY / "dev.align")[:10]
    maps = word_attention(model, tokenizer, tokenizer.encode_src(src), tokenizer.encode_tgt(tgt))
    rows = alignment_quality(maps, gold)
    assert [row.name for row in rows[:5]] == [
        "layer 0 head 0", "layer 0 head 1", "layer 0 head 2", "layer 0 head 3", "layer 0 mean"
    ]  # fmt: skip
    assert [row.name for row in rows[-2:]] == ["all layers mean", "diagonal"]
    assert len(rows) == 2 * 4 + 2 + 2
    predicted = [argmax_links(select_heads(m, 1, 3)) for m in maps]
    expected = alignment_error_rate(predicted, [g.sure for g in gold])
    assert (rows[8].aer, rows[8].precision, rows[8].recall) == pytest.approx(expected)
    pairs = zip(src, tgt, strict=True)
    diagonal = [diagonal_links(len(s.split()), len(t.split())) for s, t in pairs]
    assert rows[-1].aer == pytest.approx(alignment_error_rate(diagonal, [g.sure for g in gold])[0])

    state = {"config": to_plain(Config(model=KINDS["transformer"])),
             "tokenizer": tokenizer.state_dict(), "model": model.state_dict()}  # fmt: skip
    save_checkpoint(state, tmp_path / "best.pt")
    gold_lines = [format_pharaoh(sorted(links.sure)) for links in gold]
    for name, lines in (("src", src), ("tgt", tgt), ("align", gold_lines)):
        (tmp_path / f"dev.{name}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    script = load_script("alignment_quality")
    argv = ["alignment_quality", str(tmp_path), "--src", str(tmp_path / "dev.src"),
            "--ref", str(tmp_path / "dev.tgt"), "--gold", str(tmp_path / "dev.align")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    table = capsys.readouterr().out
    assert f"| layer 1 head 3 | {100 * rows[8].aer:.1f} |" in table
    assert table.count("*") == 1
    (tmp_path / "dev.align").write_text("0-0\n" * 9 + "0-99\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"dev\.align:10: link 0-99 is outside"):
        script.main()


def test_the_translator_aligns_its_own_outputs(tokenizer, tmp_path):
    model = make_model("transformer", tokenizer)
    state = {"config": to_plain(Config(model=KINDS["transformer"])),
             "tokenizer": tokenizer.state_dict(), "model": model.state_dict()}  # fmt: skip
    save_checkpoint(state, tmp_path / "best.pt")
    translator = open_translator(tmp_path, TranslationSettings(device="cpu", beam_size=2))
    src, _ = toy_pairs("test", 6)
    src = [*src, "", "Über Hund"]  # a blank line; unknown letters
    hypotheses = translator.translate(src)
    words = tokenizer.encode_tgt(["qoceihei caqeihai"])[0]  # an unknown piece inside a word:
    src.append(src[0])  # it decodes as a word of its own
    hypotheses.append(Hypothesis(tokens=[words[0], UNK_ID, *words[1:]], log_prob=0.0, score=0.0))
    outputs = translator.detokenize(hypotheses)
    assert len(outputs[-1].split()) == 3
    lines = translator.alignments(src, hypotheses)
    assert len(lines) == len(src) and lines[-3] == ""
    for src_line, output, line in zip(src, outputs, lines, strict=True):
        links = [tuple(map(int, link.split("-"))) for link in line.split()]
        assert sorted(j for _, j in links) == list(range(len(output.split())))
        assert all(0 <= i < len(src_line.split()) for i, _ in links)
    assert translator.alignments(src, hypotheses, layer=0, head=1) != lines
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        translator.alignments(src, hypotheses, layer=2)
