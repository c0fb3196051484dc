"""The learning-rate schedule, the optimizer's parameter groups, and gradient
accumulation being equal to one larger batch."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from trainer.data import TokenizedExample, collate
from trainer.loss import WindowLoss, backward_window
from trainer.optim import build_optimizer, learning_rate_at


def schedule(peak: float, warmup: int, total: int) -> list[float]:
    return [
        learning_rate_at(step, peak=peak, warmup_steps=warmup, total_steps=total)
        for step in range(1, total + 1)
    ]


def test_learning_rate_warms_up_linearly_then_decays_linearly_towards_zero() -> None:
    rates = schedule(1.0, warmup=4, total=10)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # step 4 reaches the peak
    decay = rates[4:]
    assert decay == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    # equal steps down, reaching 0 right after the last step: no step is wasted at 0
    assert all(r > 0 for r in rates)
    assert learning_rate_at(11, peak=1.0, warmup_steps=4, total_steps=10) == 0


def test_learning_rate_without_warmup_starts_at_the_peak() -> None:
    rates = schedule(0.003, warmup=0, total=3)
    assert rates == pytest.approx([0.003, 0.002, 0.001])


def test_learning_rate_with_warmup_longer_than_training_never_decays() -> None:
    assert schedule(1.0, warmup=10, total=4) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_weight_decay_skips_biases_and_norm_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, 0.1, weight_decay=0.5)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.5
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])]
    assert not_decayed["weight_decay"] == 0.0
    assert len(not_decayed["params"]) == 3  # linear bias, norm weight, norm bias


def test_gradient_accumulation_equals_one_larger_batch(demo_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    # Micro-batches with different numbers of target tokens: a per-batch mean would
    # weigh them differently from one big batch.
    examples = [
        TokenizedExample([1, 10, 11, 12, 13, 2], [-100, -100, 11, 12, 13, 2]),
        TokenizedExample([1, 20, 21], [-100, -100, 21]),
        TokenizedExample([1, 30, 31, 32], [-100, 31, 32, 2]),
    ]

    def gradients(
        window_examples: list[list[TokenizedExample]],
    ) -> tuple[WindowLoss, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        window = [collate(e, pad_id=3) for e in window_examples]
        loss = backward_window(model, window, torch.device("cpu"), contextlib.nullcontext)
        return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    big_loss, big = gradients([examples])
    accumulated_loss, accumulated = gradients([examples[:1], examples[1:2], examples[2:]])
    assert accumulated_loss.loss == pytest.approx(big_loss.loss, rel=1e-5)
    assert accumulated_loss.correct_tokens == big_loss.correct_tokens
    assert len(big) == len(accumulated) > 0
    for one, other in zip(big, accumulated, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-6)
