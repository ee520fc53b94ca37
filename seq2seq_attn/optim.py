"""One optimisation step and what it needs: the loss, the optimizer, the learning-rate schedule,
the moving average of the weights, and the :class:`Trainer` that runs steps with accumulation,
clipping and NaN/inf skipping through the model protocol only, in the precision
:mod:`~seq2seq_attn.device` resolved."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .batching import Batch
from .config import TrainConfig
from .device import Precision, keep_freed_memory
from .models import Seq2Seq
from .tokenizer import PAD_ID

logger = logging.getLogger(__name__)


LOSS_CHUNK_ELEMENTS = 1 << 20  # logits scored at once (4 MiB in fp32: the chunk stays in cache)


def label_smoothed_loss(
    logits: Tensor, target: Tensor, smoothing: float, pad_id: int = PAD_ID,
    grad_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Summed label-smoothed cross-entropy and summed NLL over non-PAD targets, in fp32.

    Same definition as ``F.cross_entropy(label_smoothing=smoothing)``: the target distribution
    is ``1 - smoothing`` on the gold token plus ``smoothing / V`` on every token. Only the
    loss is differentiable (the NLL is for reporting).

    Computed a few rows of logits at a time (:data:`LOSS_CHUNK_ELEMENTS`), the gradient with
    respect to the logits included, so that no ``(B, T, V)`` fp32 tensor is ever built: the
    vocabulary-wide passes of an unchunked loss and its backward (casts, log-sum-exp, softmax)
    took about half of a Transformer training step on the CPU. That gradient is written for a
    backward pass that multiplies the loss by ``grad_scale`` (the trainer's ``1 / tokens``):
    one that does needs no pass over the logits' gradient (any other is still exact).

    Args:
        logits: ``(B, T, V)`` scores; target: ``(B, T)`` gold ids, ``pad_id`` where ignored.

    Returns:
        ``(loss_sum, nll_sum)`` 0-dim tensors (divide by the target token count for means).
    """
    return _LabelSmoothedLoss.apply(logits, target, smoothing, pad_id, grad_scale)


class _LabelSmoothedLoss(torch.autograd.Function):
    """:func:`label_smoothed_loss`: the forward pass also writes the gradient of the summed
    loss with respect to the logits (``softmax - smoothed one-hot`` on kept rows, 0 on padding),
    times ``grad_scale``, which the backward pass only rescales if it is given another factor."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float, pad_id: int,
                grad_scale: float):  # fmt: skip
        vocab = logits.size(-1)
        flat_logits, flat_target = logits.reshape(-1, vocab), target.reshape(-1)  # (N, V), (N,)
        keep = flat_target != pad_id  # (N,)
        # fp16 gradients are kept in fp32 until the loss scale (GradScaler's) is applied:
        # rounded first, the small ones would underflow to zero.
        grad_dtype = torch.float32 if logits.dtype == torch.float16 else logits.dtype
        grad = None
        if ctx.needs_input_grad[0]:
            grad = torch.empty(flat_logits.shape, dtype=grad_dtype, device=logits.device)
        sums = torch.zeros(2, device=logits.device)  # (loss, nll)
        grad_scale = grad_scale or 1.0  # a zero scale (a stand-in batch) would lose the rest
        rows_per_chunk = max(1, LOSS_CHUNK_ELEMENTS // vocab)
        for start in range(0, flat_logits.size(0), rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            # .float() first: log_softmax(dtype=float32) of bf16 logits is slower on the CPU
            log_probs = flat_logits[rows].float().log_softmax(dim=-1)  # (r, V)
            gold = flat_target[rows].unsqueeze(1)  # (r, 1)
            kept = keep[rows].unsqueeze(1).float()  # (r, 1)
            nll = -(log_probs.gather(1, gold) * kept).sum()
            uniform = -(log_probs.mean(dim=-1, keepdim=True) * kept).sum()  # mean of -log p
            sums += torch.stack([(1.0 - smoothing) * nll + smoothing * uniform, nll])
            if grad is not None:  # d loss / d logits = p - (1 - s) one_hot(gold) - s / V
                probs = log_probs.exp_().sub_(smoothing / vocab)
                probs.scatter_add_(1, gold, torch.full_like(kept, smoothing - 1.0))
                grad[rows] = probs.mul_(kept * grad_scale)
        ctx.logits_grad = None if grad is None else grad.view(logits.shape)
        ctx.logits_dtype, ctx.grad_scale = logits.dtype, grad_scale
        loss_sum, nll_sum = sums[0].clone(), sums[1].clone()
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):
        if ctx.logits_grad is None:
            raise RuntimeError(
                "label_smoothed_loss: backward ran twice through one loss (retain_graph); "
                "compute the loss again instead"
            )
        # In place, and given away: the gradient is the size of the logits.
        grad, ctx.logits_grad = ctx.logits_grad, None
        rescale = grad_loss / ctx.grad_scale  # exactly 1 for the factor the forward pass used
        if rescale.device.type != "cpu" or rescale.item() != 1.0:
            grad.mul_(rescale)
        return grad.to(ctx.logits_dtype), None, None, None, None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters, with ``train.lr``/``betas``/``weight_decay``.

    The fused implementation is used (one kernel for all parameters, CPU and CUDA alike).
    """
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return optimizer_class(
        parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )


class Schedule:
    """The learning rate per update, from ``train.schedule``.

    - ``inverse_sqrt``: linear warmup over ``warmup_steps``, then ``lr * sqrt(warmup / step)``
      (Vaswani et al., 2017); without warmup, ``lr / sqrt(step)``.
    - ``plateau``: linear warmup, then ``lr`` times ``plateau_factor`` each time dev BLEU has not
      improved for more than ``plateau_patience`` validations.
    - ``constant``: linear warmup, then ``lr``.
    - ``cosine``: linear warmup, then ``lr`` decayed along half a cosine to 0 at ``max_steps``
      (Loshchilov & Hutter, 2017, without restarts): a fixed budget of updates ends on small
      steps, as averaging the last checkpoints tries to. Resuming with a larger ``max_steps``
      stretches the rest of the curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.scale = 1.0  # plateau reductions so far
        self.best: float | None = None
        self.bad_validations = 0

    def lr_at(self, step: int) -> float:
        """The learning rate of update number ``step`` (counted from 1)."""
        warmup = self.cfg.warmup_steps
        if self.cfg.schedule == "inverse_sqrt":
            factor = step / warmup if step < warmup else math.sqrt(max(warmup, 1) / step)
        elif self.cfg.schedule == "cosine" and step > warmup:
            done = min((step - warmup) / (self.cfg.max_steps - warmup), 1.0)  # decay's share
            factor = 0.5 * (1.0 + math.cos(math.pi * done))
        else:
            factor = min(1.0, step / warmup) if warmup else 1.0
        return self.cfg.lr * factor * self.scale

    def set_step(self, step: int) -> float:
        """Set every parameter group's learning rate for update ``step``; returns it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def validated(self, bleu: float) -> bool:
        """Record a dev BLEU; with ``plateau``, returns True when the rate was just reduced."""
        if self.best is None or bleu > self.best:
            self.best, self.bad_validations = bleu, 0
            return False
        self.bad_validations += 1
        if self.cfg.schedule != "plateau" or self.bad_validations <= self.cfg.plateau_patience:
            return False
        self.scale *= self.cfg.plateau_factor
        self.bad_validations = 0
        logger.info("dev BLEU plateaued at %.2f: learning rate scaled to %.3g", bleu, self.scale)
        return True

    def state_dict(self) -> dict[str, float | int | None]:
        """Plain data to resume from."""
        return {"scale": self.scale, "best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.scale, self.best = float(state["scale"]), state["best"]
        self.bad_validations = int(state["bad_validations"])


# ---- the step ---------------------------------------------------------------------------------


class WeightAverage:
    """An exponential moving average of a model's weights (``train.ema_decay``), kept in a copy
    of the model that translates and validates in its place.

    Update ``n`` (after the ``n``-th applied optimizer step) moves every averaged parameter
    ``1 - min(decay, (1 + n) / (10 + n))`` of the way to the model's: early updates use a lower
    decay, so the average does not hold on to the first, untrained weights for ``1 / (1 -
    decay)`` steps. Buffers are copied as they are. The copy is in eval mode and takes no
    gradients.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        """Start the average at ``model``'s current weights."""
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        for module in self.model.modules():
            if isinstance(module, nn.RNNBase):  # a deep copy loses cuDNN's one weight buffer
                module.flatten_parameters()
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s weights (the same architecture) into the average."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(averaged, current, 1 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def restart(self, model: nn.Module) -> None:
        """Start the average again at ``model``'s current weights."""
        self.model.load_state_dict(model.state_dict())
        self.updates = 0


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf losses or gradients in a row; the message says what to try."""


@dataclass
class StepOutcome:
    """One update: per-token label-smoothed loss and NLL, its learning rate, whether skipped,
    the tokens it trained on (over all processes) and the gradient norm before clipping."""

    loss: float
    nll: float
    lr: float
    skipped: bool
    target_tokens: int  # target positions (EOS included) of the step's real batches
    tokens: int  # source + target tokens of the step's real batches
    grad_norm: float  # total norm of the (unscaled) gradient before clipping


class Collectives(Protocol):
    """What a step needs from the processes that train one model together (implemented by
    :class:`seq2seq_attn.distributed.World`)."""

    world_size: int

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """The elementwise sum of ``values`` over all processes."""
        ...


class Trainer:
    """Runs optimisation steps on a :class:`Seq2Seq` (through ``forward`` only).

    In a distributed run ``replica`` is the model's ``DistributedDataParallel`` wrapper (it
    all-reduces gradients) and ``collectives`` sums the step's token counts and losses over the
    processes; without them (one process) a step is a plain accumulation. With
    ``train.ema_decay`` every applied step also updates a :class:`WeightAverage`, which is then
    the :attr:`inference_model`: what validates and what checkpoints hold as ``model``.
    """

    def __init__(
        self,
        model: Seq2Seq,
        cfg: TrainConfig,
        precision: Precision,
        device: torch.device,
        replica: nn.Module | None = None,
        collectives: Collectives | None = None,
    ) -> None:
        self.model, self.cfg, self.precision, self.device = model, cfg, precision, device
        self.replica, self.collectives = replica, collectives
        self.optimizer = build_optimizer(model, cfg)
        self.schedule = Schedule(self.optimizer, cfg)
        self.scaler = precision.grad_scaler()
        self.average = None if cfg.ema_decay is None else WeightAverage(model, cfg.ema_decay)
        self.nonfinite_in_a_row = 0
        if device.type == "cpu":
            keep_freed_memory()  # the same large tensors come back every step

    @property
    def inference_model(self) -> Seq2Seq:
        """The weights to validate and translate with: the moving average when there is one,
        else the model being trained."""
        return self.model if self.average is None else self.average.model

    def _loss_sums(
        self, batch: Batch, module: nn.Module | None = None, grad_scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed loss, NLL) of one batch through ``module`` (default: the
        model itself), under the precision's autocast; ``grad_scale`` is what the loss will be
        multiplied by before the backward pass (see :func:`label_smoothed_loss`)."""
        batch = batch.to(self.device, non_blocking=True)
        with self.precision.autocast():
            logits = (module or self.model)(batch.src, batch.src_mask, batch.tgt_in)  # (B, T, V)
        return label_smoothed_loss(
            logits, batch.tgt_out, self.cfg.label_smoothing, grad_scale=grad_scale
        )

    def _grad_norm(self) -> Tensor:
        """Total gradient norm (0-dim) before clipping; then clips to ``clip_grad_norm`` when
        set."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.clip_grad_norm is None:
            return torch.nn.utils.get_total_norm([p.grad for p in parameters])
        return torch.nn.utils.clip_grad_norm_(parameters, self.cfg.clip_grad_norm)

    def _sum_over_processes(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes (as they are in one process)."""
        return values if self.collectives is None else self.collectives.all_reduce_sum(values)

    def train_step(self, batches: list[Batch], step: int, stand_in: bool = False) -> StepOutcome:
        """Update number ``step`` from ``batches`` (accumulated; the loss is the mean over all
        their target tokens, on all processes). A NaN/inf loss or gradient skips the update and
        is counted. ``stand_in`` batches (a process with no real batch at the end of an epoch)
        join the gradient all-reduce with their loss weighted 0.

        The gradient all-reduce runs once, on the last batch (``no_sync`` on the others). DDP
        averages gradients over the N processes; each loss is scaled by N / global target
        tokens, so the update equals one process accumulating every process's batches.
        """
        self.model.train()
        weight = 0 if stand_in else 1
        local_counts = [
            weight * sum(batch.num_tgt_tokens for batch in batches),
            weight * sum(batch.num_src_tokens + batch.num_tgt_tokens for batch in batches),
        ]
        if self.collectives is None:
            total_tokens, tokens = local_counts
        else:
            counts = self.collectives.all_reduce_sum(torch.tensor(local_counts))
            total_tokens, tokens = counts.tolist()
        processes = 1 if self.collectives is None else self.collectives.world_size
        sums = torch.zeros(2, device=self.device)  # (loss, nll) summed over the batches
        for index, batch in enumerate(batches):
            accumulating = self.replica is not None and index < len(batches) - 1
            with self.replica.no_sync() if accumulating else contextlib.nullcontext():  # type: ignore[union-attr]
                factor = weight * processes / max(total_tokens, 1)
                loss_sum, nll_sum = self._loss_sums(batch, self.replica, factor)
                scaled = loss_sum * factor
                self.scaler.scale(scaled).backward()
            sums += weight * torch.stack([loss_sum.detach(), nll_sum.detach()])
        sums = self._sum_over_processes(sums)
        self.scaler.unscale_(self.optimizer)
        norm = self._grad_norm()
        loss, nll, norm_value = torch.cat([sums, norm.reshape(1)]).tolist()  # the one sync
        # with fp16 the scaler itself skips steps whose gradients overflowed
        finite = math.isfinite(loss) and (self.scaler.is_enabled() or math.isfinite(norm_value))
        lr = self.schedule.set_step(step)
        if finite:
            self.scaler.step(self.optimizer)
            # an fp16 step the scaler skipped (overflowed gradients) is no update to average
            if self.average is not None and math.isfinite(norm_value):
                self.average.update(self.model)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        if not finite:
            logger.warning("step %d: loss %s, gradient norm %s: update skipped", step, loss, norm)
        return StepOutcome(
            loss / total_tokens, nll / total_tokens, lr, not finite, total_tokens, tokens,
            norm_value,
        )  # fmt: skip

    def raise_nonfinite(self, step: int) -> NoReturn:
        """Stop the run: too many non-finite steps in a row."""
        raise NonFiniteLossError(
            f"step {step}: the loss or gradient was NaN/inf in {self.nonfinite_in_a_row} steps in "
            f"a row (train.max_nonfinite_in_a_row = {self.cfg.max_nonfinite_in_a_row}); try a "
            f"lower train.lr (now {self.cfg.lr}), more train.warmup_steps, train.clip_grad_norm "
            "= 1.0, or train.precision = fp32"
        )

    @torch.no_grad()
    def evaluation_loss(self, batches: Iterable[Batch]) -> tuple[float, float]:
        """Per-token (label-smoothed loss, NLL) of the :attr:`inference_model` over
        ``batches`` in eval mode."""
        model = self.inference_model
        was_training = model.training
        model.eval()
        sums, tokens = torch.zeros(2, device=self.device), 0
        for batch in batches:
            sums += torch.stack(self._loss_sums(batch, model))
            tokens += batch.num_tgt_tokens
        model.train(was_training)
        loss, nll = (sums / max(tokens, 1)).tolist()
        return loss, nll

    def state_dict(self) -> dict:
        """Model, optimizer, schedule and scaler states (tensors and plain data). ``model``
        holds the :attr:`inference_model`'s weights; with a moving average the trained weights
        are ``training_weights`` and the average's update count ``ema_updates``."""
        state = {
            "model": self.inference_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }
        if self.average is not None:
            state["training_weights"] = self.model.state_dict()
            state["ema_updates"] = self.average.updates
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned. A run resumed with ``train.ema_decay``
        switched on starts its average at the resumed weights; switched off, it trains on
        from ``training_weights``."""
        averaged = "training_weights" in state
        self.model.load_state_dict(state["training_weights"] if averaged else state["model"])
        if self.average is not None and averaged:
            self.average.model.load_state_dict(state["model"])
            self.average.updates = int(state["ema_updates"])
        elif self.average is not None:
            logger.info("train.ema_decay: the moving average of the weights starts here")
            self.average.restart(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
