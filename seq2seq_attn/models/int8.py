"""Int8 inference on the CPU: every matrix-shaped linear layer of a trained model, the output
projection included, computed in int8 with dynamic activation quantization.

Weights are quantized once, symmetrically per output row (scale = row max |w| / 127, zero
point 0); each call quantizes its input per tensor from its own range (fbgemm/oneDNN
``quantized::linear_dynamic``; oneDNN packs layers as wide as a vocabulary projection, where it
is the faster) and returns fp32. A Transformer feed-forward block's ReLU runs
inside its first int8 layer (``quantized::linear_relu_dynamic``: the same output, without a pass
over the block's widest activations). Embeddings, layer norms, recurrent encoder cells and
softmax stay fp32; so do attention scores, except that a Transformer's decoding caches may keep
keys and values in bf16 and attend in it (``attention_dtype``). This is what ``--precision int8``
of ``attn-translate``/``attn-serve`` runs (bf16 caches where the CPU computes bf16 natively); a
quantized model is for translating only (its packed weights are not parameters: nothing of it
is saved or trained).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from .transformer import FeedForward

__all__ = ["WIDE_OUTPUTS", "Int8Linear", "int8_supported", "quantize_int8"]

_TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero weight row

WIDE_OUTPUTS = 2048
"""An int8 layer with at least this many outputs is packed by oneDNN on a CPU with VNNI (int8
dot products without saturation) where torch has oneDNN; in the shipped configs that is only
the vocabulary projection. oneDNN's dynamic int8 linear ran 1.1-1.5x fbgemm's for 2,048-8,000
outputs of 256-512 inputs on an AMD EPYC with AVX-512 VNNI, and level with it or slower for
narrower layers (docs/benchmarks.md)."""

_ENGINE_SWITCH = threading.Lock()  # packing with another engine sets torch's global one


def int8_supported() -> bool:
    """Whether this torch build has a quantized CPU engine (x86/fbgemm or qnnpack on ARM)."""
    return any(engine != "none" for engine in torch.backends.quantized.supported_engines)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` in int8 (per output row) and ``x`` quantized per call.

    Built from fp32 weights by :meth:`from_linears`; the packed weights belong to :attr:`engine`:
    oneDNN for a layer of at least :data:`WIDE_OUTPUTS` outputs on a CPU with VNNI where torch
    has it, else the quantized engine active at that moment (``torch.backends.quantized.engine``).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, relu: bool = False) -> None:
        """Quantize ``weight`` ``(out, in)`` per output row and pack it with ``bias`` ``(out,)``;
        ``relu``: apply ``max(0, .)`` to the output inside the int8 kernel."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.relu = relu
        weight = weight.detach().float().cpu()
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(_TINY)
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # torch deprecates creating quantized tensors (pytorch#184982); the pinned torch has
            # them, and the packed weight below is the only place one lives (tests catch removal)
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            quantized = torch.quantize_per_channel(
                weight, scales.double(), zero_points, 0, torch.qint8
            )
        bias = None if bias is None else bias.detach().float().cpu()
        with _ENGINE_SWITCH:
            self.engine = _packing_engine(self.out_features)
            active = torch.backends.quantized.engine
            torch.backends.quantized.engine = self.engine
            try:
                self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
            finally:
                torch.backends.quantized.engine = active

    @classmethod
    def from_linears(cls, *layers: nn.Linear, relu: bool = False) -> Int8Linear:
        """One int8 layer computing ``layers`` (same input size) side by side: its output is
        their outputs concatenated along the last dimension (a fused Q/K/V projection), passed
        through a ReLU where ``relu``."""
        weight = torch.cat([layer.weight for layer in layers])
        biases = [layer.bias for layer in layers]
        if all(bias is None for bias in biases):
            return cls(weight, None, relu)
        bias = torch.cat(
            [
                torch.zeros(layer.out_features, device=layer.weight.device)
                if bias is None
                else bias
                for layer, bias in zip(layers, biases, strict=True)
            ]
        )
        return cls(weight, bias, relu)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in) -> (..., out)``, fp32.

        The engine quantizes the input with one range for the whole tensor (its min and max),
        so a row's output can change in the last bits with the other rows of the call: int8
        translations may differ with batch composition. Per-row ranges would avoid that, but
        the extra passes over the input cost as much as the int8 matmul saves (measured).
        """
        flat = x.reshape(-1, self.in_features).float()  # (N, in)
        # reduce_range=False: full 8-bit activations (x86/oneDNN and VNNI do not saturate)
        kernel = (
            torch.ops.quantized.linear_relu_dynamic
            if self.relu
            else torch.ops.quantized.linear_dynamic
        )
        output = kernel(flat, self._packed, False)  # (N, out)
        return output.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """Sizes, as ``nn.Linear`` prints them, and the engine."""
        fused = ", relu" if self.relu else ""
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, int8{fused} ({self.engine})"


def _packing_engine(out_features: int) -> str:
    """The quantized engine to pack a layer of ``out_features`` outputs with (see
    :data:`WIDE_OUTPUTS`)."""
    wide = out_features >= WIDE_OUTPUTS and _cpu_has_vnni()
    if wide and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


def _cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI, which oneDNN needs for full-range int8 inputs (torch warns
    of accuracy issues without it); False where torch cannot tell."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe and probe())


def quantize_int8(model: nn.Module, attention_dtype: torch.dtype | None = None) -> int:
    """Replace, in place, every ``nn.Linear`` of ``model`` (on the CPU, in eval mode) by an
    :class:`Int8Linear`, and give each :class:`~seq2seq_attn.attention.MultiHeadAttention` its
    fused int8 Q/K/V and K/V projections; a ReLU feed-forward block's first layer applies the
    ReLU itself. Layers with one output (an additive attention's energy vector ``v``: a dot
    product whose error would go straight into the attention scores) stay fp32.

    ``attention_dtype`` (``torch.bfloat16`` where the CPU computes it natively; None: fp32):
    the dtype in which a Transformer's decoding caches keep keys and values and its attention
    multiplies them (``MultiHeadAttention.cache_dtype``). The caches are copied at every beam
    step, so halving them made a Transformer's 1-thread beam search about 1.1x as fast on an AMD
    EPYC (docs/benchmarks.md); the softmax stays fp32.

    Returns:
        How many linear layers are now int8. Raises ``ValueError`` for a model on another
        device or in training mode, and ``RuntimeError`` where torch has no quantized engine.
    """
    if not int8_supported():
        raise RuntimeError("this torch build has no quantized CPU engine for int8")
    if model.training:
        raise ValueError("int8 quantization is for inference: call model.eval() first")
    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        raise ValueError("int8 quantization runs on the CPU: move the model with .cpu() first")
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.cache_dtype = attention_dtype
            module.fused_projections["qkv"] = Int8Linear.from_linears(
                module.q_proj, module.k_proj, module.v_proj
            )
            module.fused_projections["kv"] = Int8Linear.from_linears(module.k_proj, module.v_proj)
    replaced = 0
    for module in model.modules():
        if isinstance(module, FeedForward) and module.activation is F.relu:
            module.linear1 = Int8Linear.from_linears(module.linear1, relu=True)
            module.activation = _applied_by_linear1
            replaced += 1
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.out_features > 1:
                setattr(parent, name, Int8Linear.from_linears(child))
                replaced += 1
    return replaced


def _applied_by_linear1(x: Tensor) -> Tensor:
    """A feed-forward block's activation once its int8 ``linear1`` applies the ReLU itself."""
    return x
