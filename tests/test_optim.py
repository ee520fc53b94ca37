"""The loss against torch's, schedules, precision resolution, accumulation and NaN skipping."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from seq2seq_attn import optim
from seq2seq_attn.batching import collate
from seq2seq_attn.config import ConfigError, ModelConfig, TrainConfig, TransformerConfig
from seq2seq_attn.device import Precision, cpu_has_fast_bf16, resolve_precision
from seq2seq_attn.models import build_model
from seq2seq_attn.optim import Schedule, Trainer, label_smoothed_loss

VOCAB = 17


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
# the default (one chunk here), one row of logits per chunk, 4 rows (of 15) per chunk
@pytest.mark.parametrize("chunk_elements", [optim.LOSS_CHUNK_ELEMENTS, 1, 4 * VOCAB])
def test_loss_matches_torch_cross_entropy(smoothing, chunk_elements, monkeypatch):
    monkeypatch.setattr(optim, "LOSS_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, VOCAB, generator=generator, requires_grad=True)
    target = torch.randint(4, VOCAB, (3, 5), generator=generator)
    target[0, 3:] = 0  # padding is ignored
    target[2, 1:] = 0
    loss_sum, nll_sum = label_smoothed_loss(logits, target, smoothing)
    flat_logits, flat_target = logits.view(-1, VOCAB), target.view(-1)
    expected = F.cross_entropy(
        flat_logits, flat_target, ignore_index=0, label_smoothing=smoothing, reduction="sum"
    )
    expected_nll = F.cross_entropy(flat_logits, flat_target, ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss_sum, expected)
    torch.testing.assert_close(nll_sum, expected_nll)
    (grad,) = torch.autograd.grad(loss_sum, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


# (the factor the forward pass expects, the one backward applies): equal, another, zero
@pytest.mark.parametrize("grad_scale, factor", [(1 / 13, 1 / 13), (1 / 13, 0.5), (0.0, 0.0),
                                                (0.0, 2.0), (1.0, 1.0)])  # fmt: skip
def test_a_precomputed_gradient_scale_gives_torchs_gradient_for_any_factor(grad_scale, factor):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, VOCAB, generator=generator, requires_grad=True)
    target = torch.randint(1, VOCAB, (3, 5), generator=generator)
    target[0, 3:] = 0
    loss_sum, _ = label_smoothed_loss(logits, target, 0.1, grad_scale=grad_scale)
    (factor * loss_sum).backward()
    expected = F.cross_entropy(
        logits.view(-1, VOCAB), target.view(-1), ignore_index=0, label_smoothing=0.1,
        reduction="sum",
    )  # fmt: skip
    (expected_grad,) = torch.autograd.grad(factor * expected, logits)
    torch.testing.assert_close(logits.grad, expected_grad)


def test_loss_of_bf16_logits_is_fp32_and_its_gradient_bf16():
    generator = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(4, 6, VOCAB, generator=generator)).bfloat16().requires_grad_()
    target = torch.randint(4, VOCAB, (4, 6), generator=generator)
    target[1, 2:] = 0
    loss_sum, nll_sum = label_smoothed_loss(logits, target, 0.1)
    reference = logits.float().view(-1, VOCAB)
    expected = F.cross_entropy(
        reference, target.view(-1), ignore_index=0, label_smoothing=0.1, reduction="sum"
    )
    assert loss_sum.dtype == nll_sum.dtype == torch.float32
    torch.testing.assert_close(loss_sum, expected)
    (0.5 * loss_sum).backward()
    (expected_grad,) = torch.autograd.grad(0.5 * expected, logits)
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad, expected_grad)


def test_fp16_logit_gradients_are_scaled_before_they_are_rounded():
    generator = torch.Generator().manual_seed(2)
    logits = (4 * torch.randn(8, 8, 400, generator=generator)).half().requires_grad_()
    target = torch.randint(4, 400, (8, 8), generator=generator)
    loss_sum, _ = label_smoothed_loss(logits, target, 0.0)
    scale = 2.0**16 / 64  # a GradScaler's scale over the step's target tokens
    (loss_sum * scale).backward()
    reference = logits.detach().float().requires_grad_()
    expected = F.cross_entropy(reference.view(-1, 400), target.view(-1), reduction="sum")
    (expected * scale).backward()
    assert logits.grad.dtype == torch.float16
    torch.testing.assert_close(logits.grad, reference.grad.half())
    assert int((logits.grad == 0).sum()) == int((reference.grad.half() == 0).sum())


def test_loss_backward_runs_once_and_the_outputs_are_independent():
    logits = torch.randn(2, 3, VOCAB, requires_grad=True)
    target = torch.randint(4, VOCAB, (2, 3))
    loss_sum, nll_sum = label_smoothed_loss(logits, target, 0.1)
    nll_sum.div_(6)  # the NLL is reported as a mean: the loss must not change with it
    loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss_sum.backward()
    weight = torch.tensor(2.0, requires_grad=True)  # a gradient that depends on a parameter
    (grad,) = torch.autograd.grad(
        weight * label_smoothed_loss(logits, target, 0.1)[0], logits, create_graph=True
    )
    with pytest.raises(RuntimeError, match="differentiate twice"):  # no second-order gradients
        grad.sum().backward()


def test_loss_without_gradients_and_nll_is_not_differentiable():
    logits = torch.randn(2, 3, VOCAB, requires_grad=True)
    target = torch.randint(4, VOCAB, (2, 3))
    with torch.no_grad():
        loss_sum, _ = label_smoothed_loss(logits, target, 0.1)
    assert not loss_sum.requires_grad
    torch.testing.assert_close(loss_sum, label_smoothed_loss(logits, target, 0.1)[0].detach())
    assert not label_smoothed_loss(logits, target, 0.1)[1].requires_grad


def schedule(**options) -> Schedule:
    """A schedule over a one-parameter optimizer."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(optimizer, TrainConfig(lr=1e-3, **options))


def test_inverse_sqrt_warms_up_then_decays():
    sched = schedule(schedule="inverse_sqrt", warmup_steps=100)
    assert sched.lr_at(50) == pytest.approx(0.5e-3)
    assert sched.lr_at(100) == pytest.approx(1e-3)
    assert sched.lr_at(400) == pytest.approx(0.5e-3)
    assert sched.set_step(25) == pytest.approx(0.25e-3)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    assert schedule(schedule="inverse_sqrt", warmup_steps=0).lr_at(4) == pytest.approx(0.5e-3)
    assert schedule(schedule="constant", warmup_steps=0).lr_at(10_000) == pytest.approx(1e-3)


def test_cosine_warms_up_then_decays_to_zero_at_max_steps():
    sched = schedule(schedule="cosine", warmup_steps=100, max_steps=1100)
    assert sched.lr_at(50) == pytest.approx(0.5e-3)
    assert sched.lr_at(100) == pytest.approx(1e-3)
    assert sched.lr_at(600) == pytest.approx(0.5e-3)  # half way through the decay
    assert sched.lr_at(350) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert sched.lr_at(1100) == pytest.approx(0.0, abs=1e-12)
    assert sched.lr_at(2000) == pytest.approx(0.0, abs=1e-12)  # (past the budget: nothing)
    decaying = [sched.lr_at(step) for step in range(100, 1101, 50)]
    assert decaying == sorted(decaying, reverse=True)
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*cosine decays to 0"):
        TrainConfig(schedule="cosine", warmup_steps=100)
    with pytest.raises(
        ConfigError,
        match=r"train\.max_steps: invalid value 100; .*above train\.warmup_steps \(100\)",
    ):
        TrainConfig(schedule="cosine", warmup_steps=100, max_steps=100)


def test_plateau_reduces_after_patience_and_resumes():
    sched = schedule(schedule="plateau", warmup_steps=0, plateau_patience=1, plateau_factor=0.5)
    assert [sched.validated(bleu) for bleu in (10.0, 12.0, 11.0)] == [False] * 3
    assert sched.validated(12.0) is True  # a second validation that does not beat 12
    assert sched.lr_at(1000) == pytest.approx(0.5e-3)
    assert sched.validated(11.0) is False  # the count starts again after a reduction
    assert sched.lr_at(1000) == pytest.approx(0.5e-3)
    restored = schedule(schedule="plateau", warmup_steps=0, plateau_patience=1)
    restored.load_state_dict(sched.state_dict())
    assert restored.lr_at(1000) == pytest.approx(0.5e-3) and restored.best == 12.0


def test_precision_resolution_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu, "train.precision") == Precision("fp32", "cpu")
    assert resolve_precision("fp32", cpu, "train.precision").dtype is None
    assert resolve_precision("bf16", cpu, "train.precision").dtype == torch.bfloat16
    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert resolve_precision("auto", cpu, "train.precision").name == expected
    with pytest.raises(ConfigError, match=r"train\.precision: invalid value 'fp16' on the CPU"):
        resolve_precision("fp16", cpu, "train.precision")
    assert not Precision("bf16", "cpu").grad_scaler().is_enabled()


def tiny_trainer(precision: str = "fp32", **train_options) -> Trainer:
    """A Trainer over a seeded tiny Transformer without dropout, in fp32 unless told."""
    torch.manual_seed(0)
    section = TransformerConfig(
        d_model=16, num_heads=2, encoder_layers=1, decoder_layers=1, attention_dropout=0.0
    )
    config = ModelConfig(dropout=0.0, max_positions=32, transformer=section)
    model = build_model(config, VOCAB, VOCAB)
    options = {"warmup_steps": 0, "lr": 1e-2} | train_options
    return Trainer(model, TrainConfig(**options), Precision(precision, "cpu"), torch.device("cpu"))


SRC = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [4]]
TGT = [[6, 7], [9, 10, 11], [12], [13, 14, 15, 16]]


def gradients_of_step(trainer: Trainer, batches) -> list[torch.Tensor]:
    """The gradients the optimizer sees in one step (the update itself is left out)."""
    seen = []
    trainer.optimizer.step = lambda: seen.extend(p.grad.clone() for p in trainer.model.parameters())
    outcome = trainer.train_step(batches, step=1)
    assert not outcome.skipped
    return seen


def test_accumulated_step_equals_one_big_batch():
    whole = gradients_of_step(tiny_trainer(), [collate(SRC, TGT, range(4))])
    halves = [collate(SRC[:2], TGT[:2], range(2)), collate(SRC[2:], TGT[2:], range(2))]
    split = gradients_of_step(tiny_trainer(), halves)
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    trainer = tiny_trainer(clip_grad_norm=None)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    outcome = trainer.train_step(halves, step=1)
    assert outcome.lr == pytest.approx(1e-2) and outcome.loss > 0 and outcome.nll > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)]
    assert all(moved)


def test_nonfinite_loss_skips_the_update_and_is_counted():
    trainer = tiny_trainer(max_nonfinite_in_a_row=2)
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = math.nan
    before = [p.detach().clone() for p in trainer.model.parameters()]
    outcome = trainer.train_step([collate(SRC, TGT, range(4))], step=1)
    assert outcome.skipped and math.isnan(outcome.loss)
    assert trainer.nonfinite_in_a_row == 1
    for old, new in zip(before, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(old, new, equal_nan=True)
    assert all(p.grad is None for p in trainer.model.parameters())
    with pytest.raises(RuntimeError, match=r"NaN/inf in 1 steps in a row .* try a lower train\.lr"):
        trainer.raise_nonfinite(1)


def test_the_step_reports_the_gradient_norm_before_clipping():
    batches = [collate(SRC, TGT, range(4))]
    unclipped = gradients_of_step(tiny_trainer(clip_grad_norm=None), batches)
    expected = torch.linalg.vector_norm(torch.stack([g.norm() for g in unclipped])).item()
    trainer = tiny_trainer(clip_grad_norm=0.01)
    seen = []
    trainer.optimizer.step = lambda: seen.extend(p.grad.clone() for p in trainer.model.parameters())
    outcome = trainer.train_step(batches, step=1)
    assert expected > 0.01
    assert outcome.grad_norm == pytest.approx(expected, rel=1e-5)
    clipped = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen])).item()
    assert clipped == pytest.approx(0.01, rel=1e-4)  # the update used the clipped gradient


@pytest.mark.parametrize("ema_decay", [0.9, 0.5])  # warmup decay throughout; past it at 8
def test_the_moving_average_of_the_weights_follows_torchs_averaged_model(ema_decay):
    # torch's AveragedModel copies the weights on its first update and then calls avg_fn with
    # the number of updates folded in so far: n = 1 at the first optimizer step, as ours
    def warm_ema(averaged, current, updates):
        decay = min(ema_decay, (1 + updates) / (10 + updates))
        return decay * averaged + (1 - decay) * current

    trainer = tiny_trainer(ema_decay=ema_decay)
    reference = torch.optim.swa_utils.AveragedModel(trainer.model, avg_fn=warm_ema)
    reference.update_parameters(trainer.model)
    batches = [collate(SRC, TGT, range(4))]
    for step in range(1, 31):
        trainer.train_step(batches, step)
        reference.update_parameters(trainer.model)
    assert trainer.average.updates == 30
    averaged = list(trainer.inference_model.parameters())
    expected = list(reference.module.parameters())
    assert len(averaged) == len(expected) > 0
    for mine, theirs, trained in zip(averaged, expected, trainer.model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
        assert not torch.equal(mine, trained) and not mine.requires_grad
    assert not trainer.inference_model.training


def test_a_skipped_update_leaves_the_moving_average_alone():
    trainer = tiny_trainer(ema_decay=0.9)
    with torch.no_grad():
        next(trainer.model.parameters())[0, 1] = math.nan
    before = {k: v.clone() for k, v in trainer.inference_model.state_dict().items()}
    assert trainer.train_step([collate(SRC, TGT, range(4))], step=1).skipped
    assert trainer.average.updates == 0
    after = trainer.inference_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_an_fp16_step_the_scaler_skips_leaves_the_moving_average_alone():
    trainer = tiny_trainer("fp16", ema_decay=0.9)
    assert trainer.scaler.is_enabled()
    first = next(trainer.model.parameters())
    hook = first.register_hook(lambda grad: grad * math.inf)  # overflowed gradients
    before = [p.detach().clone() for p in trainer.model.parameters()]
    outcome = trainer.train_step([collate(SRC, TGT, range(4))], step=1)
    assert math.isinf(outcome.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.average.updates == 0
    hook.remove()
    trainer.train_step([collate(SRC, TGT, range(4))], step=2)
    assert trainer.average.updates == 1


def test_checkpoints_hold_the_average_as_the_model_and_resume_it():
    batches = [collate(SRC, TGT, range(4))]
    trainer = tiny_trainer(ema_decay=0.9)
    for step in range(1, 6):
        trainer.train_step(batches, step)
    state = copy.deepcopy(trainer.state_dict())  # as a file holds it: no tensor shared
    assert state["ema_updates"] == 5
    for name, tensor in trainer.inference_model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
        assert torch.equal(state["training_weights"][name], trainer.model.state_dict()[name])
    resumed = tiny_trainer(ema_decay=0.9)
    resumed.load_state_dict(state)
    trainer.train_step(batches, 6)
    resumed.train_step(batches, 6)
    for model in ("model", "training_weights"):
        expected, actual = trainer.state_dict()[model], resumed.state_dict()[model]
        assert all(torch.equal(expected[name], actual[name]) for name in expected)
    # switched off on resume: training goes on from the trained weights, not the average
    plain = tiny_trainer()
    plain.load_state_dict(copy.deepcopy(state))
    assert "training_weights" not in plain.state_dict()
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, state["training_weights"][name])
    # switched on: the average starts at the resumed weights
    started = tiny_trainer(ema_decay=0.9)
    started.load_state_dict(copy.deepcopy(plain.state_dict()))
    assert started.average.updates == 0
    for name, tensor in started.inference_model.state_dict().items():
        assert torch.equal(tensor, state["training_weights"][name])


def test_an_ema_decay_outside_zero_to_one_is_refused():
    for decay in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"train\.ema_decay.*such as 0\.998"):
            TrainConfig(ema_decay=decay)
