"""AdamW with decoupled weight decay, the learning-rate schedules and gradient clipping.

The learning rate is a pure function of the optimizer step (`learning_rate_at`), not a
stateful scheduler object: a resumed job gets the same rate from the step alone, and the
shapes are testable on plain numbers.

    warm-up    steps 1..W rise linearly to the peak (W = learningRateWarmupSteps)
    linear     then fall linearly towards 0
    cosine     then follow half a cosine from the peak towards 0
    constant   then stay at the peak

The decaying schedules would reach 0 one step after the last, so every step, the last
one included, still learns something (a step at learning rate 0 is wasted work).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

SCHEDULES = ("linear", "cosine", "constant")


def build_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, where only matrices decay.

    Only parameters with requires_grad take part: a LoRA model's frozen base weights have
    no optimizer state (the memory LoRA saves). Decaying biases and normalisation weights
    pulls them towards 0, which fights their job (a norm weight of 0 switches a feature
    off); like nanoGPT, only tensors with two or more dimensions decay.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel (one launch for all parameters) is faster on a GPU; on the CPU the
    # default (foreach) implementation is the fast one.
    fused = bool(parameters) and all(p.is_cuda for p in parameters)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def learning_rate_at(
    step: int,
    *,
    peak: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "linear",
) -> float:
    """Learning rate for optimizer step `step` (1-based, 1..total_steps).

    Linear warm-up: step 1 uses peak/warmup, step `warmup_steps` uses the peak. After it,
    `schedule` (module doc) over the remaining steps.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; one of {SCHEDULES}")
    if step <= warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    decay_steps = max(total_steps - warmup_steps, 1)
    # The fraction of the decay still ahead: 1 at the first step after warm-up, 1/decay at
    # the last, never 0 within the run.
    remaining = max(total_steps - step + 1, 0) / decay_steps
    if schedule == "linear":
        return peak * remaining
    return peak * 0.5 * (1.0 + math.cos(math.pi * (1.0 - remaining)))


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global L2 norm is at most `max_norm`; 0 = no clipping.

    Returns the norm before clipping as a tensor on the gradients' device (reading it
    forces a device sync, so only a caller that logs it should).
    """
    with_gradients = [p for p in parameters if p.grad is not None]
    if not with_gradients:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(with_gradients, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in with_gradients if p.grad is not None])
