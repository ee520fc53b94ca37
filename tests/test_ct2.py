"""CTranslate2 export: every Transformer option the project trains maps exactly (teacher-forced
log-probabilities and search outputs equal the project's), the exported folder translates with
the project's search rules, and what cannot be exported says so."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from seq2seq_attn.checkpoint import CheckpointError, save_checkpoint
from seq2seq_attn.config import Config, ModelConfig, TokenizerConfig, TransformerConfig, to_plain
from seq2seq_attn.export import ExportError, export_checkpoint, is_exported
from seq2seq_attn.models import build_model
from seq2seq_attn.tokenizer import BOS_ID, train_tokenizer
from seq2seq_attn.translation import TranslationError, TranslationSettings, open_translator

CPU = TranslationSettings(device="cpu")

ctranslate2 = pytest.importorskip("ctranslate2")
pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

SMALL = {"d_model": 32, "num_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff_size": 48}
ARCHITECTURES = {
    "pre-norm, sinusoidal, relu, tied, joint": ({}, True),
    "post-norm": ({"norm_position": "post"}, True),
    "learned positions": ({"positional": "learned"}, True),
    "gelu": ({"activation": "gelu"}, True),
    "untied": ({"tie_embeddings": False}, True),
    "separate vocabularies": ({}, False),
    "post-norm, learned, gelu, untied, separate, 3+1 layers, 2 heads, d 24": (
        {"norm_position": "post", "positional": "learned", "activation": "gelu",
         "tie_embeddings": False, "d_model": 24, "num_heads": 2, "encoder_layers": 3,
         "decoder_layers": 1, "ff_size": 40},
        False,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(corpus):
    """A joint and a separate SentencePiece tokenizer trained on the toy corpus."""
    sources = (corpus / "train.src").read_text(encoding="utf-8").splitlines()
    targets = (corpus / "train.tgt").read_text(encoding="utf-8").splitlines()
    return {
        joint: train_tokenizer(sources, targets, TokenizerConfig(vocab_size=60, joint=joint))
        for joint in (True, False)
    }


def write_checkpoint(path, tokenizer, transformer: dict, seed: int = 0, decode=None):
    """A translation checkpoint of a seeded, untrained Transformer; returns its path.

    The weights are randomised past their initialisation (layer norms and biases included) so
    that a wrong mapping of any tensor shows in the log-probabilities.
    """
    config = Config(
        model=ModelConfig(
            max_positions=128, transformer=TransformerConfig(**{**SMALL, **transformer})
        )
    )
    if decode is not None:
        config = dataclasses.replace(config, decode=decode)
    torch.manual_seed(seed)
    model = build_model(
        config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    save_checkpoint(
        {"config": to_plain(config), "tokenizer": tokenizer.state_dict(),
         "model": model.state_dict()},
        path,
    )  # fmt: skip
    return path


def sentences(corpus, count: int = 12) -> list[str]:
    """Dev sources of the toy corpus, and one blank line."""
    lines = (corpus / "dev.src").read_text(encoding="utf-8").splitlines()[:count]
    return [*lines[:3], "", *lines[3:]]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_export_is_exact_for_every_architecture(name, tokenizers, corpus, tmp_path):
    transformer, joint = ARCHITECTURES[name]
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[joint], transformer)
    exported = export_checkpoint(checkpoint, tmp_path / "ct2")
    assert is_exported(exported)
    ours = open_translator(checkpoint, CPU)
    theirs = open_translator(exported, CPU)
    lines = [line for line in sentences(corpus) if line]

    # Teacher-forced log-probabilities of our greedy outputs (EOS included), scored as text:
    # the text's own tokens, cut to max_positions - 1 as the scorer does.
    texts = ours.detokenize(ours.translate(lines))
    targets = [ids[:127] for ids in ours.tokenizer.encode_tgt(texts)]
    src_ids = ours.tokenizer.encode_src(lines)
    for line_ids, target, ct2_log_probs in zip(
        src_ids, targets, theirs.score(lines, texts), strict=True
    ):
        src = torch.tensor([[*line_ids, 3]])  # (1, S) with EOS
        tgt_in = torch.tensor([[BOS_ID, *target]])  # (1, T)
        with torch.no_grad():
            log_probs = ours.model(src, torch.ones_like(src, dtype=torch.bool), tgt_in)
        expected = log_probs.log_softmax(-1)[0].gather(1, torch.tensor([*target, 3])[:, None])
        torch.testing.assert_close(
            torch.tensor(ct2_log_probs), expected.squeeze(1), atol=1e-4, rtol=0
        )

    # Greedy and beam outputs (untrained models: many reach the length limit).
    for beam in (1, 3):
        ours.decode = theirs.decode = dataclasses.replace(ours.decode, beam_size=beam)
        for mine, other in zip(ours.translate(lines), theirs.translate(lines), strict=True):
            assert other.tokens == mine.tokens
            assert other.score == pytest.approx(mine.score, abs=1e-4)


def test_n_best_lists_and_length_penalty_are_ours(tokenizers, corpus, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[True], {}, seed=3)
    exported = export_checkpoint(checkpoint, tmp_path / "ct2")
    lines = sentences(corpus)
    for alpha in (0.0, 1.0):
        settings = TranslationSettings(device="cpu", beam_size=4, n_best=4, length_penalty=alpha)
        ours = open_translator(checkpoint, settings).n_best(lines)
        theirs = open_translator(exported, settings).n_best(lines)
        assert theirs[3] == [ours[3][0]]  # the blank line: one empty hypothesis
        for mine, other in zip(ours, theirs, strict=True):
            assert [h.tokens for h in other] == [h.tokens for h in mine]
            assert [h.score for h in other] == pytest.approx([h.score for h in mine], abs=1e-4)


def test_int8_export_translates_and_writes_the_decode_settings(tokenizers, corpus, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[False], {}, seed=4)
    exported = export_checkpoint(checkpoint, tmp_path / "ct2", quantization="int8")
    info = json.loads((exported / "seq2seq_attn.json").read_text())
    assert info["quantization"] == "int8" and info["decode"]["length_penalty"] == 0.6
    assert (exported / "src.model").is_file() and (exported / "tgt.model").is_file()
    translator = open_translator(exported, CPU)
    assert translator.compute_type.startswith("int8")
    found = translator.translate(sentences(corpus))
    assert len(found) == 13 and any(hypothesis.tokens for hypothesis in found)


def test_export_refuses_what_it_cannot_do(tokenizers, tmp_path):
    tokenizer = tokenizers[True]
    rnn = Config(model=ModelConfig(family="rnn"))
    torch.manual_seed(0)
    model = build_model(rnn.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, True)
    save_checkpoint(
        {"config": to_plain(rnn), "tokenizer": tokenizer.state_dict(),
         "model": model.state_dict()},
        tmp_path / "rnn.pt",
    )  # fmt: skip
    with pytest.raises(ExportError, match="no RNN decoder; translate it with attn-translate"):
        export_checkpoint(tmp_path / "rnn.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizer, {})
    with pytest.raises(ExportError, match="'int4' is not known"):
        export_checkpoint(checkpoint, tmp_path / "out", quantization="int4")
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    with pytest.raises(ExportError, match="not empty; choose another -o, or pass --force"):
        export_checkpoint(checkpoint, occupied)
    with pytest.raises(ExportError, match="not a folder written by attn-export, so --force"):
        export_checkpoint(checkpoint, occupied, force=True)
    assert (occupied / "keep.txt").read_text() == "precious"
    with pytest.raises(ExportError, match="holds the checkpoint"):  # a run dir: never -o
        export_checkpoint(checkpoint, tmp_path, force=True)
    assert checkpoint.is_file()

    earlier = export_checkpoint(checkpoint, tmp_path / "ct2")
    with pytest.raises(ExportError, match="pass --force to replace an earlier export"):
        export_checkpoint(checkpoint, earlier, quantization="int8")
    export_checkpoint(checkpoint, earlier, quantization="int8", force=True)
    assert json.loads((earlier / "seq2seq_attn.json").read_text())["quantization"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_damaged_folder_says_to_export_again(tokenizers, corpus, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[True], {})
    for damage in ("tokenizer", "decode settings"):
        folder = export_checkpoint(checkpoint, tmp_path / damage)
        if damage == "tokenizer":
            (folder / "src.model").unlink()
        else:
            info = json.loads((folder / "seq2seq_attn.json").read_text())
            del info["decode"]
            (folder / "seq2seq_attn.json").write_text(json.dumps(info))
        with pytest.raises(TranslationError, match="export the model again") as raised:
            open_translator(folder, CPU)
        assert raised.value.unreadable
        result = cli("translate_app", folder, tmp_path / "model.pt")
        assert result.exit_code == 1 and "export the model again" in " ".join(result.output.split())


def cli(app_name: str, *arguments):
    """Run attn-export or attn-translate in-process; returns typer's result."""
    import seq2seq_attn.cli as commands

    return runner.invoke(getattr(commands, app_name), [str(a) for a in arguments])


def test_the_cli_exports_and_translates_like_the_checkpoint(tokenizers, corpus, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[True], {}, seed=5)
    exported = cli("export_app", checkpoint, "-o", tmp_path / "ct2")
    assert exported.exit_code == 0, exported.output
    source, reference = tmp_path / "dev.src", tmp_path / "dev.ref"
    source.write_text("\n".join(sentences(corpus)) + "\n", encoding="utf-8")
    reference.write_text("\n".join(sentences(corpus)) + "\n", encoding="utf-8")
    outputs = {}
    for name, model in (("checkpoint", checkpoint), ("folder", tmp_path / "ct2")):
        for extra in ((), ("--n-best", "2", "--beam", "2")):
            target = tmp_path / f"{name}{len(extra)}.txt"
            result = cli("translate_app", model, source, "-o", target, "--ref", reference,
                         "--json", *extra)  # fmt: skip
            assert result.exit_code == 0, result.output
            scores = json.loads(result.stdout)
            outputs[name, len(extra)] = (target.read_text(encoding="utf-8"), scores["bleu"])
    assert outputs["folder", 0] == outputs["checkpoint", 0]
    assert outputs["folder", 0][0].count("\n") == 13
    folder_lines = outputs["folder", 4][0].splitlines()
    checkpoint_lines = outputs["checkpoint", 4][0].splitlines()
    assert [line.rsplit(" ||| ", 1)[0] for line in folder_lines] == [
        line.rsplit(" ||| ", 1)[0] for line in checkpoint_lines
    ]
    for mine, other in zip(checkpoint_lines, folder_lines, strict=True):
        assert float(other.rsplit(" ||| ", 1)[1]) == pytest.approx(
            float(mine.rsplit(" ||| ", 1)[1]), abs=2e-4
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("{folder}", "--show-attention"), "keeps no attention weights"),
        (("{folder}", "--attention", "{tmp}/a.json"), "need the .pt checkpoint"),
        (("{folder}", "--precision", "bf16"), "with --compute-type"),
        (("{folder}", "--compute-type", "int4"), "'int4' is not available on cpu"),
        (("{checkpoint}", "--compute-type", "int8"), "for folders written by attn-export"),
        (("{folder}", "--device", "cuda:7"), "--device: invalid value 'cuda:7'"),
        (("{checkpoint}", "--ensemble", "{folder}"), "ensembles need .pt checkpoints"),
        (("{folder}", "--ensemble", "{checkpoint}"), "--ensemble needs .pt checkpoints"),
    ],
)
def test_translate_options_that_need_the_other_kind_of_model(
    arguments, message, tokenizers, tmp_path
):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[True], {})
    export_checkpoint(checkpoint, tmp_path / "ct2")
    values = {"folder": tmp_path / "ct2", "checkpoint": checkpoint, "tmp": tmp_path}
    result = cli("translate_app", *[a.format(**values) for a in arguments])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_export_cli_errors(tokenizers, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt", tokenizers[True], {})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    for arguments, message in (
        ((tmp_path / "nothing.pt", "-o", tmp_path / "o"), "nothing.pt"),
        ((checkpoint, "-o", tmp_path / "busy"), "pass --force"),
        ((checkpoint, "-o", tmp_path / "o", "--quantization", "int3"), "choose one of none, int8"),
    ):
        result = cli("export_app", *arguments)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
