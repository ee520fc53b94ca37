"""Every attention map of one sentence: the Transformer's self-attention maps against
``torch.nn.MultiheadAttention`` loaded with the same weights, their masks, padding, the fast
paths left alone, and ``attention_views`` (cross equal to ``attention_maps``, tokens, cuts,
fp32, RNNs and ensembles) on models and on translators opened from checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from seq2seq_attn.attention import MultiHeadAttention, causal_mask
from seq2seq_attn.checkpoint import save_checkpoint
from seq2seq_attn.config import Config, ModelConfig, RNNConfig, TokenizerConfig, to_plain
from seq2seq_attn.config import TransformerConfig as TfConfig
from seq2seq_attn.decoding import Hypothesis
from seq2seq_attn.models import Seq2Seq, build_model
from seq2seq_attn.models.ensemble import Ensemble
from seq2seq_attn.tokenizer import BOS_ID, EOS_ID, train_tokenizer
from seq2seq_attn.translation import TranslationError, TranslationSettings, open_translator
from seq2seq_attn.translation.attention_views import attention_views

SRC_VOCAB, TGT_VOCAB = 23, 19
SMALL_TF = TfConfig(d_model=32, num_heads=4, encoder_layers=2, decoder_layers=3, ff_size=48)
KINDS = {
    "transformer-pre": ModelConfig(max_positions=128, transformer=SMALL_TF),
    "transformer-post": ModelConfig(
        max_positions=128, transformer=replace(SMALL_TF, norm_position="post")
    ),
    "rnn": ModelConfig(family="rnn", rnn=RNNConfig(embedding_size=16, hidden_size=32)),
}
TRANSFORMERS = pytest.mark.parametrize("kind", ["transformer-pre", "transformer-post"])
ROUNDING = 5e-5  # half of the 4th decimal

pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, src_vocab: int = SRC_VOCAB, tgt_vocab: int = TGT_VOCAB, seed: int = 0):
    """A seeded, untrained model of ``kind`` in eval mode."""
    torch.manual_seed(seed)
    return build_model(KINDS[kind], src_vocab, tgt_vocab, src_vocab == tgt_vocab).eval()


def padded_batch():
    """Three sentences of different lengths, padded with a junk id (masks must hide it)."""
    generator = torch.Generator().manual_seed(1)
    src_lengths, tgt_lengths = [7, 3, 5], [6, 2, 4]
    src = torch.randint(1, SRC_VOCAB, (3, 7), generator=generator)  # (B, S)
    tgt_in = torch.randint(1, TGT_VOCAB, (3, 6), generator=generator)  # (B, T)
    src_mask = torch.arange(7) < torch.tensor(src_lengths)[:, None]  # (B, S)
    return src.masked_fill(~src_mask, 5), src_mask, tgt_in, src_lengths, tgt_lengths


# ----- self-attention maps of the models -----------------------------------------------------


def torch_attention(attention: MultiHeadAttention) -> nn.MultiheadAttention:
    """``torch.nn.MultiheadAttention`` holding ``attention``'s projection weights."""
    reference = nn.MultiheadAttention(attention.d_model, attention.num_heads, batch_first=True)
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        reference.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        reference.out_proj.weight.copy_(attention.out_proj.weight)
        reference.out_proj.bias.copy_(attention.out_proj.bias)
    return reference.eval()


def self_attention_inputs(model: Seq2Seq, src, src_mask, tgt_in):
    """The maps of ``model.self_attention_maps`` and, per encoder and decoder layer, the input
    its self-attention received meanwhile (``(B, S, D)`` and ``(B, T, D)``)."""
    inputs = {"encoder": [], "decoder": []}
    handles = [
        layer.self_attn.register_forward_pre_hook(
            lambda module, args, stack=stack: inputs[stack].append(args[0])
        )
        for stack in inputs
        for layer in getattr(model, f"{stack}_layers")
    ]
    try:
        with torch.inference_mode():
            maps = model.self_attention_maps(src, src_mask, tgt_in)
    finally:
        for handle in handles:
            handle.remove()
    return maps, inputs


@TRANSFORMERS
def test_self_attention_maps_equal_torchs_multihead_attention(kind):
    model = make(kind)
    src, src_mask, tgt_in, _, _ = padded_batch()
    maps, inputs = self_attention_inputs(model, src, src_mask, tgt_in)
    assert maps.encoder.shape == (3, 2, 4, 7, 7) and maps.decoder.shape == (3, 3, 4, 6, 6)
    for index, (layer, h) in enumerate(zip(model.encoder_layers, inputs["encoder"], strict=True)):
        reference = torch_attention(layer.self_attn)
        _, expected = reference(
            h, h, h, key_padding_mask=~src_mask, need_weights=True, average_attn_weights=False
        )  # (B, H, S, S)
        torch.testing.assert_close(maps.encoder[:, index], expected, atol=1e-6, rtol=1e-5)
    future = ~causal_mask(6)  # (T, T) True where a query may not look
    for index, (layer, h) in enumerate(zip(model.decoder_layers, inputs["decoder"], strict=True)):
        reference = torch_attention(layer.self_attn)
        _, expected = reference(
            h, h, h, attn_mask=future, need_weights=True, average_attn_weights=False
        )  # (B, H, T, T)
        torch.testing.assert_close(maps.decoder[:, index], expected, atol=1e-6, rtol=1e-5)


@TRANSFORMERS
def test_self_attention_maps_are_masked_distributions(kind):
    model = make(kind)
    src, src_mask, tgt_in, _, _ = padded_batch()
    with torch.inference_mode():
        maps = model.self_attention_maps(src, src_mask, tgt_in)
    torch.testing.assert_close(maps.encoder.sum(-1), torch.ones(3, 2, 4, 7))
    torch.testing.assert_close(maps.decoder.sum(-1), torch.ones(3, 3, 4, 6))
    padded_keys = ~src_mask[:, None, None, None, :]  # (B, 1, 1, 1, S)
    assert (maps.encoder.masked_select(padded_keys) == 0).all()
    assert (maps.encoder.masked_select(~padded_keys) > 0).all()
    above_diagonal = ~causal_mask(6)  # (T, T)
    assert (maps.decoder.masked_select(above_diagonal) == 0).all()
    assert (maps.decoder.masked_select(~above_diagonal) > 0).all()


@TRANSFORMERS
def test_padding_never_changes_a_sentences_self_attention(kind):
    model = make(kind)
    src, src_mask, tgt_in, src_lengths, tgt_lengths = padded_batch()
    with torch.inference_mode():
        batched = model.self_attention_maps(src, src_mask, tgt_in)
        for row, (s, t) in enumerate(zip(src_lengths, tgt_lengths, strict=True)):
            alone = model.self_attention_maps(
                src[row : row + 1, :s], src_mask[row : row + 1, :s], tgt_in[row : row + 1, :t]
            )
            torch.testing.assert_close(batched.encoder[row, :, :, :s, :s], alone.encoder[0])
            torch.testing.assert_close(batched.decoder[row, :, :, :t, :t], alone.decoder[0])


@TRANSFORMERS
def test_training_and_decoding_never_ask_for_weights_they_do_not_use(kind):
    model = make(kind)
    src, src_mask, tgt_in, _, _ = padded_batch()
    asked = []
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.register_forward_pre_hook(
                lambda module, args, kwargs: asked.append(kwargs.get("need_weights", False)),
                with_kwargs=True,
            )
    model(src, src_mask, tgt_in)
    state = model.init_state(model.encode(src, src_mask))
    model.decode_step(tgt_in[:, 0], state)
    assert not any(asked)
    asked.clear()
    model.decode_step(tgt_in[:, 1], state, need_attention=True)  # the last cross-attention
    assert asked.count(True) == 1


def test_rnns_have_no_self_attention_and_ensembles_take_the_first_members():
    transformer, rnn = make("transformer-pre"), make("rnn")
    src, src_mask, tgt_in, _, _ = padded_batch()
    assert rnn.self_attention_maps(src, src_mask, tgt_in) is None
    assert Ensemble([rnn, transformer]).self_attention_maps(src, src_mask, tgt_in) is None
    expected = transformer.self_attention_maps(src, src_mask, tgt_in)
    got = Ensemble([transformer, rnn]).self_attention_maps(src, src_mask, tgt_in)
    torch.testing.assert_close(got.encoder, expected.encoder, atol=0, rtol=0)
    torch.testing.assert_close(got.decoder, expected.decoder, atol=0, rtol=0)


# ----- attention_views ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(corpus):
    """A small joint tokenizer of the toy corpus: most words split into several pieces."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60))


@pytest.fixture(scope="module")
def sentences(corpus) -> list[str]:
    """Three toy source sentences."""
    return (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:3]


def teacher_forced(model: Seq2Seq, src_ids: list[int], tgt_ids: list[int]):
    """``model``'s cross-attention ``(L, H, T + 1, S + 1)`` and self-attention maps of one pair
    with its EOS and BOS (the reference the views are rounded from)."""
    src = torch.tensor([[*src_ids, EOS_ID]])  # (1, S + 1)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]])  # (1, T + 1)
    src_mask = torch.ones_like(src, dtype=torch.bool)
    with torch.inference_mode():
        cross = model.attention_maps(src, src_mask, tgt_in)[0]
        return cross, model.self_attention_maps(src, src_mask, tgt_in)


def assert_rounded_close(got: list, expected: Tensor) -> None:
    """``got`` (nested lists) is ``expected`` rounded to 4 decimals, and its values are."""
    values = torch.tensor(got, dtype=torch.float64)
    torch.testing.assert_close(values, expected.double(), atol=ROUNDING, rtol=0)
    assert all(round(value, 4) == value for value in values.flatten().tolist())


@pytest.mark.parametrize("kind", list(KINDS))
def test_views_are_the_rounded_teacher_forced_maps(kind, tokenizer, sentences):
    model = make(kind, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    src_ids = tokenizer.encode_src(sentences[:1])[0]
    tgt_ids = tokenizer.encode_tgt(["a target of some pieces"])[0]
    hypothesis = Hypothesis(tokens=tgt_ids, log_prob=-1.0, score=-1.0)
    views = attention_views(model, tokenizer, sentences[0], hypothesis, "cpu")
    cross, self_maps = teacher_forced(model, src_ids, tgt_ids)
    assert_rounded_close(views["cross"], cross)
    if kind == "rnn":
        assert views["encoder"] is None and views["decoder"] is None
        assert torch.tensor(views["cross"]).shape == (1, 1, len(tgt_ids) + 1, len(src_ids) + 1)
    else:
        assert_rounded_close(views["encoder"], self_maps.encoder[0])
        assert_rounded_close(views["decoder"], self_maps.decoder[0])
    assert views["src_tokens"] == [*tokenizer.src_pieces(src_ids), "</s>"]
    assert views["tgt_tokens"] == [*tokenizer.tgt_pieces(tgt_ids), "</s>"]


def test_views_are_fp32_under_a_callers_autocast(tokenizer, sentences):
    model = make("transformer-pre", tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    src_ids = tokenizer.encode_src(sentences[1:2])[0]
    tgt_ids = tokenizer.encode_tgt(["some words to attend from"])[0]
    hypothesis = Hypothesis(tokens=tgt_ids, log_prob=-1.0, score=-1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = attention_views(model, tokenizer, sentences[1], hypothesis, "cpu")
    cross, self_maps = teacher_forced(model, src_ids, tgt_ids)
    assert_rounded_close(views["cross"], cross)
    assert_rounded_close(views["encoder"], self_maps.encoder[0])


def test_sides_longer_than_the_model_are_cut_as_the_search_cuts(tokenizer, sentences):
    narrow = ModelConfig(max_positions=8, transformer=SMALL_TF)
    torch.manual_seed(0)
    model = build_model(narrow, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, True).eval()
    src_ids = tokenizer.encode_src(sentences[:1])[0]
    tgt_ids = tokenizer.encode_tgt([sentences[1]])[0]
    assert len(src_ids) > 7 and len(tgt_ids) > 7
    hypothesis = Hypothesis(tokens=tgt_ids, log_prob=-1.0, score=-1.0)
    views = attention_views(model, tokenizer, sentences[0], hypothesis, "cpu")
    assert views["src_tokens"] == [*tokenizer.src_pieces(src_ids[:7]), "</s>"]
    assert views["tgt_tokens"] == [*tokenizer.tgt_pieces(tgt_ids[:7]), "</s>"]
    assert torch.tensor(views["cross"]).shape == (3, 4, 8, 8)
    assert_rounded_close(views["cross"], teacher_forced(model, src_ids[:7], tgt_ids[:7])[0])


@pytest.fixture(scope="module")
def checkpoints(tokenizer, tmp_path_factory) -> dict[str, str]:
    """``best.pt`` files of an untrained Transformer and RNN with ``tokenizer``, by kind."""
    folder = tmp_path_factory.mktemp("views")
    paths = {}
    for kind in ("transformer-pre", "rnn"):
        model = make(kind, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        state = {"config": to_plain(Config(model=KINDS[kind])),
                 "tokenizer": tokenizer.state_dict(), "model": model.state_dict()}  # fmt: skip
        paths[kind] = folder / kind / "best.pt"
        paths[kind].parent.mkdir()
        save_checkpoint(state, paths[kind])
    return paths


def check_contract(views: dict, src_text: str, hypothesis: Hypothesis, tokenizer) -> None:
    """``views`` is the serve API's ``"attention"`` object of the pair, JSON and back."""
    src_ids = tokenizer.encode_src([src_text])[0]
    assert views["src_tokens"] == [*tokenizer.src_pieces(src_ids), "</s>"]
    assert views["tgt_tokens"] == [*tokenizer.tgt_pieces(hypothesis.tokens), "</s>"]
    assert json.loads(json.dumps(views)) == views
    src_len, tgt_len = len(views["src_tokens"]), len(views["tgt_tokens"])
    cross = torch.tensor(views["cross"])
    assert cross.shape[2:] == (tgt_len, src_len)
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:3]), atol=1e-3, rtol=0)
    if views["encoder"] is not None:
        encoder, decoder = torch.tensor(views["encoder"]), torch.tensor(views["decoder"])
        assert encoder.shape == (2, 4, src_len, src_len)
        assert decoder.shape == (3, 4, tgt_len, tgt_len)
        assert (decoder.masked_select(~causal_mask(tgt_len)) == 0).all()


@pytest.mark.parametrize("kind", ["transformer-pre", "rnn"])
def test_a_translator_gives_the_views_of_its_own_translations(
    kind, checkpoints, tokenizer, sentences
):
    translator = open_translator(checkpoints[kind], TranslationSettings(device="cpu", beam_size=2))
    for src_text, best in zip(sentences, translator.translate(sentences), strict=True):
        views = translator.attention_views(src_text, best)
        check_contract(views, src_text, best, tokenizer)
        assert (views["encoder"] is None) == (kind == "rnn")
        assert views == attention_views(translator.model, tokenizer, src_text, best, "cpu")


def test_an_ensembles_views_are_its_first_models(checkpoints, tokenizer, sentences):
    settings = TranslationSettings(device="cpu", beam_size=2)
    first, other = checkpoints["transformer-pre"], checkpoints["rnn"]
    ensemble = open_translator(first, settings, ensemble=[other])
    alone = open_translator(first, settings)
    (best,) = ensemble.translate(sentences[:1])
    assert ensemble.attention_views(sentences[0], best) == alone.attention_views(sentences[0], best)
    backwards = open_translator(other, settings, ensemble=[first])
    assert backwards.attention_views(sentences[0], best)["encoder"] is None


def test_exported_folders_have_no_views(checkpoints, tmp_path):
    pytest.importorskip("ctranslate2")
    from seq2seq_attn.export import export_checkpoint

    folder = export_checkpoint(checkpoints["transformer-pre"], tmp_path / "ct2")
    translator = open_translator(folder, TranslationSettings(device="cpu", beam_size=2))
    (best,) = translator.translate(["ta zo"])
    with pytest.raises(TranslationError, match="keeps no attention weights"):
        translator.attention_views("ta zo", best)


def test_views_use_eval_mode_and_leave_training_mode_as_it_was(tokenizer, sentences):
    model = make("transformer-post", tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    hypothesis = Hypothesis(tokens=tokenizer.encode_tgt(["a b c"])[0], log_prob=0.0, score=0.0)
    expected = attention_views(model, tokenizer, sentences[2], hypothesis, "cpu")
    model.train()
    assert attention_views(model, tokenizer, sentences[2], hypothesis, "cpu") == expected
    assert model.training
