"""Ensembles: a model with itself equals the model, the batched search equals an uncached
reference over averaged log-probabilities (mixed families), the length limit is the smallest
member's, and ``attn-translate --ensemble`` translates or refuses different tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_decoding import BOS, EOS, KINDS, make, reference_beam_search, source_batch
from typer.testing import CliRunner

from seq2seq_attn.checkpoint import save_checkpoint
from seq2seq_attn.config import (
    Config,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TokenizerConfig,
    TransformerConfig,
    to_plain,
)
from seq2seq_attn.decoding import beam_search, greedy_search
from seq2seq_attn.models import Ensemble, Seq2Seq, build_model
from seq2seq_attn.tokenizer import Tokenizer, train_tokenizer
from seq2seq_attn.translation import TranslationSettings, open_translator

pytestmark = pytest.mark.usefixtures("one_thread")

BEAM = DecodeConfig(
    beam_size=3, n_best=3, length_penalty=0.6, max_length_offset=4, max_length_ratio=1.0,
    min_length=1,
)  # fmt: skip
GREEDY = DecodeConfig(beam_size=1, length_penalty=0.6, max_length_offset=4, max_length_ratio=1.0)


def results(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor, options: DecodeConfig):
    """Per sentence, its hypotheses as ``(tokens, log_prob, score)`` (greedy: one each)."""
    if options.beam_size == 1:
        found = [[h] for h in greedy_search(model, src, src_mask, BOS, EOS, options)]
    else:
        found = beam_search(model, src, src_mask, BOS, EOS, options)
    return [[(h.tokens, h.log_prob, h.score) for h in hypotheses] for hypotheses in found]


def assert_same(got: list, expected: list, tolerance: float) -> None:
    """The same tokens in the same order, log-probabilities and scores within ``tolerance``."""
    assert [tokens for tokens, _, _ in got] == [tokens for tokens, _, _ in expected]
    for (_, log_prob, score), (_, ref_log_prob, ref_score) in zip(got, expected, strict=True):
        assert log_prob == pytest.approx(ref_log_prob, abs=tolerance)
        assert score == pytest.approx(ref_score, abs=tolerance)


@pytest.mark.parametrize("kind", ["transformer", "rnn-bahdanau", "rnn-luong"])
@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_an_ensemble_of_a_model_with_itself_is_that_model(kind, options):
    model = make(kind, seed=5)
    src, src_mask = source_batch([5, 3, 6, 2], seed=5)
    alone = results(model, src, src_mask, options)
    together = results(Ensemble([model, model]).eval(), src, src_mask, options)
    for got, expected in zip(together, alone, strict=True):
        assert_same(got, expected, 1e-5)


def averaged_log_probs(members: list[Seq2Seq]):
    """Teacher-forced mean of the members' ``log_softmax``, computed apart from
    :class:`Ensemble` (the reference search applies ``log_softmax`` again)."""

    def forward(src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        log_probs = [m(src, src_mask, tgt_in).float().log_softmax(-1) for m in members]
        return sum(log_probs) / len(log_probs)  # (1, T, V)

    return forward


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_mixed_ensemble_search_equals_uncached_reference(options):
    members = [make("transformer", seed=0), make("rnn-bahdanau", seed=1)]
    ensemble = Ensemble(members).eval()
    src, src_mask = source_batch([5, 3, 6, 4, 2], seed=6)
    batched = results(ensemble, src, src_mask, options)
    alone = [results(member, src, src_mask, options) for member in members]
    reference = averaged_log_probs(members)
    for row, got in enumerate(batched):
        length = int(src_mask[row].sum())
        expected = reference_beam_search(
            reference, src[row : row + 1, :length], src_mask[row : row + 1, :length], options
        )
        assert_same(got, expected, 1e-4)
    # the pair disagrees with each member somewhere, so the check above tests the averaging
    for member_results in alone:
        assert any(
            [t for t, _, _ in mine] != [t for t, _, _ in ours]
            for mine, ours in zip(member_results, batched, strict=True)
        )


def test_attention_comes_from_the_first_member_only_when_asked():
    first, second = make("rnn-bahdanau", seed=8), make("transformer", seed=9)
    ensemble = Ensemble([first, second]).eval()
    src, src_mask = source_batch([4, 3], seed=8)
    prev = torch.full((2,), BOS)
    with torch.inference_mode():
        _, _, expected = first.decode_step(prev, first.init_state(first.encode(src, src_mask)))
        states = [ensemble.init_state(ensemble.encode(src, src_mask)) for _ in range(2)]
        _, _, attention = ensemble.decode_step(prev, states[0], need_attention=True)
        _, _, none = ensemble.decode_step(prev, states[1])
        maps = ensemble.attention_maps(src, src_mask, prev.unsqueeze(1))  # (B, L, H, T, S)
    assert torch.equal(attention, expected)
    assert none is None
    assert maps.shape == (2, 1, 1, 1, src.size(1))  # the RNN's single alignment


def transformer_config(max_positions: int) -> ModelConfig:
    """A tiny Transformer with ``max_positions`` positions."""
    section = TransformerConfig(d_model=16, num_heads=2, encoder_layers=1, decoder_layers=1,
                                ff_size=32)  # fmt: skip
    return ModelConfig(family="transformer", max_positions=max_positions, transformer=section)


def test_the_length_limit_is_the_smallest_members():
    torch.manual_seed(0)
    wide, narrow = (build_model(transformer_config(p), 14, 14).eval() for p in (64, 12))
    rnn = make("rnn-bahdanau")
    assert Ensemble([wide, narrow, rnn]).max_positions == 12
    assert Ensemble([rnn, wide]).max_positions == 64
    assert Ensemble([rnn, rnn]).max_positions is None
    # a long output (no EOS before 11 tokens): it ends at the narrow member's 12 positions
    src, src_mask = source_batch([10], seed=1)
    options = DecodeConfig(beam_size=2, min_length=11, max_length_ratio=5.0, length_penalty=0.0)
    for search in (greedy_search, beam_search):
        found = search(Ensemble([wide, narrow]).eval(), src, src_mask, BOS, EOS, options)
        hypothesis = found[0] if search is greedy_search else found[0][0]
        assert len(hypothesis.tokens) + 1 == 12


# ----- checkpoints and attn-translate ---------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(corpus) -> dict[str, Tokenizer]:
    """``joint``: one model for both sides; ``base``: separate models; ``other_target`` and
    ``other_source``: ``base`` with one side's SentencePiece model trained on other sentences
    (the same vocabulary size, other pieces)."""
    src = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    tgt = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    separate = TokenizerConfig(vocab_size=48, joint=False)
    base = train_tokenizer(src[:200], tgt[:200], separate)
    other = train_tokenizer(src[200:], tgt[200:], separate)
    assert other.tgt_vocab_size == base.tgt_vocab_size
    assert other.src_vocab_size == base.src_vocab_size
    return {
        "joint": train_tokenizer(src, tgt, TokenizerConfig(vocab_size=64)),
        "base": base,
        "other_target": Tokenizer(base.src_model, other.tgt_model),
        "other_source": Tokenizer(other.src_model, base.tgt_model),
    }


def write_checkpoint(
    path: Path, tokenizer: Tokenizer, model: ModelConfig, seed: int = 0, beam: int = 3
) -> Path:
    """A translation checkpoint of an untrained, seeded model (arbitrary but fixed outputs)."""
    config = Config(data=DataConfig(max_length=8), model=model,
                    decode=DecodeConfig(beam_size=beam, max_length_offset=5))  # fmt: skip
    torch.manual_seed(seed)
    built = build_model(model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": to_plain(config), "tokenizer": tokenizer.state_dict(),
             "model": built.state_dict()}  # fmt: skip
    save_checkpoint(state, path)
    return path


RNN = ModelConfig(family="rnn", rnn=KINDS["rnn-bahdanau"].rnn)


@pytest.fixture(scope="module")
def checkpoints(tokenizers, tmp_path_factory) -> dict[str, Path]:
    """``a.pt`` (Transformer, beam 3) and the run directory ``b/`` (RNN, another seed, beam 2)
    with one tokenizer; ``narrow.pt`` (12 positions) with it too; ``base.pt``,
    ``other-target.pt`` and ``other-source.pt`` with the tokenizers of the same names."""
    folder = tmp_path_factory.mktemp("ensemble")
    joint = tokenizers["joint"]
    return {
        "a": write_checkpoint(folder / "a.pt", joint, transformer_config(32)),
        "b": write_checkpoint(folder / "b" / "best.pt", joint, RNN, seed=1, beam=2).parent,
        "narrow": write_checkpoint(folder / "narrow.pt", joint, transformer_config(12), seed=2),
        **{
            name: write_checkpoint(folder / f"{name.replace('_', '-')}.pt", tokenizers[name], RNN)
            for name in ("base", "other_target", "other_source")
        },
    }


def translate_cli(*arguments: object, stdin: str | None = None):
    """Run attn-translate in-process."""
    from seq2seq_attn.cli import translate_app

    return CliRunner().invoke(translate_app, [str(a) for a in arguments], input=stdin)


@pytest.fixture()
def input_file(corpus, tmp_path) -> Path:
    """Six dev sources with a blank line among them."""
    lines = (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:5]
    path = tmp_path / "input.txt"
    path.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n", encoding="utf-8")
    return path


def test_cli_translates_with_an_ensemble(checkpoints, input_file, tmp_path):
    a, b = checkpoints["a"], checkpoints["b"]
    alone = translate_cli(a, input_file)
    assert alone.exit_code == 0, alone.output
    ensembled = translate_cli(a, input_file, "--ensemble", b)
    assert ensembled.exit_code == 0, ensembled.output
    outputs = ensembled.stdout.split("\n")[:-1]
    assert len(outputs) == 6 and outputs[2] == ""
    assert outputs != alone.stdout.split("\n")[:-1]
    with_itself = translate_cli(a, input_file, "--ensemble", a, "--ensemble", a)
    assert with_itself.exit_code == 0, with_itself.output
    assert with_itself.stdout == alone.stdout
    attention = tmp_path / "attention.json"
    drawn = translate_cli(a, input_file, "--ensemble", b, "--attention", attention)
    assert drawn.exit_code == 0, drawn.output
    assert "attention: from the ensemble's first model" in " ".join(drawn.output.split())
    assert drawn.stdout.startswith(ensembled.stdout)


@pytest.mark.parametrize("side", ["target", "source"])
def test_cli_refuses_members_with_another_tokenizer(checkpoints, input_file, side):
    first, other = checkpoints["base"], checkpoints[f"other_{side}"]
    result = translate_cli(
        first, input_file, "--ensemble", checkpoints["base"], "--ensemble", other
    )
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.split())
    assert f"their {side} tokenizers (SentencePiece models) differ" in words
    assert ("source tokenizers are not supported" in words) == (side == "source")
    assert "same tokenizer" in words
    flat = "".join(result.output.split())  # paths wrapped by the console are whole again
    assert str(first) in flat and str(other) in flat


def test_cli_ensemble_errors_name_the_member(checkpoints, input_file, tmp_path):
    missing = translate_cli(checkpoints["a"], input_file, "--ensemble", tmp_path / "gone.pt")
    assert missing.exit_code == 1
    assert "gone.pt: no such checkpoint file" in " ".join(missing.output.split())
    (tmp_path / "empty").mkdir()
    empty = translate_cli(checkpoints["a"], input_file, "--ensemble", tmp_path / "empty")
    assert empty.exit_code == 2
    assert "a directory without best.pt or last.pt" in " ".join(empty.output.split())


def test_loaded_ensemble_takes_the_first_decode_settings_and_the_smallest_limit(checkpoints):
    translator = open_translator(
        checkpoints["b"],
        TranslationSettings(device="cpu"),
        [checkpoints["narrow"], checkpoints["a"]],
    )
    assert isinstance(translator.model, Ensemble)
    assert len(translator.model.members) == 3
    assert translator.model.max_positions == 12
    assert translator.decode.beam_size == 2  # b's decode section, not a's
    long_line = " ".join(["ta zo li fadoro"] * 10)
    (hypothesis,) = translator.translate([long_line])
    assert len(hypothesis.tokens) < 12
