"""Forward+backward time of the project's MultiHeadAttention against two references.

Compared side by side, interleaved within one run (the machine is noisy, so only ratios measured
together mean anything):

- ``ours``: ``seq2seq_attn.attention.MultiHeadAttention``;
- ``torch_mha``: ``torch.nn.MultiheadAttention(batch_first=True)``;
- ``bare``: four ``nn.Linear`` projections around ``F.scaled_dot_product_attention``, the least
  work any multi-head layer can do.

Each case is encoder-style self-attention over a padded batch (key padding mask, lengths drawn
between T/2 and T), in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    python scripts/bench_attention.py            # the full table of the foundation issue
    python scripts/bench_attention.py --quick    # two shapes, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_attn.attention import MultiHeadAttention, padding_mask


class BareAttention(nn.Module):
    """The floor: separate q/k/v/out projections around torch's fused attention kernel."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(d_model, d_model) for _ in range(4)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x (B, T, D)``, ``mask (B, 1, 1, T)`` True = may attend -> ``(B, T, D)``."""
        batch, length, d_model = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.num_heads, -1).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
        return self.out_proj(context.transpose(1, 2).reshape(batch, length, d_model))


def build_cases(d_model: int, num_heads: int, x: Tensor, lengths: Tensor) -> dict[str, Callable]:
    """The three implementations, sharing one set of weights, as closures returning outputs."""
    ours = MultiHeadAttention(d_model, num_heads)
    reference = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
    bare = BareAttention(d_model, num_heads)
    with torch.no_grad():
        projections = (ours.q_proj, ours.k_proj, ours.v_proj)
        reference.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        reference.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        reference.out_proj.load_state_dict(ours.out_proj.state_dict())
        bare.load_state_dict(ours.state_dict())
    key_ok = padding_mask(lengths, x.size(1))  # (B, T)
    return {
        "ours": lambda: ours(x, x, x, mask=key_ok[:, None, :])[0],
        "torch_mha": lambda: reference(x, x, x, key_padding_mask=~key_ok, need_weights=False)[0],
        "bare": lambda: bare(x, key_ok[:, None, None, :]),
        "_modules": (ours, reference, bare),
    }


def time_forward_backward(run: Callable[[], Tensor], grad: Tensor, bf16: bool) -> float:
    """Seconds for one forward (under autocast when ``bf16``) plus backward."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast:
        out = run()
    out.backward(grad.to(out.dtype))
    return time.perf_counter() - start


def measure(
    batch: int, length: int, d_model: int, heads: int, bf16: bool, repeats: int, warmup: int
) -> dict[str, float]:
    """Fastest milliseconds per implementation over runs interleaved round-robin.

    The minimum, not the median: other processes only ever add time, so the fastest run is the
    steadiest estimate of each implementation's own cost on a shared machine.
    """
    generator = torch.Generator().manual_seed(length * d_model + heads)
    x = torch.randn(batch, length, d_model, generator=generator, requires_grad=True)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    grad = torch.randn(batch, length, d_model, generator=generator)
    cases = build_cases(d_model, heads, x, lengths)
    modules = cases.pop("_modules")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, run in cases.items():
            for module in modules:
                module.zero_grad(set_to_none=True)
            x.grad = None
            seconds = time_forward_backward(run, grad, bf16)
            if round_index >= warmup:
                samples[name].append(seconds * 1000.0)
    return {name: min(values) for name, values in samples.items()}


def main() -> None:
    """Parse options, run every case and print the table of times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--d-models", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--heads", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="two shapes, fewer repeats")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.d_models, args.heads, args.repeats = [32], [256], [4, 8], 5
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {args.threads} threads, B={args.batch}, forward+backward, ")
    print(f"fastest of {args.repeats} interleaved runs (ms); ratios < 1 mean ours is faster\n")
    header = (
        f"{'T':>4} {'d_model':>7} {'heads':>5} {'prec':>5} | {'ours':>8} {'torch_mha':>9} "
        f"{'bare':>8} | {'ours/bare':>9} {'ours/torch':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios_bare, ratios_torch = [], []
    for length, d_model, heads, bf16 in itertools.product(
        args.lengths, args.d_models, args.heads, (False, True)
    ):
        ms = measure(args.batch, length, d_model, heads, bf16, args.repeats, args.warmup)
        to_bare, to_torch = ms["ours"] / ms["bare"], ms["ours"] / ms["torch_mha"]
        ratios_bare.append(to_bare)
        ratios_torch.append(to_torch)
        print(
            f"{length:>4} {d_model:>7} {heads:>5} {'bf16' if bf16 else 'fp32':>5} | "
            f"{ms['ours']:>8.2f} {ms['torch_mha']:>9.2f} {ms['bare']:>8.2f} | "
            f"{to_bare:>9.3f} {to_torch:>10.3f}",
            flush=True,
        )
    print("-" * len(header))
    print(
        f"ours/bare: geometric mean {statistics.geometric_mean(ratios_bare):.3f}, "
        f"max {max(ratios_bare):.3f} (target <= 1.10)"
    )
    print(
        f"ours/torch_mha: geometric mean {statistics.geometric_mean(ratios_torch):.3f}, "
        f"max {max(ratios_torch):.3f} (target <= 1.00)"
    )


if __name__ == "__main__":
    main()
