"""AdamW with decoupled weight decay and the linear warm-up / linear decay schedule."""

from __future__ import annotations

import torch


def build_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW where only matrices (linear and embedding weights) decay.

    Decaying biases and normalisation weights pulls them towards 0, which fights their
    job (a norm weight of 0 switches a feature off); like nanoGPT, only tensors with two
    or more dimensions decay.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is faster on a GPU; on the CPU the default is the fast one.
    fused = all(p.is_cuda for p in parameters)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def learning_rate_at(step: int, *, peak: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (1-based, 1..total_steps).

    Linear warm-up: step 1 uses peak/warmup, step `warmup_steps` uses the peak. Then a
    linear decay that would reach 0 one step after the last, so every step, the last
    one included, still learns something (a step at learning rate 0 is wasted work).
    """
    if step <= warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    remaining = total_steps - step + 1
    return peak * max(remaining, 0) / decay_steps


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
