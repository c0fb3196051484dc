"""Two trainer processes under torchrun (gloo on a CPU) train the same model as one
process with the doubled batch: the same global batches in the same order, the loss
summed over both ranks' tokens and divided by their total, so the same gradients.

Not bitwise: each rank sums the loss of its half of the tokens and DDP adds the two
halves' gradients (scaled by 2, then averaged), where one process sums all tokens in
one pass. Float addition in another order differs in the last bits, and AdamW divides
by the root of the squared gradients, which turns a last-bit difference of a near-zero
gradient into a visible one: seen, 3 of 32768 elements off by 4e-6 after 38 steps. So
the weights are compared to 5e-5 absolute (one step moves a weight by up to the learning
rate, 3e-3: a skipped slice or a wrong batch is far outside), and the loss of every
step, which AdamW does not amplify, to 1e-5 relative (a token count off by one is 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load

from jobstore.documents import JobSpec, JobState, TrainerExit
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from tests.trainer.jobs import FAST_HYPERPARAMETERS, Demo, TrainerRun, create_job, output_location

pytestmark = pytest.mark.timeout(900)

RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 5e-5
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"


def sharded_checkpoint_weights(
    storage: ObjectStore, spec: JobSpec, step: int, directory: Path
) -> dict[str, torch.Tensor]:
    """The weights in an FSDP job's sharded checkpoint of `step`, after checking it holds
    one shard file a rank and no consolidated copy: read offline, without a process
    group, by torch's own converter (what an operator would use)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = output_location(spec, "checkpoints", f"step-{step}").as_prefix()
    names = {item["key"][len(folder.key) :] for item in storage.list_objects(folder)}
    assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata"} <= names
    assert not {"model.safetensors", "adapter_model.safetensors", "optimizer.pt"} & names, names
    storage.download_prefix(folder.child("sharded"), directory / "sharded")
    dcp_to_torch_save(directory / "sharded", directory / "whole.pt")
    state = torch.load(directory / "whole.pt", weights_only=True)
    weights: dict[str, torch.Tensor] = state["model"]
    assert state["optimizer"]["state"], "no optimizer state in the checkpoint"
    return weights


def final_weights(storage: ObjectStore, spec: JobSpec) -> dict[str, torch.Tensor]:
    found = storage.get_bytes(output_location(spec, "model", "model.safetensors"))
    assert found is not None, "no final model"
    return load(found[0])


def run_to_completion(
    store: JobStore,
    demo: Demo,
    start: Callable[..., TrainerRun],
    hyper_parameters: dict[str, Any],
    processes: int,
    sharding: str = "DDP",
) -> JobSpec:
    spec = create_job(
        store,
        training_uri=demo.train_uri,
        model_uri=demo.model_uri,
        hyper_parameters=hyper_parameters,
        resources={"gpus": 0, "sharding": sharding},
    )
    run = start(spec.jobId, processes=processes)
    assert run.wait(timeout=600) == TrainerExit.OK, run.log()
    status, _ = store.get_status(spec.jobId)
    assert status.state is JobState.COMPLETED, run.log()
    return spec


def assert_same_weights(storage: ObjectStore, one: JobSpec, two: JobSpec) -> None:
    single, double = final_weights(storage, one), final_weights(storage, two)
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(
            double[name], single[name], rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE
        )


def step_losses(storage: ObjectStore, spec: JobSpec) -> list[tuple[int, float]]:
    """(step, training loss) of every step, from the job's metrics CSV."""
    found = storage.get_bytes(output_location(spec, TRAINING_CSV))
    assert found is not None, "no training metrics"
    lines = found[0].decode().splitlines()[1:]
    return [(int(line.split(",")[0]), float(line.split(",")[2])) for line in lines]


@pytest.mark.parametrize(
    "packing,accumulation", [(True, 2), (False, 1)], ids=["packed-accumulated", "padded"]
)
def test_two_processes_equal_one_with_the_doubled_batch(
    object_store: ObjectStore,
    job_store: JobStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
    packing: bool,
    accumulation: int,
) -> None:
    common = FAST_HYPERPARAMETERS | {
        "epochCount": 1,
        "packing": packing,
        "gradientAccumulationSteps": accumulation,
    }
    one = run_to_completion(job_store, demo, start_trainer, common | {"batchSize": 8}, processes=1)
    two = run_to_completion(job_store, demo, start_trainer, common | {"batchSize": 4}, processes=2)
    assert_same_weights(object_store, one, two)
    status_one, _ = job_store.get_status(one.jobId)
    status_two, _ = job_store.get_status(two.jobId)
    assert status_two.progress.step == status_one.progress.step
    assert status_two.progress.tokensSeen == status_one.progress.tokensSeen
    losses_one, losses_two = step_losses(object_store, one), step_losses(object_store, two)
    assert [step for step, _ in losses_two] == [step for step, _ in losses_one]
    assert len(losses_one) == status_one.progress.step  # one line a step: rank 0's only
    for (step, loss_two), (_, loss_one) in zip(losses_two, losses_one, strict=True):
        assert loss_two == pytest.approx(loss_one, rel=1e-5), step


def test_fsdp_on_two_cpu_processes_matches_one_process(
    object_store: ObjectStore,
    job_store: JobStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
    tmp_path: Path,
) -> None:
    """FSDP2 (`fully_shard`, gloo): each rank holds half of every weight and of the
    optimizer state; the checkpoints (every 10 steps) hold each rank's shards, the final
    model is gathered whole. Same maths as one process, so the same tolerance as DDP's."""
    common = FAST_HYPERPARAMETERS | {"epochCount": 1, "checkpointIntervalSteps": 10}
    one = run_to_completion(job_store, demo, start_trainer, common | {"batchSize": 8}, 1)
    two = run_to_completion(
        job_store, demo, start_trainer, common | {"batchSize": 4}, 2, sharding="FSDP"
    )
    assert_same_weights(object_store, one, two)
    sharded = sharded_checkpoint_weights(object_store, two, 30, tmp_path)
    assert sharded.keys() == final_weights(object_store, two).keys()


def adapter_weights(storage: ObjectStore, spec: JobSpec) -> dict[str, torch.Tensor]:
    found = storage.get_bytes(output_location(spec, "model", "adapter_model.safetensors"))
    assert found is not None, "no final adapter"
    return load(found[0])


def test_lora_under_fsdp_on_two_cpu_processes_matches_one_process(
    object_store: ObjectStore,
    job_store: JobStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
    tmp_path: Path,
) -> None:
    """LoRA on a sharded base (the case for FSDP: a base too big for one GPU): the frozen
    base and the adapters are sharded alike, the checkpoints hold each rank's shards of
    the adapter alone, the final adapter is gathered whole, and the merged model is
    written once."""
    common = FAST_HYPERPARAMETERS | {
        "epochCount": 1,
        "checkpointIntervalSteps": 10,
        "method": "LORA",
        "loraRank": 4,
        "loraDropout": 0.0,  # dropout masks are per rank: they would differ by design
        "mergeAdapter": True,
    }
    one = run_to_completion(job_store, demo, start_trainer, common | {"batchSize": 8}, 1)
    two = run_to_completion(
        job_store, demo, start_trainer, common | {"batchSize": 4}, 2, sharding="FSDP"
    )
    single, double = adapter_weights(object_store, one), adapter_weights(object_store, two)
    assert single.keys() == double.keys() and single
    for name in single:
        torch.testing.assert_close(
            double[name], single[name], rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE
        )
    # Rank 0 merges an unsharded copy: the same merged model as one process's.
    merged = {}
    for spec in (one, two):
        found = object_store.get_bytes(
            output_location(spec, "model", "merged", "model.safetensors")
        )
        assert found is not None, "no merged model"
        merged[spec.jobId] = load(found[0])
    single_merged, double_merged = merged[one.jobId], merged[two.jobId]
    assert single_merged.keys() == double_merged.keys()
    assert not any("lora" in name for name in double_merged)
    for name in single_merged:
        torch.testing.assert_close(
            double_merged[name],
            single_merged[name],
            rtol=RELATIVE_TOLERANCE,
            atol=ABSOLUTE_TOLERANCE,
        )
    sharded = sharded_checkpoint_weights(object_store, two, 30, tmp_path)
    assert len(sharded) == len(single) and all("lora_" in name for name in sharded), sharded
