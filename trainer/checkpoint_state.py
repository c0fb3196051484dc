"""A checkpoint's state, assembled from the recipe and restored into it.

`save_checkpoint` writes every piece of a resumable checkpoint locally (weights,
optimizer, RNG streams of every rank, progress with the data position, metrics files,
manifest) and hands it to the background uploader; an FSDP job's weights and optimizer
state are each rank's own shards, written and uploaded by each rank, never gathered.
`resume` restores all of it from the newest committed checkpoint. The file layout and
the upload are trainer/checkpoint.py's.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Any

import torch

from jobstore.documents import utc_now
from trainer import checkpoint, lora
from trainer.distributed import load_full_state, load_sharded_state, save_sharded_state
from trainer.resume import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from trainer.recipe import FullFineTuningRecipe

log = logging.getLogger(__name__)


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


def resume(recipe: FullFineTuningRecipe) -> None:
    """Continue from the newest committed checkpoint an earlier attempt left, if any.

    Restores the weights, the optimizer (and scheduler) state, the progress with the
    position in the epoch, the metrics files and every RNG stream, so training goes on
    exactly as if it had never stopped. Uncommitted folders are never read.
    """
    steps = checkpoint.committed_steps(recipe.storage, recipe.output)
    if not steps:
        return
    step = steps[-1]
    assert recipe.optimizer is not None
    local = checkpoint.download_checkpoint(
        recipe.storage, recipe.output, step, recipe.workdir / "resume" / f"step-{step}"
    )
    state = checkpoint.read_training_state(local)
    shards = local / checkpoint.SHARDED_FOLDER
    if recipe.sharded and shards.is_dir():  # every rank reads the pieces of its shards
        load_sharded_state(recipe.model, recipe.optimizer, shards)
    elif state.optimizer is None:
        raise ValueError(
            f"checkpoint step {step} holds FSDP shards, which only an FSDP job with several "
            "ranks can resume from"
        )
    elif recipe.sharded:  # a consolidated checkpoint (written before sharded ones existed)
        weights = checkpoint.read_model_weights(local)
        if lora.is_lora(recipe.model):  # the adapter alone, under peft's saved names
            weights = lora.model_state_from_adapter(recipe.model, weights)
        load_full_state(recipe.model, recipe.optimizer, weights, state.optimizer)
    else:
        recipe.load_weights(local)
        recipe.optimizer.load_state_dict(state.optimizer)
    recipe.load_scheduler_state(state.scheduler)
    saved = state.trainer_state
    total_steps = recipe.progress.total_steps
    recipe.progress.load_state_dict(saved["progress"])
    if (
        saved.get("trainingExamples") != len(recipe.train_set)
        or recipe.progress.total_steps != total_steps
        or saved.get("worldSize", 1) != recipe.distributed.world_size
    ):
        recipe.reporter.event(
            "RESUME_WARNING",
            f"the training data changed since step {step} was saved "
            f"({saved.get('trainingExamples')} examples then, {len(recipe.train_set)} now; "
            f"{saved.get('worldSize', 1)} processes then, "
            f"{recipe.distributed.world_size} now): "
            "training goes on from its weights, but not in the same order",
        )
        recipe.progress.total_steps = total_steps
    recipe.metrics.restore(local / checkpoint.METRICS_FOLDER)
    restore_rng_state(*rank_rng_state(saved, state.rng_tensors, recipe.distributed.rank))
    recipe.last_checkpoint_step = step
    shutil.rmtree(local)
    message = f"resumed from step {step} (epoch {recipe.progress.epoch})"
    log.info("%s", message)
    recipe.reporter.event("RESUMED", message)


def save_checkpoint(recipe: FullFineTuningRecipe) -> None:
    """Write a resumable checkpoint of the current step and queue its upload.

    The files are written now (the tensors change at the next step); the upload and
    the COMMITTED marker happen on the uploader's thread. Nothing before the first
    step: the weights are still the base model's, already in object storage. A step
    already checkpointed (an epoch end, or the checkpoint this attempt resumed from)
    is not written again.
    """
    step = recipe.progress.step
    if recipe.model is None or step == 0:
        return
    if step == recipe.last_checkpoint_step:
        if recipe.distributed.is_main:
            recipe.checkpoints.flush()
            location = checkpoint.checkpoint_location(recipe.output, step)
            recipe.reporter.event("CHECKPOINT_COMMITTED", f"step {step}: {location.uri}")
        return
    assert recipe.optimizer is not None
    # Every rank's generators (a collective); rank 0 writes them all.
    states = recipe.distributed.gather(capture_rng_state())
    local = recipe.workdir / "checkpoints" / f"step-{step}"  # each rank's own workdir
    if recipe.sharded:  # every rank writes its own shards, uploads them in parallel
        if local.exists():
            shutil.rmtree(local)
        save_sharded_state(recipe.model, recipe.optimizer, local / checkpoint.SHARDED_FOLDER)
        if not recipe.distributed.is_main:
            if recipe.shard_uploader is None:
                recipe.shard_uploader = checkpoint.ShardUploader(
                    recipe.storage, recipe.output, recipe.distributed.rank, recipe.reporter.attempt
                )
            recipe.shard_uploader.submit(local / checkpoint.SHARDED_FOLDER, step)
        else:  # commit only once the other ranks' shards of this attempt are in
            ranks = range(1, recipe.distributed.world_size)
            attempt = recipe.reporter.attempt
            recipe.checkpoints.shards_ready = lambda _, location: checkpoint.wait_for_shards(
                recipe.storage, location, ranks, attempt
            )
    if not recipe.distributed.is_main:
        recipe.last_checkpoint_step = step
        return
    rng_document, rng_tensors = states[0]
    trainer_state: dict[str, Any] = {
        "progress": recipe.progress.state_dict(),
        "rng": rng_document,
        "seed": recipe.hp.seed,  # with the epoch, it fixes the epoch's shuffled order
        "trainingExamples": len(recipe.train_set),
    }
    if recipe.distributed.enabled:
        trainer_state["worldSize"] = recipe.distributed.world_size
        trainer_state["rankRng"] = {str(r): states[r][0] for r in range(1, len(states))}
        for rank in range(1, len(states)):
            for name, tensor in states[rank][1].items():
                rng_tensors[f"{RANK_PREFIX.format(rank)}{name}"] = tensor
    checkpoint.write_checkpoint(
        local,
        # Sharded: the weights and optimizer state are in sharded/ already.
        save_weights=(lambda directory: None) if recipe.sharded else recipe.save_weights,
        state=checkpoint.TrainingState(
            trainer_state=trainer_state,
            optimizer=None if recipe.sharded else recipe.optimizer.state_dict(),
            scheduler=recipe.scheduler_state(),
            rng_tensors=rng_tensors,
        ),
        manifest=manifest(recipe),
        metrics_files=recipe.metrics.files(),
    )
    recipe.checkpoints.submit(local, step)
    recipe.last_checkpoint_step = step


def manifest(recipe: FullFineTuningRecipe) -> dict[str, Any]:
    """The checkpoint's summary, read by the API's checkpoint listing."""
    progress = recipe.progress
    evaluated_now = progress.last_evaluated_step == progress.step
    return {
        "step": progress.step,
        "epoch": progress.epoch,
        "trainingLoss": progress.training_loss,
        "validationLoss": progress.validation_loss if evaluated_now else None,
        "validationMetrics": progress.validation_metrics if evaluated_now else {},
        "bestValidationLoss": progress.best_validation_loss,
        "tokensSeen": progress.tokens_seen,
        "createdAt": utc_now(),
    }
