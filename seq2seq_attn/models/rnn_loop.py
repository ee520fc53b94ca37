"""The RNN decoders' teacher-forced time loop as one autograd function, for one GRU layer with
Bahdanau's additive attention or Luong's dot / general attention (the shipped RNN configs).

Stepped through autograd (:meth:`AttentionDecoder._step` in a Python loop), a training step
spent most of its time on work that the recurrence does not need one position at a time, and
on bf16 elementwise maths that the CPU runs several times slower than fp32. Here:

- the weight gradients of the per-step matmuls are one matmul each over all positions after the
  backward loop (``dW = sum_t dY_t^T X_t``), not ``T`` small ones added into ``.grad``;
- the gradient of the attention values (and of Luong's keys) is one batched matmul over all
  positions; Bahdanau's key gradient is added in place into one buffer;
- the query projection and the recurrent matmul, which read the same state, are one matmul;
- matmuls run in the autocast dtype (bf16 on the CPU), the gates, ``tanh`` and softmax in fp32.

The backward pass (back-propagation through time) is written out below; tests compare outputs
and gradients with the step-by-step autograd loop in float64. Shapes: ``B`` sentences, ``T``
target positions, ``S`` source positions, ``H`` hidden size, ``G = 3H`` gates, ``A`` the
additive score's size.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..attention import masked_softmax


def loop_dtypes(reference: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(matmul dtype, elementwise dtype)`` for a loop called on ``reference``'s device: the
    autocast dtype and fp32 under autocast, else ``reference``'s dtype (at least fp32) for both."""
    device = reference.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device), torch.float32
    dtype = torch.promote_types(reference.dtype, torch.float32)
    return dtype, dtype


def gru_forward(
    input_gates: Tensor, hidden_gates: Tensor, hidden: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """GRU update from ``W_i x + b_i`` and ``W_h h + b_h`` (``(B, G)``) and ``h`` (``(B, H)``):
    the new state and what :func:`gru_backward` needs (reset, update, candidate, ``h_n`` gates)."""
    i_r, i_z, i_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = hidden_gates.chunk(3, dim=-1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    new = candidate + update * (hidden - candidate)  # (1 - z) * n + z * h
    return new, (reset, update, candidate, h_n)


def gru_backward(
    grad: Tensor, hidden: Tensor, saved: tuple[Tensor, ...], d_input: Tensor, d_hidden_gates: Tensor
) -> Tensor:
    """From the new state's gradient ``(B, H)``, write the gradients of the input gates and of
    the hidden gates into ``d_input`` and ``d_hidden_gates`` (``(B, G)`` each); return the
    direct part of the previous state's gradient ``(B, H)``."""
    reset, update, candidate, h_n = saved
    size = grad.size(-1)
    d_reset, d_update, d_candidate = d_input.split(size, dim=-1)
    torch.mul(grad * (1.0 - update), 1.0 - candidate * candidate, out=d_candidate)  # pre-tanh
    torch.mul(d_candidate * h_n, reset * (1.0 - reset), out=d_reset)
    torch.mul(grad * (hidden - candidate), update * (1.0 - update), out=d_update)
    d_hidden_gates[:, : 2 * size] = d_input[:, : 2 * size]
    torch.mul(d_candidate, reset, out=d_hidden_gates[:, 2 * size :])
    return grad * update


def softmax_backward(weights: Tensor, grad: Tensor) -> Tensor:
    """Gradient of the scores from that of the softmax ``weights`` (both ``(B, S)``); masked
    keys have weight 0, so they get 0."""
    return weights * (grad - (weights * grad).sum(dim=-1, keepdim=True))


def matmul(x: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``x @ weight`` with ``x`` cast to ``weight``'s dtype, the result in ``dtype``."""
    return (x.to(weight.dtype) @ weight).to(dtype)


def time_major(batch_major: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, T, ...)`` -> a contiguous ``(T, B, ...)`` copy in ``dtype`` (or the reverse)."""
    return batch_major.transpose(0, 1).to(dtype, memory_format=torch.contiguous_format, copy=True)


def weight_gradient(grads: Tensor, inputs: Tensor, mm_dtype: torch.dtype) -> Tensor:
    """``sum_t grads_t^T inputs_t`` over every position: ``(..., O)`` and ``(..., I)`` ->
    ``(O, I)``, one matmul."""
    grads, inputs = grads.reshape(-1, grads.size(-1)), inputs.reshape(-1, inputs.size(-1))
    return grads.to(mm_dtype).t() @ inputs.to(mm_dtype)


def input_grads(
    ctx, d_ahead: Tensor, d_hidden0: Tensor, d_keys: Tensor, weights: Tensor, d_contexts: Tensor
) -> tuple[Tensor, ...]:
    """The gradients of a loop's ``ahead``, ``hidden0``, ``keys`` and ``memory``, each in its
    input's dtype (``ctx.input_dtypes``), from the time-major ``d_ahead`` ``(T, B, G)``,
    ``weights`` ``(T, B, S)`` and ``d_contexts`` ``(T, B, H)``: the memory's is
    ``sum_t w_t^T dc_t``, one batched matmul."""
    mm_dtype = ctx.dtypes[0]
    d_memory = torch.bmm(weights.permute(1, 2, 0).to(mm_dtype), time_major(d_contexts, mm_dtype))
    grads = (d_ahead.transpose(0, 1), d_hidden0, d_keys, d_memory)
    return tuple(g.to(d) for g, d in zip(grads, ctx.input_dtypes, strict=True))


class _BahdanauGRULoop(torch.autograd.Function):
    """Bahdanau's decoder with one GRU layer over ``T`` teacher-forced positions (see
    :func:`bahdanau_gru_loop`). Buffers are time-major, so that each position's rows are
    contiguous; the ``tanh`` of every position (``(B, S, A)``) is kept for the backward."""

    @staticmethod
    def forward(ctx, ahead, hidden0, keys, memory, mask, query_weight, energy_weight,
                step_weight, hidden_weight, hidden_bias):  # fmt: skip
        mm_dtype, dtype = loop_dtypes(ahead)
        with torch.autocast(ahead.device.type, enabled=False):
            (batch, steps, gates), size = ahead.shape, hidden0.size(-1)
            # The recurrent matmul and the query projection both read s_{t-1}: one matmul.
            state_weight = torch.cat([hidden_weight, query_weight]).to(mm_dtype)  # (G + A, H)
            step_weight_t = step_weight.to(mm_dtype).t()  # (H, G)
            energy = energy_weight.reshape(-1).to(dtype)  # (A,)
            keys_f, values = keys.to(dtype), memory.to(mm_dtype)  # (B, S, A), (B, S, H)
            ahead_steps = time_major(ahead, dtype)  # (T, B, G)
            hidden, bias = hidden0.to(dtype), hidden_bias.to(dtype)
            hiddens = ahead.new_empty((steps, batch, size), dtype=dtype)
            contexts = torch.empty_like(hiddens)
            weights = ahead.new_empty((steps, batch, keys.size(1)), dtype=dtype)
            # one (B, S, A) tensor per position: each under glibc's mmap threshold (32 MiB), so
            # that freed ones are reused, where one (T, B, S, A) buffer would fault in every page
            tanhs, saved_gates = [], []
            for t in range(steps):
                projected = matmul(hidden, state_weight.t(), dtype)  # (B, G + A)
                tanhs.append(torch.add(keys_f, projected[:, gates:].unsqueeze(1)).tanh_())
                weights[t] = masked_softmax(tanhs[t] @ energy, mask)  # (B, S)
                contexts[t] = torch.bmm(weights[t].to(mm_dtype).unsqueeze(1), values).squeeze(1)
                input_gates = ahead_steps[t] + matmul(contexts[t], step_weight_t, dtype)
                hidden, gate_values = gru_forward(input_gates, projected[:, :gates] + bias, hidden)
                hiddens[t] = hidden
                saved_gates.append(gate_values)
        ctx.mark_non_differentiable(weights)
        ctx.save_for_backward(hidden0, values, state_weight, step_weight, energy, hiddens,
                              contexts, weights, *tanhs)  # fmt: skip
        ctx.saved_gates, ctx.dtypes = saved_gates, (mm_dtype, dtype)
        ctx.input_dtypes = [ahead.dtype, hidden0.dtype, keys.dtype, memory.dtype]
        return hiddens.transpose(0, 1), contexts.transpose(0, 1), weights.transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hiddens, d_contexts, _d_weights):
        (hidden0, values, state_weight, step_weight, energy, hiddens, contexts, weights,
         *tanhs) = ctx.saved_tensors  # fmt: skip
        mm_dtype, dtype = ctx.dtypes
        steps, batch, size = hiddens.shape
        gates = 3 * size
        d_hiddens, d_contexts = time_major(d_hiddens, dtype), time_major(d_contexts, dtype)
        step_weight = step_weight.to(mm_dtype)  # (G, H)
        d_ahead = hiddens.new_empty((steps, batch, gates))
        d_state = hiddens.new_empty((steps, batch, state_weight.size(0)))  # (T, B, G + A)
        d_keys = torch.zeros_like(tanhs[0])  # (B, S, A)
        slopes = torch.empty_like(d_keys)
        d_energy = torch.zeros_like(energy)
        previous = torch.cat([hidden0.to(dtype).unsqueeze(0), hiddens[:-1]])  # (T, B, H)
        running = torch.zeros_like(hiddens[0])  # d s_t from the later positions
        for t in reversed(range(steps)):
            running = gru_backward(running + d_hiddens[t], previous[t], ctx.saved_gates[t],
                                   d_ahead[t], d_state[t, :, :gates])  # fmt: skip
            d_contexts[t] += matmul(d_ahead[t], step_weight, dtype)  # (B, H)
            d_weight = torch.bmm(values, d_contexts[t].to(mm_dtype).unsqueeze(2)).squeeze(2)
            d_scores = softmax_backward(weights[t], d_weight.to(dtype))  # (B, S)
            # d(tanh input) = d_scores * v * (1 - tanh^2), for every key and feature
            torch.ops.aten.tanh_backward.grad_input(energy, tanhs[t], grad_input=slopes)
            d_keys.addcmul_(slopes, d_scores.unsqueeze(2))
            torch.bmm(d_scores.unsqueeze(1), slopes, out=d_state[t, :, gates:].unsqueeze(1))
            d_energy.addmv_(tanhs[t].flatten(0, 1).t(), d_scores.flatten())
            running = running + matmul(d_state[t], state_weight, dtype)
        d_state_weight = weight_gradient(d_state, previous, mm_dtype)
        return (*input_grads(ctx, d_ahead, running, d_keys, weights, d_contexts), None,
                d_state_weight[gates:], d_energy.view(1, -1),
                weight_gradient(d_ahead, contexts, mm_dtype), d_state_weight[:gates],
                d_state[..., :gates].sum(dim=(0, 1)))  # fmt: skip


def bahdanau_gru_loop(
    ahead: Tensor, hidden0: Tensor, keys: Tensor, memory: Tensor, mask: Tensor,
    query_weight: Tensor, energy_weight: Tensor, step_weight: Tensor, hidden_weight: Tensor,
    hidden_bias: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Bahdanau's decoder (attend from ``s_{t-1}`` with ``v^T tanh(W_q s + K)``, then a GRU step
    on ``[E y_{t-1}; c_t]``) over every teacher-forced position.

    Args:
        ahead: ``(B, T, G)`` the embedding half of the input gates, with the input bias.
        hidden0: ``(B, H)`` the first state; keys ``(B, S, A)`` ``W_k h_j + b``; memory
            ``(B, S, H)`` the values; mask ``(B, S)`` True at real source tokens.
        query_weight ``(A, H)``, energy_weight ``(1, A)``, step_weight ``(G, H)`` (the
        context's half of the input gates), hidden_weight ``(G, H)``, hidden_bias ``(G,)``.

    Returns:
        ``(states (B, T, H), contexts (B, T, H), attention weights (B, T, S))``; the weights
        are not differentiable.
    """
    return _BahdanauGRULoop.apply(
        ahead, hidden0, keys, memory, mask, query_weight, energy_weight, step_weight,
        hidden_weight, hidden_bias,
    )  # fmt: skip


class _LuongGRULoop(torch.autograd.Function):
    """Luong's decoder with one GRU layer and a dot-product score against ``keys`` over ``T``
    teacher-forced positions (see :func:`luong_gru_loop`); buffers are time-major."""

    @staticmethod
    def forward(ctx, ahead, hidden0, keys, memory, mask, step_weight, hidden_weight,
                hidden_bias, combine_weight):  # fmt: skip
        mm_dtype, dtype = loop_dtypes(ahead)
        with torch.autocast(ahead.device.type, enabled=False):
            (batch, steps, _), size = ahead.shape, hidden0.size(-1)
            step_weight_t = step_weight.to(mm_dtype).t()  # (H, G)
            hidden_weight_t = hidden_weight.to(mm_dtype).t()  # (H, G)
            combine_weight_t = combine_weight.to(mm_dtype).t()  # (2H, H)
            keys_mm, values = keys.to(mm_dtype), memory.to(mm_dtype)  # (B, S, H) each
            ahead_steps = time_major(ahead, dtype)  # (T, B, G)
            hidden, bias = hidden0.to(dtype), hidden_bias.to(dtype)
            feed = torch.zeros_like(hidden)  # h~_0
            # [c_t; h_t] of every position, side by side: what the combination reads
            both = ahead.new_empty((steps, batch, 2 * size), dtype=dtype)
            features = ahead.new_empty((steps, batch, size), dtype=dtype)
            weights = ahead.new_empty((steps, batch, keys.size(1)), dtype=dtype)
            saved_gates = []
            for t in range(steps):
                input_gates = ahead_steps[t] + matmul(feed, step_weight_t, dtype)
                hidden_gates = matmul(hidden, hidden_weight_t, dtype) + bias
                hidden, gate_values = gru_forward(input_gates, hidden_gates, hidden)
                both[t, :, size:] = hidden
                scores = torch.bmm(keys_mm, hidden.to(mm_dtype).unsqueeze(2)).squeeze(2)
                weights[t] = masked_softmax(scores.to(dtype), mask)  # (B, S)
                both[t, :, :size] = torch.bmm(weights[t].to(mm_dtype).unsqueeze(1), values)[:, 0]
                feed = torch.tanh(matmul(both[t], combine_weight_t, dtype), out=features[t])
                saved_gates.append(gate_values)
        ctx.mark_non_differentiable(weights)
        ctx.save_for_backward(hidden0, keys_mm, values, step_weight, hidden_weight,
                              combine_weight, both, features, weights)  # fmt: skip
        ctx.saved_gates, ctx.dtypes = saved_gates, (mm_dtype, dtype)
        ctx.input_dtypes = [ahead.dtype, hidden0.dtype, keys.dtype, memory.dtype]
        return features.transpose(0, 1), weights.transpose(0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_features, _d_weights):
        (hidden0, keys, values, step_weight, hidden_weight, combine_weight, both, features,
         weights) = ctx.saved_tensors  # fmt: skip
        mm_dtype, dtype = ctx.dtypes
        steps, batch, size = features.shape
        d_features = time_major(d_features, dtype)
        step_weight, hidden_weight, combine_weight = (
            w.to(mm_dtype) for w in (step_weight, hidden_weight, combine_weight)
        )  # fmt: skip
        d_ahead = features.new_empty((steps, batch, 3 * size))
        d_hidden_gates = torch.empty_like(d_ahead)
        d_context, d_scores = torch.empty_like(features), torch.empty_like(weights)
        hiddens = both[..., size:]  # (T, B, H)
        previous = torch.cat([hidden0.to(dtype).unsqueeze(0), hiddens[:-1]])
        feeds_before = torch.cat([torch.zeros_like(previous[:1]), features[:-1]])
        d_feed, running = torch.zeros_like(features[0]), torch.zeros_like(features[0])
        for t in reversed(range(steps)):
            # d_features becomes the gradient before the tanh of h~_t
            d_features[t].add_(d_feed).mul_(1.0 - features[t] * features[t])
            d_both = matmul(d_features[t], combine_weight, dtype)  # (B, 2H): [c_t; h_t]
            d_context[t] = d_both[:, :size]
            d_weight = torch.bmm(values, d_context[t].to(mm_dtype).unsqueeze(2)).squeeze(2)
            d_scores[t] = softmax_backward(weights[t], d_weight.to(dtype))  # (B, S)
            d_hidden = d_both[:, size:] + running
            d_hidden += torch.bmm(d_scores[t].to(mm_dtype).unsqueeze(1), keys).squeeze(1)
            running = gru_backward(d_hidden, previous[t], ctx.saved_gates[t], d_ahead[t],
                                   d_hidden_gates[t])  # fmt: skip
            running = running + matmul(d_hidden_gates[t], hidden_weight, dtype)
            d_feed = matmul(d_ahead[t], step_weight, dtype)
        d_keys = torch.bmm(d_scores.permute(1, 2, 0).to(mm_dtype), time_major(hiddens, mm_dtype))
        return (*input_grads(ctx, d_ahead, running, d_keys, weights, d_context), None,
                weight_gradient(d_ahead, feeds_before, mm_dtype),
                weight_gradient(d_hidden_gates, previous, mm_dtype),
                d_hidden_gates.sum(dim=(0, 1)),
                weight_gradient(d_features, both, mm_dtype))  # fmt: skip


def luong_gru_loop(
    ahead: Tensor, hidden0: Tensor, keys: Tensor, memory: Tensor, mask: Tensor,
    step_weight: Tensor, hidden_weight: Tensor, hidden_bias: Tensor, combine_weight: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Luong's decoder (a GRU step on ``[E y_{t-1}; h~_{t-1}]``, attend from ``h_t`` with
    ``h_t . k_j``, ``h~_t = tanh(W_c [c_t; h_t])``) over every teacher-forced position.

    Args:
        ahead: ``(B, T, G)`` the embedding half of the input gates, with the input bias.
        hidden0: ``(B, H)`` the first state; keys ``(B, S, H)`` (the memory for "dot", ``W k``
            for "general"); memory ``(B, S, H)`` the values; mask ``(B, S)``.
        step_weight ``(G, H)`` (the input-feeding half of the input gates), hidden_weight
        ``(G, H)``, hidden_bias ``(G,)``, combine_weight ``(H, 2H)``.

    Returns:
        ``(attentional states h~ (B, T, H), attention weights (B, T, S))``; the weights are
        not differentiable.
    """
    return _LuongGRULoop.apply(ahead, hidden0, keys, memory, mask, step_weight, hidden_weight,
                               hidden_bias, combine_weight)  # fmt: skip
