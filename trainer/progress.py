"""Where training stands: the recipe's counters, the status document's `Progress`, and
the `trainer_state.json` of every checkpoint.

Invariant: `state_dict()` holds everything about the loop's position that a resumed
trainer needs to continue exactly where the checkpoint was taken (with the model,
optimizer, scheduler and RNG states saved beside it): the optimizer step, the epoch and
how many of its batches were consumed, and the early-stopping bookkeeping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jobstore.documents import Progress


@dataclass
class TrainingProgress:
    """The recipe's counters: `to_document()` goes into status.json, `state_dict()` into
    every checkpoint's trainer_state.json, and `load_state_dict()` resumes from it."""

    step: int = 0  # optimizer steps done
    total_steps: int = 0
    epoch: int = 0  # 1-based epoch in progress
    total_epochs: int = 0
    training_loss: float | None = None  # of the latest step
    # Causal LM: share of the latest step's target tokens predicted right.
    training_token_accuracy: float | None = None
    validation_loss: float | None = None  # of the latest evaluation
    # Of the latest evaluation: a causal LM's token_accuracy; a classifier's accuracy,
    # precision, recall, f1.
    validation_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    tokens_seen: int = 0  # non-padding tokens through the model in training
    first_step_at: str | None = None
    eta_seconds: float | None = None
    # Data position: micro-batches of `epoch` already trained on, and whether the whole
    # epoch (its evaluation included) is done. A resume skips exactly these batches of
    # the epoch's fixed shuffled order.
    batches_done_in_epoch: int = 0
    epoch_complete: bool = False
    # Early stopping on validation loss.
    best_validation_loss: float | None = None
    evaluations_without_improvement: int = 0
    last_evaluated_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for field in dataclasses.fields(self):
            if field.name in state:
                setattr(self, field.name, state[field.name])

    def record_evaluation(self, loss: float, threshold: float) -> bool:
        """Count an evaluation for early stopping; True if it improved on the best.

        An improvement is a drop of more than `threshold` below the best loss so far;
        the first evaluation always counts as one.
        """
        self.last_evaluated_step = self.step
        if self.best_validation_loss is None or loss < self.best_validation_loss - threshold:
            self.best_validation_loss = loss
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        return False

    def to_document(self) -> Progress:
        return Progress(
            step=self.step,
            totalSteps=self.total_steps,
            epoch=self.epoch,
            totalEpochs=self.total_epochs,
            trainingLoss=self.training_loss,
            trainingTokenAccuracy=self.training_token_accuracy,
            validationLoss=self.validation_loss,
            tokensSeen=self.tokens_seen,
            etaSeconds=self.eta_seconds,
            firstStepAt=self.first_step_at,
            validationMetrics=dict(self.validation_metrics),
        )
