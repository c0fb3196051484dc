"""The training loss: next-token cross-entropy on completion tokens, and gradient
accumulation that weighs every token the same however the tokens were batched.

Beside the loss, each forward counts the target tokens the model already predicts
right (its most likely next token is the target): token accuracy, OpenAI's
`mean_token_accuracy`. It costs an argmax over logits the loss has computed anyway."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX, Batch
from trainer.packing import PackedBatch


@dataclass(frozen=True)
class TokenSums:
    """One forward's sums over the batch's targets (completion tokens; for a
    classification batch, its examples)."""

    loss: torch.Tensor  # summed cross-entropy (keeps the graph for backward)
    correct: torch.Tensor  # targets whose most likely prediction is the target


def token_sums(model: Any, batch: Batch) -> TokenSums:
    """Summed next-token cross-entropy over the batch's target (non-ignored) tokens, and
    how many of them the model predicts right.

    Sums, not means: the caller divides by the target tokens of the whole accumulation
    window, so every token weighs the same however it was batched. A classification
    batch gives its head's summed cross-entropy and correct predictions over the examples.
    """
    if batch.classification:
        loss, logits = classification_loss_sum(model, batch)
        return TokenSums(loss, (logits.detach().argmax(dim=-1) == batch.labels).sum())
    if isinstance(batch, PackedBatch):  # per-example positions and block-diagonal attention
        logits = model(**batch.model_inputs()).logits
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # Position t predicts token t+1. float32 for the softmax: bf16 loses precision here.
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = batch.labels[:, 1:]
    loss = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    predicted = shifted_logits.detach().argmax(dim=-1)
    correct = ((predicted == shifted_labels) & (shifted_labels != IGNORE_INDEX)).sum()
    return TokenSums(loss, correct)


def token_loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's target tokens (`token_sums`)."""
    return token_sums(model, batch).loss


def classification_loss_sum(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the classification head over the batch, the logits)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits.float()
    return F.cross_entropy(logits, batch.labels, reduction="sum"), logits


@dataclass(frozen=True)
class WindowLoss:
    """What one optimizer step's forwards measured on this process."""

    loss: float  # summed over its target tokens, divided by the window's target tokens
    correct_tokens: int  # its target tokens predicted right


def backward_window(
    model: Any,
    window: list[Batch],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    *,
    target_tokens: int | None = None,
    gradient_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> WindowLoss:
    """Forward and backward over the micro-batches of one optimizer step (gradient
    accumulation); returns this process's loss summed over its target tokens, divided
    by `target_tokens` (the mean per target token with one rank; summed over the ranks,
    the mean per target token of the global window), and its correct target tokens.

    Each micro-batch's summed loss is divided by the target tokens of the whole window,
    so the gradients equal those of one big batch: accumulation changes memory use,
    not the maths (a per-micro-batch mean would over-weight tokens of short batches).

    Several ranks: `target_tokens` is the window's count over all ranks, and
    `gradient_scale` the world size, since DDP averages the ranks' gradients where the
    maths wants their sum. `no_sync` (DDP's) skips the gradient all-reduce on all but
    the window's last micro-batch.
    """
    if target_tokens is None:
        target_tokens = sum(b.target_tokens for b in window)
    target_tokens = max(target_tokens, 1)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for index, micro_batch in enumerate(window):
        last = index == len(window) - 1
        synchronised = no_sync is None or last
        with contextlib.nullcontext() if synchronised else no_sync():  # type: ignore[misc]
            with autocast():
                sums = token_sums(model, micro_batch.to(device))
            scaled = sums.loss / target_tokens
            if gradient_scale != 1.0:
                scaled = scaled * gradient_scale
            scaled.backward()
        # Both stay on the device: one sync per step, not per batch.
        loss_sum += sums.loss.detach()
        correct += sums.correct
    return WindowLoss(float(loss_sum) / target_tokens, int(correct))
