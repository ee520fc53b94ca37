"""The RNNs' faster training paths: the decoders' fused teacher-forced loop (models/rnn_loop.py),
its hand-written backward against autograd's numerical gradients and its outputs and every
parameter's gradient against the step-by-step autograd loop it replaces (float64 and bf16
autocast); the GRU encoder's padded runs against torch's own packed bidirectional GRU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_models import SRC_VOCAB, TGT_VOCAB, make, padded_batch, small_rnn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_attn.models import build_model
from seq2seq_attn.models.int8 import int8_supported, quantize_int8
from seq2seq_attn.models.rnn_loop import bahdanau_gru_loop, luong_gru_loop

pytestmark = pytest.mark.usefixtures("one_thread")

FUSED = ["bahdanau", "luong-dot", "luong-general"]
STEPPED = ["luong-concat", "lstm-bahdanau-deep", "lstm-luong-unidirectional"]
LOOP_NODES = {"_BahdanauGRULoopBackward", "_LuongGRULoopBackward"}


def loop_inputs(batch=2, steps=3, source=4, hidden=3, attention=5, seed=0):
    """Random float64 inputs of both loops (one source position masked in the second row)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    gates = 3 * hidden
    mask = torch.ones(batch, source, dtype=torch.bool)
    mask[1, -1] = False
    common = {"ahead": rand(batch, steps, gates), "hidden0": rand(batch, hidden),
              "memory": rand(batch, source, hidden), "mask": mask}  # fmt: skip
    bahdanau = common | {
        "keys": rand(batch, source, attention), "query_weight": rand(attention, hidden),
        "energy_weight": rand(1, attention), "step_weight": rand(gates, hidden),
        "hidden_weight": rand(gates, hidden), "hidden_bias": rand(gates),
    }  # fmt: skip
    luong = common | {
        "keys": rand(batch, source, hidden), "step_weight": rand(gates, hidden),
        "hidden_weight": rand(gates, hidden), "hidden_bias": rand(gates),
        "combine_weight": rand(hidden, 2 * hidden),
    }  # fmt: skip
    return bahdanau, luong


def test_the_bahdanau_loop_backward_passes_gradcheck():
    inputs, _ = loop_inputs()
    names = list(inputs)

    def loop(*values):
        hiddens, contexts, _ = bahdanau_gru_loop(**dict(zip(names, values, strict=True)))
        return hiddens, contexts

    assert torch.autograd.gradcheck(loop, tuple(inputs.values()))


def test_the_luong_loop_backward_passes_gradcheck():
    _, inputs = loop_inputs()
    names = list(inputs)

    def loop(*values):
        return luong_gru_loop(**dict(zip(names, values, strict=True)))[0]

    assert torch.autograd.gradcheck(loop, tuple(inputs.values()))


def logits_and_grads(model, fused: bool, bf16: bool = False):
    """Teacher-forced logits of the padded batch and every parameter's gradient of a loss on
    them, through the fused loop or the stepped one."""
    model.decoder.fused = fused
    model.zero_grad()
    src, src_mask, tgt_in, _ = padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(src, src_mask, tgt_in)  # (B, T, V)
    target = torch.randint(0, TGT_VOCAB, tgt_in.shape, generator=torch.Generator().manual_seed(2))
    F.cross_entropy(logits.float().flatten(0, 1), target.flatten()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, graph_nodes(logits)


def graph_nodes(tensor: torch.Tensor) -> set[str]:
    """The names of every autograd node behind ``tensor``."""
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kind", FUSED)
def test_the_fused_loop_equals_the_stepped_loop_in_float64(kind):
    model = make(kind).double()  # eval mode: no dropout, gradients all the same
    fused_logits, fused_grads, nodes = logits_and_grads(model, fused=True)
    stepped_logits, stepped_grads, stepped_nodes = logits_and_grads(model, fused=False)
    assert nodes & LOOP_NODES and not stepped_nodes & LOOP_NODES
    torch.testing.assert_close(fused_logits, stepped_logits, rtol=1e-10, atol=1e-12)
    assert fused_grads.keys() == stepped_grads.keys() == dict(model.named_parameters()).keys()
    for name, grad in stepped_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", FUSED)
def test_the_fused_loop_under_bf16_autocast_follows_the_stepped_loop(kind):
    model = make(kind)
    fused_logits, fused_grads, _ = logits_and_grads(model, fused=True, bf16=True)
    stepped_logits, stepped_grads, _ = logits_and_grads(model, fused=False, bf16=True)
    assert fused_logits.dtype == stepped_logits.dtype == torch.bfloat16
    assert (fused_logits.float() - stepped_logits.float()).abs().max() < 0.05
    for name, grad in stepped_grads.items():
        assert fused_grads[name].dtype == torch.float32
        cosine = F.cosine_similarity(fused_grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


@pytest.mark.parametrize("kind", STEPPED)
def test_other_configurations_step_through_autograd(kind):
    _, _, nodes = logits_and_grads(make(kind), fused=True)
    assert not nodes & LOOP_NODES


@pytest.mark.skipif(not int8_supported(), reason="this torch build has no quantized engine")
def test_an_int8_model_steps_through_autograd_and_keeps_its_outputs():
    model = make("bahdanau")
    src, src_mask, tgt_in, _ = padded_batch()
    quantize_int8(model)
    with torch.no_grad():
        fused_maps = model.attention_maps(src, src_mask, tgt_in)
        model.decoder.fused = False
        stepped_maps = model.attention_maps(src, src_mask, tgt_in)
    torch.testing.assert_close(fused_maps, stepped_maps)


@pytest.mark.parametrize(
    "options",
    [{}, {"encoder_layers": 2}, {"bidirectional": False},
     {"encoder_layers": 3, "bidirectional": False}],
)  # fmt: skip
def test_the_gru_encoder_equals_torchs_packed_gru(options):
    torch.manual_seed(0)
    encoder = build_model(small_rnn(**options), SRC_VOCAB, TGT_VOCAB).double().eval().encoder
    src, src_mask, _, _ = padded_batch()
    output = encoder(src, src_mask)
    (output.states.sin().sum() + output.final.cos().sum()).backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    encoder.zero_grad()
    embedded = encoder.embed(src)
    lengths = src_mask.sum(dim=1)
    packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
    packed_outputs, final = encoder.rnn(packed)  # torch's own GRU module
    states, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.size(1))
    directions = 2 if encoder.rnn.bidirectional else 1
    top = final[-directions:].transpose(0, 1).reshape(len(src), -1)  # (B, H)
    (states.sin().sum() + top.cos().sum()).backward()
    torch.testing.assert_close(output.states, states, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(output.final, top, rtol=1e-12, atol=1e-12)
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
