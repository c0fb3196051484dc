"""The validation loss of a causal LM: mean loss per target (completion) token over the
whole validation set, in padded batches or, when training packs, in packed ones; and its
token accuracy (the share of target tokens the model predicts right).

Packing changes how the examples are laid out, not which tokens are targets nor what
each one is predicted from (trainer/packing.py: positions restart per example, attention
never crosses examples), so both layouts sum the same per-token losses over the same
target tokens; the packed one computes fewer rows and no padding.

Classification is never packed: its head pools one vector per row. Its validation is
the mean cross-entropy per example and accuracy / precision / recall / F1 (macro) of
the predicted classes (`classification_validation`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer import data
from trainer.data import TokenizedExample
from trainer.loss import classification_loss_sum, token_sums
from trainer.metrics import classification_metrics
from trainer.packing import Packer


@dataclass(frozen=True)
class ValidationLoss:
    loss_sum: float  # summed next-token cross-entropy over the target tokens
    target_tokens: int
    rows: int  # rows the model computed: fewer when packed
    packed: bool
    correct_tokens: int = 0  # target tokens predicted right

    @property
    def mean(self) -> float:
        """Mean loss per target token (0 target tokens: 0, not a division error)."""
        return self.loss_sum / max(self.target_tokens, 1)

    @property
    def token_accuracy(self) -> float:
        """Share of the target tokens predicted right (0 target tokens: 0)."""
        return self.correct_tokens / max(self.target_tokens, 1)


@torch.no_grad()
def validation_loss(
    model: Any,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    packer: Packer | None,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> ValidationLoss:
    """The loss of `model` over `examples`, in file order, `batch_size` examples per
    forward (as in training, so evaluation needs no more memory than a training batch);
    packed by `packer` when there is one."""
    model.eval()
    loss_sum, tokens, rows, correct = 0.0, 0, 0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = packer.pack_examples(chunk) if packer else data.collate(chunk, pad_id)
        with autocast():
            sums = token_sums(model, batch.to(device))
        loss_sum += float(sums.loss)
        correct += int(sums.correct)
        tokens += batch.target_tokens
        rows += batch.input_ids.size(0)
    return ValidationLoss(loss_sum, tokens, rows, packed=packer is not None, correct_tokens=correct)


@dataclass(frozen=True)
class ClassificationValidation:
    loss: float  # mean cross-entropy per example (0 examples: 0)
    scores: dict[str, float]  # accuracy, precision, recall, f1 (macro)


@torch.no_grad()
def classification_validation(
    model: Any,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> ClassificationValidation:
    """The classification loss and scores of `model` over `examples`, `batch_size`
    padded rows per forward."""
    model.eval()
    loss_sum = 0.0
    predictions: list[int] = []
    targets: list[int] = []
    for batch in data.batches(examples, batch_size, pad_id):
        batch = batch.to(device)
        with autocast():
            loss, logits = classification_loss_sum(model, batch)
        loss_sum += float(loss)
        predictions += logits.argmax(dim=-1).tolist()
        targets += batch.labels.tolist()
    scores = classification_metrics(predictions, targets)
    return ClassificationValidation(loss_sum / max(len(targets), 1), scores)
