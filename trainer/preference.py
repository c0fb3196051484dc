"""Preference tuning: direct preference optimization (DPO, Rafailov et al. 2023).

Each record is a prompt with a chosen and a rejected answer. The policy (the model being
trained) learns to raise the chosen answer's log-probability over the rejected one's,
measured against a frozen reference (the base model), with no reward model:

    reward(answer) = beta * (log p_policy(answer | prompt) - log p_reference(answer | prompt))
    loss           = -log sigmoid(reward(chosen) - reward(rejected))      per pair

A log-probability is the sum over the answer's tokens (its labels; the prompt's are
IGNORE_INDEX). `beta` is hyperParameters.dpoBeta: small lets the policy move far from the
reference, large keeps it close.

The reference log-probabilities are computed once per attempt, before training, by the
model as loaded: the base model for full fine-tuning, and for LoRA the base model with
its adapters disabled (peft's `disable_adapter`). One forward pass over the data per
attempt instead of a second model in memory, or a second forward every step. A resumed
attempt computes them again from the base weights, before it loads its checkpoint.

Batches: preflight writes each record as two neighbouring examples, chosen then
rejected (trainer/data.py); `PreferencePairs` pairs them again and `collate_pairs`
puts a batch's chosen rows first and its rejected rows after, so one forward computes
both (the "concatenated forward"). Pairs are never packed. `batchSize` counts pairs.

Dropout is off unless hyperParameters.dropout sets it (`model_dropout`): the reference is
computed without it, and a policy computed with it would compare noisy log-probabilities
against clean ones (the first step's loss would not be log 2). LoRA's own loraDropout
stays as set: it acts on the adapters, which start at zero.

Metrics per step and per evaluation (PREFERENCE_METRICS, the metrics CSV columns):
reward accuracy (the share of pairs whose chosen reward is the larger), the mean
margin (chosen minus rejected reward), and the mean chosen and rejected rewards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F

from trainer.data import IGNORE_INDEX, Batch, TokenizedExample, collate

REWARD_ACCURACY = "reward_accuracy"
REWARD_MARGIN = "reward_margin"
CHOSEN_REWARD = "chosen_reward"
REJECTED_REWARD = "rejected_reward"
PREFERENCE_METRICS = (REWARD_ACCURACY, REWARD_MARGIN, CHOSEN_REWARD, REJECTED_REWARD)


def model_dropout(configured: float | None) -> float:
    """The dropout a preference job trains with: the one asked for, else none (not the
    base model's own, as other jobs keep)."""
    return 0.0 if configured is None else configured


@dataclass(frozen=True)
class PreferencePair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    # The reference model's log-probabilities of the two answers.
    reference: tuple[float, float]


class PreferencePairs(Sequence[PreferencePair]):
    """The pairs of a split whose examples are chosen, rejected, chosen, rejected, ...;
    `reference` holds each example's reference log-probability, in the same order."""

    def __init__(self, examples: Sequence[TokenizedExample], reference: torch.Tensor) -> None:
        if len(examples) % 2:
            raise ValueError(f"a preference split has pairs of examples, not {len(examples)}")
        if reference.numel() != len(examples):
            raise ValueError("one reference log-probability per example is needed")
        self.examples = examples
        self.reference = reference.tolist()

    def __len__(self) -> int:
        return len(self.examples) // 2

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PreferencePair]: ...

    def __getitem__(self, index: int | slice) -> PreferencePair | Sequence[PreferencePair]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        first = 2 * index
        return PreferencePair(
            self.examples[first],
            self.examples[first + 1],
            (self.reference[first], self.reference[first + 1]),
        )

    def __iter__(self) -> Iterator[PreferencePair]:
        return (self[i] for i in range(len(self)))


@dataclass
class PreferenceBatch(Batch):
    """`pairs` chosen rows, then their `pairs` rejected rows, in the same order."""

    pairs: int = 0
    reference: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))

    def to(self, device: torch.device) -> PreferenceBatch:
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            reference=self.reference.to(device),
        )

    @property
    def target_tokens(self) -> int:
        """The loss terms: pairs whose answers both have a target token (a rank's empty
        share of a batch has none)."""
        return int(pair_has_targets(self.labels, self.pairs).sum())


def pair_has_targets(labels: torch.Tensor, pairs: int) -> torch.Tensor:
    """(pairs,) booleans: both rows of the pair have at least one target token."""
    has = (labels[:, 1:] != IGNORE_INDEX).any(dim=1)
    return has[:pairs] & has[pairs:]


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int) -> PreferenceBatch:
    """Chosen rows first, rejected rows after, padded to the longest of all of them."""
    rows = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    batch = collate(rows, pad_id)
    reference = [pair.reference[0] for pair in pairs] + [pair.reference[1] for pair in pairs]
    return PreferenceBatch(
        batch.input_ids,
        batch.attention_mask,
        batch.labels,
        pairs=len(pairs),
        reference=torch.tensor(reference, dtype=torch.float32),
    )


def sequence_log_probs(model: Any, batch: Batch) -> torch.Tensor:
    """(rows,) the summed log-probability of each row's target tokens."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # Position t predicts token t+1; float32 for the softmax, as the supervised loss.
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = batch.labels[:, 1:]
    token_losses = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return -token_losses.view(shifted_labels.shape).sum(dim=1)


@torch.no_grad()
def reference_log_probs(
    model: Any,
    adapters_of: Any,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> torch.Tensor:
    """(len(examples),) float32 on the CPU: each example's summed log-probability of its
    target tokens under `model` as it is now, in eval mode (no dropout), with the
    adapters of `adapters_of` (a peft model) disabled. `model` may be its DDP or FSDP
    wrapper: every rank runs the same forwards in the same order."""
    model.eval()
    disabled = (
        adapters_of.disable_adapter()
        if hasattr(adapters_of, "disable_adapter")
        else contextlib.nullcontext()
    )
    found = []
    with disabled:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id).to(device)
            with autocast():
                found.append(sequence_log_probs(model, batch).float().cpu())
    return torch.cat(found) if found else torch.zeros(0)


@dataclass(frozen=True)
class PreferenceSums:
    """One forward's sums over the batch's pairs (those with targets)."""

    loss: torch.Tensor  # summed DPO loss (keeps the graph for backward)
    correct: torch.Tensor  # pairs whose chosen reward is the larger
    margin: torch.Tensor  # summed chosen minus rejected reward
    chosen: torch.Tensor  # summed chosen reward
    rejected: torch.Tensor  # summed rejected reward


def preference_sums(model: Any, batch: PreferenceBatch, beta: float) -> PreferenceSums:
    """The DPO loss and reward statistics of `batch`, summed over its pairs."""
    policy = sequence_log_probs(model, batch)
    rewards = beta * (policy - batch.reference)
    chosen, rejected = rewards[: batch.pairs], rewards[batch.pairs :]
    margin = chosen - rejected
    counted = pair_has_targets(batch.labels, batch.pairs).float()
    losses = -F.logsigmoid(margin)
    detached = margin.detach()
    return PreferenceSums(
        loss=(losses * counted).sum(),
        correct=((detached > 0).float() * counted).sum(),
        margin=(detached * counted).sum(),
        chosen=(chosen.detach() * counted).sum(),
        rejected=(rejected.detach() * counted).sum(),
    )


@dataclass(frozen=True)
class PreferenceTotals:
    """Sums over many batches, and the pairs they count; `means()` the metrics."""

    loss: float = 0.0
    correct: float = 0.0
    margin: float = 0.0
    chosen: float = 0.0
    rejected: float = 0.0
    pairs: int = 0

    def plus(self, sums: PreferenceSums, pairs: int) -> PreferenceTotals:
        return PreferenceTotals(
            self.loss + float(sums.loss.detach()),
            self.correct + float(sums.correct),
            self.margin + float(sums.margin),
            self.chosen + float(sums.chosen),
            self.rejected + float(sums.rejected),
            self.pairs + pairs,
        )

    def as_list(self) -> list[float]:
        """For a sum over ranks."""
        return [self.loss, self.correct, self.margin, self.chosen, self.rejected, self.pairs]

    @staticmethod
    def from_list(values: Sequence[float]) -> PreferenceTotals:
        loss, correct, margin, chosen, rejected, pairs = values
        return PreferenceTotals(loss, correct, margin, chosen, rejected, int(pairs))

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.pairs, 1)

    def means(self) -> dict[str, float]:
        """PREFERENCE_METRICS, each a mean over the pairs (0 pairs: 0)."""
        count = max(self.pairs, 1)
        return {
            REWARD_ACCURACY: self.correct / count,
            REWARD_MARGIN: self.margin / count,
            CHOSEN_REWARD: self.chosen / count,
            REJECTED_REWARD: self.rejected / count,
        }


def backward_preference_window(
    model: Any,
    window: list[Batch],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    *,
    beta: float,
    pairs: int,
    gradient_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> PreferenceTotals:
    """Forward and backward over the micro-batches of one optimizer step, as
    trainer/loss.py's `backward_window` does for tokens: each micro-batch's summed loss
    is divided by the pairs of the whole window (`pairs`, over all ranks), so every pair
    weighs the same however the pairs were batched. Returns this process's sums."""
    pairs = max(pairs, 1)
    # The sums stay on the device until the window ends: one sync a step, not a batch.
    summed = torch.zeros(5, device=device)
    counted = 0
    for index, micro_batch in enumerate(window):
        assert isinstance(micro_batch, PreferenceBatch)
        counted += micro_batch.target_tokens  # from the labels still on the CPU
        last = index == len(window) - 1
        synchronised = no_sync is None or last
        with contextlib.nullcontext() if synchronised else no_sync():  # type: ignore[misc]
            with autocast():
                sums = preference_sums(model, micro_batch.to(device), beta)
            scaled = sums.loss / pairs
            if gradient_scale != 1.0:
                scaled = scaled * gradient_scale
            scaled.backward()
        summed += torch.stack(
            [sums.loss.detach(), sums.correct, sums.margin, sums.chosen, sums.rejected]
        )
    loss, correct, margin, chosen, rejected = summed.tolist()
    return PreferenceTotals(loss, correct, margin, chosen, rejected, counted)


@torch.no_grad()
def preference_validation(
    model: Any,
    pairs: Sequence[PreferencePair],
    *,
    batch_size: int,
    pad_id: int,
    beta: float,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> PreferenceTotals:
    """The DPO loss and reward metrics of `model` over every validation pair, in file
    order, `batch_size` pairs per forward."""
    model.eval()
    totals = PreferenceTotals()
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start : start + batch_size], pad_id).to(device)
        with autocast():
            sums = preference_sums(model, batch, beta)
        totals = totals.plus(sums, batch.target_tokens)
    return totals
