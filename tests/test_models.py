"""Both model families through the one protocol: shapes, padding, incremental decoding, state
selection, bf16 autocast against fp32, overfitting a tiny batch, weight tying and configuration
errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seq2seq_attn.attention import MultiHeadAttention
from seq2seq_attn.config import ConfigError, ModelConfig, RNNConfig, TransformerConfig
from seq2seq_attn.models import Seq2Seq, build_model
from seq2seq_attn.models.common import Dropout

SRC_VOCAB, TGT_VOCAB = 23, 19
ATOL = 1e-5


def small_rnn(**options) -> ModelConfig:
    """A tiny RNN configuration."""
    sizes = {"embedding_size": 16, "hidden_size": 32, "attention_size": 24}
    return ModelConfig(family="rnn", dropout=0.1, rnn=RNNConfig(**(sizes | options)))


def small_transformer(**options) -> ModelConfig:
    """A tiny Transformer configuration."""
    sizes = {"d_model": 32, "num_heads": 4, "encoder_layers": 2, "decoder_layers": 2}
    section = TransformerConfig(**(sizes | {"ff_size": 64} | options))
    return ModelConfig(family="transformer", dropout=0.1, max_positions=64, transformer=section)


KINDS = {
    "bahdanau": small_rnn(decoder="bahdanau"),
    "luong-dot": small_rnn(decoder="luong", luong_score="dot"),
    "luong-general": small_rnn(decoder="luong", luong_score="general"),
    "luong-concat": small_rnn(decoder="luong", luong_score="concat"),
    "lstm-bahdanau-deep": small_rnn(cell="lstm", encoder_layers=2, decoder_layers=2),
    "lstm-luong-unidirectional": small_rnn(cell="lstm", decoder="luong", bidirectional=False),
    "transformer-pre": small_transformer(),
    "transformer-post": small_transformer(
        norm_position="post", positional="learned", activation="gelu"
    ),
}
kinds = pytest.mark.parametrize("kind", list(KINDS))


pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, seed: int = 0, joint: bool = False) -> Seq2Seq:
    """A seeded model of ``kind`` in eval mode."""
    torch.manual_seed(seed)
    vocab = (SRC_VOCAB, SRC_VOCAB) if joint else (SRC_VOCAB, TGT_VOCAB)
    return build_model(KINDS[kind], *vocab, joint_vocab=joint).eval()


def padded_batch(seed: int = 1):
    """Three sentences of different lengths, padded with a junk id (masks must hide it)."""
    generator = torch.Generator().manual_seed(seed)
    src_lengths, tgt_lengths = [7, 3, 5], [6, 2, 4]
    src = torch.randint(1, SRC_VOCAB, (3, 7), generator=generator)
    tgt_in = torch.randint(1, TGT_VOCAB, (3, 6), generator=generator)
    src_mask = torch.arange(7) < torch.tensor(src_lengths)[:, None]  # (B, S)
    src = src.masked_fill(~src_mask, 5)
    return src, src_mask, tgt_in, tgt_lengths


def decode_incrementally(model: Seq2Seq, src, src_mask, tgt_in):
    """Logits ``(B, T, V)`` and attention ``(B, T, S)`` from ``decode_step`` over ``tgt_in``."""
    state = model.init_state(model.encode(src, src_mask))
    logits, attention = [], []
    for position in range(tgt_in.size(1)):
        step_logits, state, step_attention = model.decode_step(tgt_in[:, position], state, True)
        logits.append(step_logits)
        attention.append(step_attention)
    return torch.stack(logits, 1), torch.stack(attention, 1)


# ----- shapes and dtypes ----------------------------------------------------------------------


@kinds
def test_shapes_and_dtypes(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    encoder_output = model.encode(src, src_mask)
    assert encoder_output.states.shape[:2] == (3, 7)
    assert model(src, src_mask, tgt_in).shape == (3, 6, TGT_VOCAB)
    logits, _, attention = model.decode_step(tgt_in[:, 0], model.init_state(encoder_output), True)
    assert logits.shape == (3, TGT_VOCAB) and logits.dtype == torch.float32
    assert attention.shape == (3, 7)
    maps = model.attention_maps(src, src_mask, tgt_in)
    layers, heads = (2, 4) if kind.startswith("transformer") else (1, 1)
    assert maps.shape == (3, layers, heads, 6, 7)


@kinds
def test_attention_is_a_distribution_over_real_source_tokens(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    _, attention = decode_incrementally(model, src, src_mask, tgt_in)  # (B, T, S)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 6))
    assert (attention.masked_select(~src_mask[:, None, :]) == 0).all()
    maps = model.attention_maps(src, src_mask, tgt_in)  # (B, L, H, T, S)
    torch.testing.assert_close(maps[:, -1].mean(1), attention, atol=ATOL, rtol=0)


def briefly_trained(kind: str, steps: int = 30) -> Seq2Seq:
    """A seeded model of ``kind`` without dropout, fitted in fp32 for a few steps to
    :func:`padded_batch`, so that its outputs clearly depend on the source (an untrained model's
    are near uniform, which hides a broken mask or a garbage step); in eval mode."""
    torch.manual_seed(0)
    model = build_model(replace(KINDS[kind], dropout=0.0), SRC_VOCAB, TGT_VOCAB).train()
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    tgt_out = next_token_targets(tgt_in, tgt_lengths)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(src, src_mask, tgt_in)  # (B, T, V)
        F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-100).backward()
        optimizer.step()
    return model.eval()


def next_token_targets(tgt_in, tgt_lengths):
    """``(B, T)`` next-token targets of :func:`padded_batch`, ``-100`` (ignored) at padding."""
    real = torch.arange(tgt_in.size(1)) < torch.tensor(tgt_lengths)[:, None]  # (B, T)
    return torch.roll(tgt_in, -1, dims=1).masked_fill(~real, -100)


def log_probs_loss_and_grads(model: Seq2Seq, bf16: bool):
    """Teacher-forced ``(log-probs (B, T, V) in fp32, mean token loss, flattened gradients)``
    on :func:`padded_batch`, computed in fp32 or under CPU bf16 autocast."""
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(src, src_mask, tgt_in)  # (B, T, V)
    assert logits.dtype == (torch.bfloat16 if bf16 else torch.float32)
    log_probs = logits.float().log_softmax(-1)
    targets = next_token_targets(tgt_in, tgt_lengths)
    loss = F.nll_loss(log_probs.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return log_probs.detach(), loss.item(), torch.cat([g.flatten() for g in grads])


# bf16 keeps 8 significant bits (relative rounding 2^-9). Over several seeds these briefly
# trained models stay within 0.06 (log-prob), 0.6% (loss) and 0.9992 (gradient cosine) of fp32;
# a source mask dropped under autocast moves some log-prob by 0.3 (RNN) to 7 (Transformer) and
# the gradient cosine below 0.99, and zeroed contexts or skipped layer norms move them further.
BF16_LOG_PROB_ATOL = 0.15
BF16_LOSS_RTOL = 0.02
BF16_GRAD_COSINE = 0.995


@kinds
def test_bf16_autocast_matches_fp32(kind):
    model = briefly_trained(kind)
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    real = torch.arange(tgt_in.size(1)) < torch.tensor(tgt_lengths)[:, None]  # (B, T)
    log_probs, loss, grads = log_probs_loss_and_grads(model, bf16=False)
    bf16_log_probs, bf16_loss, bf16_grads = log_probs_loss_and_grads(model, bf16=True)
    # Only real target positions count (padding is ignored by the loss and by search).
    gap = (bf16_log_probs - log_probs)[real].abs().max().item()
    assert gap < BF16_LOG_PROB_ATOL, f"teacher-forced log-probs off by {gap:.3f}"
    assert bf16_loss == pytest.approx(loss, rel=BF16_LOSS_RTOL)
    assert F.cosine_similarity(bf16_grads, grads, dim=0).item() > BF16_GRAD_COSINE
    # Incremental decoding (what search runs) under autocast, against fp32 teacher forcing.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        incremental, attention = decode_incrementally(model, src, src_mask, tgt_in)
    assert incremental.dtype == torch.bfloat16
    step_gap = (incremental.float().log_softmax(-1) - log_probs)[real].abs().max().item()
    assert step_gap < BF16_LOG_PROB_ATOL, f"incremental log-probs off by {step_gap:.3f}"
    assert (attention.masked_select(~src_mask[:, None, :]) == 0).all()


def test_models_use_the_projects_attention_not_torchs():
    for kind in KINDS:
        modules = list(make(kind).modules())
        assert not any(isinstance(m, nn.MultiheadAttention | nn.Transformer) for m in modules)
    layers = [m for m in make("transformer-pre").modules() if isinstance(m, MultiHeadAttention)]
    assert len(layers) == 2 + 2 * 2  # encoder self, decoder self and cross


# ----- padding, incremental decoding, state selection ----------------------------------------


@kinds
def test_padding_never_changes_a_sentence(kind):
    model = make(kind)
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    batch_logits = model(src, src_mask, tgt_in)
    for row, tgt_len in enumerate(tgt_lengths):
        src_len = int(src_mask[row].sum())
        one = slice(row, row + 1)
        alone = model(src[one, :src_len], src_mask[one, :src_len], tgt_in[one, :tgt_len])
        torch.testing.assert_close(batch_logits[row, :tgt_len], alone[0], atol=ATOL, rtol=0)


@kinds
def test_incremental_decoding_equals_teacher_forcing(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    incremental, _ = decode_incrementally(model, src, src_mask, tgt_in)
    torch.testing.assert_close(incremental, model(src, src_mask, tgt_in), atol=ATOL, rtol=0)


@kinds
def test_selecting_state_rows_equals_decoding_those_rows(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    state = model.init_state(model.encode(src, src_mask))
    for position in range(2):
        _, state, _ = model.decode_step(tgt_in[:, position], state)
    rows = torch.tensor([2, 0, 0])  # reorder and repeat, as a beam search does
    selected = state.select(rows)
    logits, _, attention = model.decode_step(tgt_in[rows, 2], selected, True)
    expected, expected_attention = decode_incrementally(
        model, src[rows], src_mask[rows], tgt_in[rows, :3]
    )
    torch.testing.assert_close(logits, expected[:, 2], atol=ATOL, rtol=0)
    torch.testing.assert_close(attention, expected_attention[:, 2], atol=ATOL, rtol=0)
    # The original state is untouched by stepping the selected one.
    original_logits, _, _ = model.decode_step(tgt_in[:, 2], state)
    torch.testing.assert_close(original_logits[rows], logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["bahdanau", "transformer-pre"])
def test_encoder_output_repeats_rows_for_beams(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    encoder_output = model.encode(src, src_mask)
    repeated = encoder_output.repeat_interleave(2)
    assert repeated.batch_size == 6 and repeated.mask.shape == (6, 7)
    logits, _, _ = model.decode_step(tgt_in[:, 0].repeat_interleave(2), model.init_state(repeated))
    single, _, _ = model.decode_step(tgt_in[:, 0], model.init_state(encoder_output))
    torch.testing.assert_close(logits, single.repeat_interleave(2, dim=0), atol=ATOL, rtol=0)


def test_transformer_refuses_positions_beyond_max_positions():
    model = make("transformer-pre")
    src = torch.ones(1, 65, dtype=torch.long)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(src, torch.ones(1, 65, dtype=torch.bool))


# ----- learning ---------------------------------------------------------------------------------


@kinds
def test_overfits_a_tiny_batch(kind):
    torch.manual_seed(0)
    model = build_model(replace(KINDS[kind], dropout=0.0), SRC_VOCAB, TGT_VOCAB).train()
    src, src_mask, tgt_in, _ = padded_batch()
    tgt_out = torch.roll(tgt_in, -1, dims=1)  # next-token targets (copying is learnable)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        logits = model(src, src_mask, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, TGT_VOCAB), tgt_out.reshape(-1))
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02


# ----- weight tying and parameter counts --------------------------------------------------------


def transformer_parameter_count(config: ModelConfig, src_vocab: int, tgt_vocab: int, joint: bool):
    """Parameters of a Transformer counted by hand from its hyperparameters."""
    t = config.transformer
    d, ff = t.d_model, t.ff_size
    attention = 4 * (d * d + d)
    feed_forward = d * ff + ff + ff * d + d
    norm = 2 * d
    layers = t.encoder_layers * (attention + feed_forward + 2 * norm)
    layers += t.decoder_layers * (2 * attention + feed_forward + 3 * norm)
    final_norms = 2 * norm if t.norm_position == "pre" else 0
    positions = 2 * config.max_positions * d if t.positional == "learned" else 0
    embeddings = tgt_vocab * d if joint else (src_vocab + tgt_vocab) * d
    if not t.tie_embeddings:
        embeddings += tgt_vocab * d  # the output projection
    return layers + final_norms + positions + embeddings


@pytest.mark.parametrize("kind", ["transformer-pre", "transformer-post"])
@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_tied_weights_are_one_tensor_counted_once(kind, joint, tie):
    config = replace(KINDS[kind], transformer=replace(KINDS[kind].transformer, tie_embeddings=tie))
    vocab = SRC_VOCAB if joint else TGT_VOCAB
    model = build_model(config, SRC_VOCAB, vocab, joint_vocab=joint)
    output, tgt_embed, src_embed = (
        model.output.weight,
        model.tgt_embed.weight,
        model.src_embed.weight,
    )
    assert (output.data_ptr() == tgt_embed.data_ptr()) == tie
    assert (src_embed.data_ptr() == tgt_embed.data_ptr()) == joint
    assert model.num_parameters() == transformer_parameter_count(config, SRC_VOCAB, vocab, joint)


def test_joint_vocabulary_shares_rnn_embeddings():
    separate = build_model(KINDS["bahdanau"], SRC_VOCAB, SRC_VOCAB)
    joint = build_model(KINDS["bahdanau"], SRC_VOCAB, SRC_VOCAB, joint_vocab=True)
    embed = joint.encoder.embed.weight
    assert embed.data_ptr() == joint.decoder.embed.weight.data_ptr()
    assert joint.num_parameters() == separate.num_parameters() - embed.numel()


def test_joint_vocabulary_needs_one_vocabulary_size():
    with pytest.raises(ValueError, match="joint_vocab"):
        build_model(KINDS["transformer-pre"], SRC_VOCAB, TGT_VOCAB, joint_vocab=True)


# ----- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, key, value",
    [
        (lambda: ModelConfig(family="cnn"), "model.family", "cnn"),
        (lambda: ModelConfig(dropout=1.0), "model.dropout", "1.0"),
        (lambda: ModelConfig(max_positions=0), "model.max_positions", "0"),
        (lambda: TransformerConfig(d_model=30, num_heads=4), "model.transformer.num_heads", "4"),
        (lambda: TransformerConfig(norm_position="middle"), "model.transformer.norm_position",
         "middle"),
        (lambda: TransformerConfig(activation="tanh"), "model.transformer.activation", "tanh"),
        (lambda: TransformerConfig(encoder_layers=0), "model.transformer.encoder_layers", "0"),
        (lambda: RNNConfig(cell="rnn"), "model.rnn.cell", "rnn"),
        (lambda: RNNConfig(decoder="vanilla"), "model.rnn.decoder", "vanilla"),
        (lambda: RNNConfig(luong_score="scaled_dot"), "model.rnn.luong_score", "scaled_dot"),
        (lambda: RNNConfig(hidden_size=33), "model.rnn.hidden_size", "33"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key_and_value(build, key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: invalid value '?{value}'?; "):
        build()


def test_default_config_builds_the_documented_sizes():
    config = ModelConfig()
    assert (config.transformer.d_model, config.transformer.num_heads) == (256, 4)
    assert (config.transformer.encoder_layers, config.transformer.ff_size) == (3, 1024)
    assert (config.rnn.embedding_size, config.rnn.hidden_size, config.rnn.cell) == (256, 512, "gru")


@kinds
def test_decode_step_without_attention_gives_the_same_logits(kind):
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    encoder_output = model.encode(src, src_mask)
    with_weights, _, attention = model.decode_step(
        tgt_in[:, 0], model.init_state(encoder_output), True
    )
    without, _, maybe = model.decode_step(tgt_in[:, 0], model.init_state(encoder_output))
    assert attention is not None and attention.shape == (3, 7)
    if kind.startswith("transformer"):
        assert maybe is None  # no weights asked: the fused kernel path
    torch.testing.assert_close(without, with_weights, atol=ATOL, rtol=0)


@kinds
def test_a_state_for_beams_equals_repeated_rows_and_survives_finished_sentences(kind):
    # init_state(beams=K) keeps what every beam shares once per sentence; decoding from it must
    # equal decoding from K copies of each row, also after a selection drops a sentence and
    # reorders beams within the others (what beam search does).
    model = make(kind)
    src, src_mask, tgt_in, _ = padded_batch()
    encoder_output = model.encode(src, src_mask)
    grouped = model.init_state(encoder_output, beams=2)
    repeated = model.init_state(encoder_output.repeat_interleave(2))
    prev = tgt_in[:, 0].repeat_interleave(2)  # (6,)
    logits, grouped, _ = model.decode_step(prev, grouped, True)
    expected, repeated, _ = model.decode_step(prev, repeated, True)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    rows = torch.tensor([1, 1, 4, 5])  # sentence 0: its beam 1 twice; sentence 1 dropped
    prev = tgt_in[rows // 2, 1]
    logits, _, attention = model.decode_step(prev, grouped.select(rows), True)
    expected, _, expected_attention = model.decode_step(prev, repeated.select(rows), True)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(attention, expected_attention, atol=ATOL, rtol=0)


def test_a_state_for_beams_refuses_selections_that_split_groups():
    model = make("transformer-pre")
    src, src_mask, _, _ = padded_batch()
    state = model.init_state(model.encode(src, src_mask), beams=2)
    with pytest.raises(ValueError, match="from one sentence's rows"):
        state.select(torch.tensor([0, 2]))  # one beam of sentence 0, one of sentence 1
    with pytest.raises(ValueError, match="whole number of groups of 2 beams"):
        state.select(torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_expectation(p, dtype):
    torch.manual_seed(0)
    dropout = Dropout(p).train()
    x = torch.ones(1000, 1000, dtype=dtype, requires_grad=True)
    out = dropout(x)
    assert out.dtype == dtype
    dropped = float((out.detach() == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.003)
    kept_value = float(out.detach()[out != 0][0])
    assert kept_value == pytest.approx(1 / (1 - p), rel=1e-2 if dtype == torch.bfloat16 else 1e-4)
    assert float(out.detach().float().mean()) == pytest.approx(1.0, abs=0.01)
    weights = torch.randn(1000, 1000, dtype=dtype)
    (out * weights).sum().backward()  # the gradient uses the forward pass's mask and scale
    torch.testing.assert_close(x.grad, (out * weights).detach())


def test_dropout_is_the_identity_in_eval_mode_and_reproducible_from_the_seed():
    x = torch.randn(64, 33)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(5)
    first = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.3).train()(x), first)
    assert not torch.equal(Dropout(0.3).train()(x), first)


@pytest.mark.parametrize("kind", ["bahdanau", "transformer-pre"])
def test_models_use_the_projects_dropout(kind):
    model = build_model(KINDS[kind], SRC_VOCAB, TGT_VOCAB)
    assert not any(isinstance(module, nn.Dropout) for module in model.modules())
    assert any(isinstance(module, Dropout) for module in model.modules())


# GRU models: torch's LSTM on the CPU runs kernels the FLOP counter does not see
@pytest.mark.parametrize(
    "kind", ["transformer-pre", "transformer-post", "bahdanau", "luong-dot", "luong-general"]
)
def test_linear_flops_per_token_equal_torchs_flop_counter(kind):
    model = make(kind, joint=False)
    src = torch.randint(1, SRC_VOCAB, (2, 7))  # no padding: every position counts
    src_mask, tgt_in = torch.ones_like(src, dtype=torch.bool), torch.randint(1, TGT_VOCAB, (2, 5))
    with FlopCounterMode(display=False) as counter:
        model(src, src_mask, tgt_in)
    counts = counter.get_flop_counts()["Global"]
    linear = sum(counts.get(op, 0) for op in (torch.ops.aten.mm, torch.ops.aten.addmm))
    per_source, per_target = model.linear_flops_per_token()
    rnn_decoder = getattr(model, "decoder", None)  # the RNN bridge runs once per sentence
    per_sentence = 0 if rnn_decoder is None else 2 * rnn_decoder.bridge.weight.numel()
    expected = per_source * src.numel() + per_target * tgt_in.numel() + per_sentence * 2
    assert linear == expected
