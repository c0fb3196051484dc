"""How a run ends: the outcome of the training loop, and what each writes.

    COMPLETED / EARLY_STOPPED   the final model to `<output>model/` (and the merged one
                                for a LoRA job with mergeAdapter), every checkpoint
                                committed, metrics, loss plot; state COMPLETED
    STOPPED                     STOPPING, a committed checkpoint, STOPPED
    PREEMPTED (SIGTERM)         a committed checkpoint, progress at its step, exit
                                PREEMPTED; the reconciler decides what comes next

With several ranks rank 0 writes all of it; the others take part in the collectives
(the checkpoint's RNG states, FSDP's gathered weights) and exit with the same code.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Any

import torch

from jobstore.documents import JobState, TrainerExit
from jobstore.storage import S3Location
from trainer import checkpoint, lora
from trainer.distributed import full_model_state
from trainer.model import load_model
from trainer.plots import publish_loss_plot

if TYPE_CHECKING:
    from trainer.recipe import FullFineTuningRecipe

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    COMPLETED = "completed"
    EARLY_STOPPED = "early stopped"  # ends COMPLETED, before the last step
    STOPPED = "stopped"
    PREEMPTED = "preempted"


def finish_run(recipe: FullFineTuningRecipe, outcome: Outcome) -> TrainerExit:
    """Write what `outcome` means for the job (the module docstring); the exit code."""
    if outcome is Outcome.PREEMPTED and recipe.distributed.broadcast(recipe.reporter.poll_stop()):
        outcome = Outcome.STOPPED  # SIGTERM after a stop request is that stop
    completed = outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED)
    # FSDP: every rank hands in its shards of the final weights.
    final_state = full_model_state(recipe.model) if completed and recipe.sharded else None
    if not recipe.distributed.is_main:
        return finish_follower(recipe, outcome)
    if completed:
        recipe.reporter.read_status()  # still ours? (raises Fenced) before writing output
        location = checkpoint.save_final_model(
            recipe.model,
            recipe.tokenizer,
            storage=recipe.storage,
            output=recipe.output,
            directory=recipe.workdir,
            state_dict=final_state,
        )
        if lora.is_lora(recipe.model) and recipe.hp.mergeAdapter:
            save_merged_model(recipe, location, final_state)
        recipe.checkpoints.flush()  # every checkpoint committed before the job ends
        recipe.metrics.upload()
        write_loss_plot(recipe)
        recipe.tracking.finish("FINISHED", model_uri=location.uri)
        recipe.reporter.stop_heartbeat()
        recipe.reporter.move_to(JobState.COMPLETED, f"the model is in {location.uri}")
        return TrainerExit.OK
    # Earlier checkpoints' commits (and their events) come before the stop's own.
    recipe.checkpoints.flush()
    if outcome is Outcome.STOPPED:
        recipe.reporter.move_to(JobState.STOPPING, "stop requested")
        recipe.save_checkpoint()
        recipe.checkpoints.flush()
        recipe.metrics.upload()
        write_loss_plot(recipe)
        recipe.tracking.finish("KILLED")
        recipe.reporter.stop_heartbeat()
        recipe.reporter.move_to(JobState.STOPPED, f"stopped after step {recipe.progress.step}")
        return TrainerExit.OK
    recipe.save_checkpoint()
    recipe.checkpoints.flush()
    recipe.metrics.upload()
    recipe.tracking.finish("KILLED")  # a resumed attempt logs to a new run
    recipe.reporter.stop_heartbeat()
    # The last heartbeat may be steps behind: show the step the checkpoint holds,
    # the one a relaunch resumes at.
    recipe.publish()
    recipe.reporter.heartbeat()
    recipe.reporter.event("PREEMPTED", f"SIGTERM after step {recipe.progress.step}")
    return TrainerExit.PREEMPTED


def finish_follower(recipe: FullFineTuningRecipe, outcome: Outcome) -> TrainerExit:
    """Ranks 1..N-1: take part in the last checkpoint (its RNG states), write
    nothing; rank 0 writes the job's outcome."""
    if outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED):
        return TrainerExit.OK
    recipe.save_checkpoint()
    return TrainerExit.OK if outcome is Outcome.STOPPED else TrainerExit.PREEMPTED


def write_loss_plot(recipe: FullFineTuningRecipe) -> None:
    """training_artifacts/loss.png from the metrics files (trainer/plots.py)."""
    title = f"{recipe.spec.jobName} ({recipe.spec.jobId})"
    publish_loss_plot(recipe.storage, recipe.output, recipe.metrics, recipe.workdir, title=title)


def save_merged_model(
    recipe: FullFineTuningRecipe,
    model_location: S3Location,
    full_state: dict[str, Any] | None,
) -> None:
    """mergeAdapter: base + adapter as one plain model in `<output>model/merged/`,
    next to the adapter in `model/` (trainer/lora.py). Consumes the peft model.

    Under FSDP (`full_state`: the whole model gathered from the shards) the live model
    holds shards, and merging them would need collectives the other ranks, done, no
    longer answer: rank 0 merges an unsharded copy on the CPU instead."""
    model = recipe.model if full_state is None else unsharded_copy(recipe, full_state)
    local = lora.save_merged_model(model, recipe.tokenizer, recipe.workdir / "merged")
    target = model_location.child("merged").as_prefix()
    recipe.storage.upload_directory(local, target)
    log.info("uploaded the merged model to %s", target.uri)


def unsharded_copy(recipe: FullFineTuningRecipe, full_state: dict[str, Any]) -> Any:
    """The job's peft model rebuilt on the CPU from the base model's files, holding the
    gathered weights (base and adapter)."""
    model, _ = load_model(
        recipe.workdir / "base-model",
        recipe.spec.baseModelIdentifier,
        torch.device("cpu"),
        labels=recipe.labels,
        dropout=recipe.hp.dropout,
        load_arguments=recipe.precision.model_load_arguments(),
    )
    model = lora.wrap(
        model,
        recipe.hp,
        classification=recipe.classification,
        base_model_uri=recipe.spec.baseModelIdentifier,
    )
    result = model.load_state_dict(full_state, strict=False)
    if result.unexpected_keys:  # not this model's weights: a bug, not bad input
        raise RuntimeError(f"gathered weights the model lacks: {result.unexpected_keys[:5]}")
    return model
