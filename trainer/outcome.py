"""How a run ends: the outcome of the training loop, and what the recipe's `finish`
writes for each (trainer/recipe.py).

    COMPLETED / EARLY_STOPPED   the final model to `<output>model/` (and the merged one
                                for a LoRA job with mergeAdapter), every checkpoint
                                committed, metrics, loss plot; state COMPLETED
    STOPPED                     STOPPING, a committed checkpoint, STOPPED
    PREEMPTED (SIGTERM)         a committed checkpoint, progress at its step, exit
                                PREEMPTED; the reconciler decides what comes next
    PAUSED                      a committed checkpoint, progress at its step, PAUSED
                                (not ended: a resume launches the next attempt from it)

With several ranks rank 0 writes all of it; the others take part in the collectives
(the checkpoint's RNG states, FSDP's gathered weights) and exit with the same code.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    COMPLETED = "completed"
    EARLY_STOPPED = "early stopped"  # ends COMPLETED, before the last step
    STOPPED = "stopped"
    PREEMPTED = "preempted"
    PAUSED = "paused"
