"""The learning-rate schedules, gradient clipping and the optimizer, on plain numbers and
tiny modules (no job, no store)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainer.optim import build_optimizer, clip_gradients, learning_rate_at

PEAK = 0.01


def _curve(schedule: str, *, warmup: int = 0, total: int = 10) -> list[float]:
    return [
        learning_rate_at(step, peak=PEAK, warmup_steps=warmup, total_steps=total, schedule=schedule)
        for step in range(1, total + 1)
    ]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_rises_linearly_to_the_peak(schedule: str) -> None:
    rates = _curve(schedule, warmup=4, total=12)
    assert rates[:4] == pytest.approx([PEAK * 0.25, PEAK * 0.5, PEAK * 0.75, PEAK])


def test_linear_decays_in_equal_steps_and_never_reaches_zero() -> None:
    rates = _curve("linear", total=10)
    assert rates[0] == pytest.approx(PEAK)
    assert rates == pytest.approx([PEAK * (10 - i) / 10 for i in range(10)])
    assert rates[-1] == pytest.approx(PEAK / 10) and rates[-1] > 0


def test_cosine_follows_half_a_cosine_after_warmup() -> None:
    rates = _curve("cosine", warmup=2, total=12)
    decay = rates[2:]  # 10 steps of decay
    expected = [PEAK * 0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert decay == pytest.approx(expected)
    assert all(a > b for a, b in itertools.pairwise(decay)), "strictly decreasing"
    assert decay[-1] > 0
    # Cosine stays above linear in the first half and below it in the second.
    linear = _curve("linear", warmup=2, total=12)[2:]
    assert decay[2] > linear[2] and decay[8] < linear[8]


def test_constant_stays_at_the_peak_after_warmup() -> None:
    assert _curve("constant", warmup=3, total=10)[3:] == [PEAK] * 7


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        learning_rate_at(1, peak=PEAK, warmup_steps=0, total_steps=5, schedule="step")


def _with_gradients(values: list[float]) -> torch.nn.Linear:
    layer = torch.nn.Linear(len(values), 1, bias=False)
    layer.weight.grad = torch.tensor([values])
    return layer


def test_max_grad_norm_one_scales_gradients_to_norm_one() -> None:
    layer = _with_gradients([3.0, 4.0])  # norm 5
    norm = clip_gradients(layer.parameters(), 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert layer.weight.grad is not None
    assert torch.linalg.vector_norm(layer.weight.grad).item() == pytest.approx(1.0, rel=1e-5)
    assert layer.weight.grad.tolist() == [pytest.approx([0.6, 0.8], rel=1e-5)]


def test_max_grad_norm_zero_leaves_gradients_alone() -> None:
    layer = _with_gradients([3.0, 4.0])
    norm = clip_gradients(layer.parameters(), 0.0)
    assert float(norm) == pytest.approx(5.0)
    assert layer.weight.grad is not None
    assert layer.weight.grad.tolist() == [[3.0, 4.0]]


def test_clipping_below_the_threshold_changes_nothing() -> None:
    layer = _with_gradients([0.3, 0.4])
    clip_gradients(layer.parameters(), 1.0)
    assert layer.weight.grad is not None
    assert layer.weight.grad.tolist() == [pytest.approx([0.3, 0.4])]


def test_optimizer_holds_only_trainable_parameters_and_decays_only_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen, as LoRA's base weights are
    optimizer = build_optimizer(model, 0.1, weight_decay=0.5)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.5 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [torch.Size([2, 4])]
    assert all(p.dim() == 1 for p in plain["params"])
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model[0].weight) not in held
