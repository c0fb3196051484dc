"""Where training stands: the recipe's counters, the status document's `Progress`, and
the `trainer_state.json` of every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from service.documents import Progress


@dataclass
class TrainingProgress:
    """The recipe's counters: `to_document()` goes into status.json, `state_dict()` into
    every checkpoint's trainer_state.json (and `load_state_dict()` will resume from it)."""

    step: int = 0  # optimizer steps done
    total_steps: int = 0
    epoch: int = 0  # 1-based epoch in progress
    total_epochs: int = 0
    training_loss: float | None = None  # of the latest step
    validation_loss: float | None = None  # of the latest evaluation
    # Classification: accuracy, precision, recall, f1 of the latest evaluation.
    validation_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    tokens_seen: int = 0  # non-padding tokens through the model in training
    first_step_at: str | None = None
    eta_seconds: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for field in dataclasses.fields(self):
            if field.name in state:
                setattr(self, field.name, state[field.name])

    def to_document(self) -> Progress:
        return Progress(
            step=self.step,
            totalSteps=self.total_steps,
            epoch=self.epoch,
            totalEpochs=self.total_epochs,
            trainingLoss=self.training_loss,
            validationLoss=self.validation_loss,
            tokensSeen=self.tokens_seen,
            etaSeconds=self.eta_seconds,
            firstStepAt=self.first_step_at,
            validationMetrics=dict(self.validation_metrics),
        )
