"""Int8 inference (``--precision int8``): the int8 linear layer against fp32 within the
quantization error bound, every model family quantized and still decoding like fp32, and the
option through attn-translate, the translator API and attn-serve's model description."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_models import KINDS, briefly_trained, decode_incrementally, padded_batch
from test_serve_api import make_client
from test_translate_cli import run_dir, source_lines, translate_cli  # noqa: F401 (fixture)
from torch import nn

from seq2seq_attn.attention import KVCache, MultiHeadAttention
from seq2seq_attn.models import Ensemble, int8
from seq2seq_attn.models.int8 import WIDE_OUTPUTS, Int8Linear, int8_supported, quantize_int8
from seq2seq_attn.models.transformer import FeedForward
from seq2seq_attn.translation import (
    TranslationError,
    TranslationSettings,
    open_translator,
    torch_backend,
)
from seq2seq_attn.translation.torch_backend import open_checkpoints

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not int8_supported(), reason="this torch build has no quantized engine"),
]

# Teacher-forced log-probabilities of the briefly trained tiny models, int8 against fp32.
INT8_LOG_PROB_ATOL = 0.1


def error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The largest error int8 may add to ``x @ weight.T`` ``(N, out)``: half a quantization
    step of every weight (step: row max / 127) times ``|x|``, plus half an activation step
    (tensor range / 255) times ``|w|``, summed over the inputs."""
    weight_steps = weight.abs().amax(dim=1) / 127  # (out,)
    activation_step = (x.max().clamp_min(0) - x.min().clamp_max(0)) / 255
    from_weights = x.abs().sum(dim=1, keepdim=True) * weight_steps / 2  # (N, out)
    from_inputs = weight.abs().sum(dim=1) * activation_step / 2  # (out,)
    return from_weights + from_inputs + 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_within_the_quantization_error_of_fp32(bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    x = torch.randn(5, 7, 64) * torch.rand(5, 7, 1) * 4  # (B, T, in), rows of varied range
    quantized = Int8Linear.from_linears(linear)
    with torch.no_grad():
        expected, found = linear(x), quantized(x)
    assert found.shape == (5, 7, 48) and found.dtype == torch.float32
    gap = (found - expected).abs().flatten(0, 1)  # (N, out)
    assert (gap <= error_bound(x.flatten(0, 1), linear.weight.detach())).all()
    assert gap.max() > 0  # really int8: fp32 would be exact


@pytest.mark.parametrize("vnni", [True, False])
def test_a_vocabulary_wide_int8_layer_is_packed_by_onednn_within_the_quantization_error(
    vnni, monkeypatch
):
    if vnni and not int8._cpu_has_vnni():
        pytest.skip("this CPU has no VNNI, which oneDNN's full-range int8 needs")
    monkeypatch.setattr(int8, "_cpu_has_vnni", lambda: vnni)
    torch.manual_seed(0)
    active = torch.backends.quantized.engine
    wide = "onednn" if vnni and "onednn" in torch.backends.quantized.supported_engines else active
    x = torch.randn(9, 64) * torch.rand(9, 1) * 4  # (N, in), rows of varied range
    for outputs, engine in [(WIDE_OUTPUTS, wide), (WIDE_OUTPUTS - 1, active)]:
        linear = nn.Linear(64, outputs)
        quantized = Int8Linear.from_linears(linear)
        assert quantized.engine == engine and torch.backends.quantized.engine == active
        with torch.no_grad():
            gap = (quantized(x) - linear(x)).abs()  # (N, out)
        assert (gap <= error_bound(x, linear.weight.detach())).all()
        assert gap.max() > 0


def test_a_fused_int8_projection_is_its_layers_side_by_side():
    torch.manual_seed(0)
    layers = [nn.Linear(32, 32), nn.Linear(32, 32, bias=False), nn.Linear(32, 16)]
    x = torch.randn(6, 32)
    fused = Int8Linear.from_linears(*layers)(x)
    separate = torch.cat([Int8Linear.from_linears(layer)(x) for layer in layers], dim=-1)
    torch.testing.assert_close(fused, separate, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_family_decodes_in_int8_like_fp32(kind):
    model = briefly_trained(kind)
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    real = torch.arange(tgt_in.size(1)) < torch.tensor(tgt_lengths)[:, None]  # (B, T)
    with torch.no_grad():
        fp32 = model(src, src_mask, tgt_in).log_softmax(-1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features > 1]
    assert quantize_int8(model) == len(linears) > 0
    modules = list(model.modules())
    assert not any(isinstance(m, nn.Linear) and m.out_features > 1 for m in modules)
    for attention in (m for m in modules if isinstance(m, MultiHeadAttention)):
        assert set(attention.fused_projections) == {"qkv", "kv"}
    with torch.no_grad():
        teacher_forced = model(src, src_mask, tgt_in).log_softmax(-1)
        incremental, attention = decode_incrementally(model, src, src_mask, tgt_in)
    gap = (teacher_forced - fp32)[real].abs().max().item()
    assert 0 < gap < INT8_LOG_PROB_ATOL, f"int8 log-probs off by {gap:.3f}"
    step_gap = (incremental.log_softmax(-1) - fp32)[real].abs().max().item()
    assert step_gap < INT8_LOG_PROB_ATOL, f"incremental int8 log-probs off by {step_gap:.3f}"
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 6))


def test_quantizing_an_ensemble_quantizes_every_member():
    members = [briefly_trained("transformer-pre", steps=2), briefly_trained("bahdanau", steps=2)]
    per_member = [
        sum(isinstance(m, nn.Linear) and m.out_features > 1 for m in member.modules())
        for member in members
    ]
    assert quantize_int8(Ensemble(members).eval()) == sum(per_member)


def test_quantizing_refuses_a_model_in_training_mode():
    model = briefly_trained("bahdanau", steps=1).train()
    with pytest.raises(ValueError, match=r"inference: call model\.eval\(\)"):
        quantize_int8(model)


def test_int8_translation_runs_on_the_cpu_only(run_dir):  # noqa: F811
    settings = TranslationSettings(device="cpu", precision="int8")
    translator = open_translator(run_dir, settings)
    assert translator.precision.name == "int8"
    assert any(isinstance(m, Int8Linear) for m in translator.model.modules())
    with make_client(translator) as client:
        assert client.get("/v1/model").json()["precision"] == "int8"
        lines = ["ein kleiner Test .", "noch ein Satz"]
        served = client.post("/v1/translate", json={"text": lines}).json()["translations"]
    assert [entry["translation"] for entry in served] == translator.detokenize(
        translator.translate(lines)
    )
    if not torch.cuda.is_available():
        with pytest.raises(TranslationError, match="--device"):
            open_translator(run_dir, TranslationSettings(device="cuda", precision="int8"))
    else:
        with pytest.raises(TranslationError, match="int8 search runs on the CPU"):
            open_checkpoints([run_dir / "best.pt"], TranslationSettings("cuda", "int8"))


def test_attn_translate_precision_int8(run_dir, corpus):  # noqa: F811
    lines = source_lines(corpus, 20)
    stdin = "".join(line + "\n" for line in lines)
    fp32 = translate_cli(run_dir, "--beam", "3", stdin=stdin)
    int8 = translate_cli(run_dir, "--beam", "3", "--precision", "int8", stdin=stdin)
    assert fp32.exit_code == 0 and int8.exit_code == 0, int8.output
    fp32_lines, int8_lines = fp32.stdout.splitlines(), int8.stdout.splitlines()
    assert len(int8_lines) == len(lines)
    same = sum(a == b for a, b in zip(fp32_lines, int8_lines, strict=True))
    assert same >= len(lines) // 2, f"only {same} of {len(lines)} lines equal fp32's"
    refused = translate_cli(run_dir, "--precision", "int4", stdin="a\n")
    assert refused.exit_code != 0 and "fp16 or int8" in refused.output


@pytest.mark.parametrize("kind", ["transformer-pre", "transformer-post"])
def test_a_relu_feed_forward_block_applies_its_relu_inside_the_int8_layer(kind):
    model = briefly_trained(kind, steps=2)
    blocks = [m for m in model.modules() if isinstance(m, FeedForward)]
    activation = blocks[0].activation  # relu for transformer-pre, gelu for transformer-post
    torch.manual_seed(0)
    x = torch.randn(4, 5, blocks[0].linear1.in_features) * 3  # (B, T, D)
    with torch.no_grad():  # each block with separate int8 layers and its activation between
        expected = [
            Int8Linear.from_linears(block.linear2)(
                activation(Int8Linear.from_linears(block.linear1)(x))
            )
            for block in blocks
        ]
    quantize_int8(model)
    fused = activation is F.relu
    assert all(block.linear1.relu == fused and not block.linear2.relu for block in blocks)
    assert all((block.activation is activation) != fused for block in blocks)
    with torch.no_grad():
        for block, output in zip(blocks, expected, strict=True):
            assert torch.equal(block(x), output)  # the same numbers, one pass fewer


def test_a_bf16_cache_keeps_keys_and_values_in_bf16_and_attends_like_torch():
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4).eval()
    x = torch.randn(3, 5, 32)  # (B, T, D)
    everywhere = torch.ones(3, 1, 5, dtype=torch.bool)

    def decode(cache_dtype):  # (self-attention step by step, cross-attention, the caches)
        attention.cache_dtype = cache_dtype
        self_cache, cross_cache = KVCache(static=False), attention.memory_cache(x)
        with torch.no_grad():
            steps = [attention(x[:, t : t + 1], x[:, t : t + 1], x[:, t : t + 1],
                               cache=self_cache)[0] for t in range(5)]  # fmt: skip
            cross = attention(x, None, None, everywhere, cache=cross_cache)[0]
        return torch.cat(steps, dim=1), cross, self_cache, cross_cache

    steps, cross, self_cache, cross_cache = decode(torch.bfloat16)
    with torch.no_grad():  # torch's attention of the projections rounded to bf16, in fp32
        q, k, v = (t.bfloat16().float() for t in attention._project(x, x, x))  # (B, H, T, Dh)
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        full = F.scaled_dot_product_attention(q, k, v)
        expected_steps, expected_cross = (
            attention.out_proj(context.transpose(1, 2).reshape(3, 5, 32))
            for context in (causal, full)
        )
    for cache in (self_cache, cross_cache):
        assert cache.key.dtype == cache.value.dtype == torch.bfloat16
        assert cache.key.is_contiguous() and cache.value.is_contiguous()
    assert torch.equal(self_cache.key.float(), k) and torch.equal(cross_cache.value.float(), v)
    assert steps.dtype == cross.dtype == torch.float32
    torch.testing.assert_close(steps, expected_steps, atol=1e-2, rtol=0)
    torch.testing.assert_close(cross, expected_cross, atol=1e-2, rtol=0)
    fp32_steps, fp32_cross, fp32_cache, fp32_cross_cache = decode(None)
    assert fp32_cache.key.dtype == fp32_cross_cache.key.dtype == torch.float32
    assert fp32_cross_cache.key.is_contiguous() and fp32_cross_cache.value.is_contiguous()
    assert (steps - fp32_steps).abs().max() > 0 and (cross - fp32_cross).abs().max() > 0
    attention.cache_dtype = torch.bfloat16
    with torch.no_grad():  # weights asked for: still fp32 distributions over the keys
        _, weights = attention(x, None, None, everywhere, True, attention.memory_cache(x))
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 5), atol=1e-6, rtol=0)


def test_int8_decoding_with_bf16_caches_stays_within_the_int8_error():
    model = briefly_trained("transformer-pre")
    src, src_mask, tgt_in, tgt_lengths = padded_batch()
    real = torch.arange(tgt_in.size(1)) < torch.tensor(tgt_lengths)[:, None]  # (B, T)
    with torch.no_grad():
        fp32 = model(src, src_mask, tgt_in).log_softmax(-1)
    quantize_int8(model, torch.bfloat16)
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert all(m.cache_dtype == torch.bfloat16 for m in attentions)
    with torch.no_grad():
        state = model.init_state(model.encode(src, src_mask))
        steps = []
        for position in range(tgt_in.size(1)):
            logits, state, _ = model.decode_step(tgt_in[:, position], state)
            steps.append(logits.log_softmax(-1))
    caches = [*state.self_caches, *state.cross_caches]
    assert all(c.key.dtype == c.value.dtype == torch.bfloat16 for c in caches)
    gap = (torch.stack(steps, 1) - fp32)[real].abs().max().item()
    assert gap < INT8_LOG_PROB_ATOL, f"int8 log-probs with bf16 caches off by {gap:.3f}"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_int8_translator_keeps_bf16_caches_where_the_cpu_computes_bf16(
    run_dir,  # noqa: F811
    monkeypatch,
    native_bf16,
):
    monkeypatch.setattr(torch_backend, "cpu_has_fast_bf16", lambda: native_bf16)
    translator = open_translator(run_dir, TranslationSettings(device="cpu", precision="int8"))
    attentions = [m for m in translator.model.modules() if isinstance(m, MultiHeadAttention)]
    assert attentions
    expected = torch.bfloat16 if native_bf16 else None
    assert all(m.cache_dtype == expected for m in attentions)
    assert all(translator.detokenize(translator.translate(["ein kleiner Test ."])))
