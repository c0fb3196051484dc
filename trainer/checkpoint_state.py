"""Pieces of a checkpoint's state that need no recipe: where each rank's generator
states sit in a checkpoint, and the manifest that the API's checkpoint listing reads.

The recipe (trainer/recipe.py) assembles a checkpoint and restores one; the file layout
and the upload are trainer/checkpoint.py's.
"""

from __future__ import annotations

from typing import Any

import torch

from jobstore.documents import utc_now
from trainer.progress import TrainingProgress

RANK_PREFIX = "rank{}."  # a rank's generator tensors in rng_state.safetensors (rank > 0)


def rank_rng_state(
    saved: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The generator states `rank` saved; a rank the checkpoint has none of (more
    processes than when it was written) takes rank 0's."""
    document = saved.get("rankRng", {}).get(str(rank))
    prefix = RANK_PREFIX.format(rank)
    own = {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
    if rank == 0 or document is None or not own:
        return saved["rng"], {n: t for n, t in tensors.items() if not n.startswith("rank")}
    return document, own


def checkpoint_manifest(progress: TrainingProgress) -> dict[str, Any]:
    """The checkpoint's summary, read by the API's checkpoint listing."""
    evaluated_now = progress.last_evaluated_step == progress.step
    return {
        "step": progress.step,
        "epoch": progress.epoch,
        "trainingLoss": progress.training_loss,
        "trainingTokenAccuracy": progress.training_token_accuracy,
        "validationLoss": progress.validation_loss if evaluated_now else None,
        "validationMetrics": progress.validation_metrics if evaluated_now else {},
        "bestValidationLoss": progress.best_validation_loss,
        "tokensSeen": progress.tokens_seen,
        "createdAt": utc_now(),
    }
