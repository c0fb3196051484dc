"""A preference (DPO) job on two trainer processes under torchrun (gloo on a CPU) trains
the same model as one process with the doubled batch of pairs: each rank computes the
reference log-probabilities, its share of each global batch of pairs, and the DPO loss
summed over both ranks' pairs divided by their total (trainer/preference.py). Compared
as tests/trainer/distributed/test_equivalence.py compares supervised jobs: the weights
to 5e-5 absolute, every step's loss to 1e-5 relative."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from jobstore.storage import ObjectStore, S3Location
from jobstore.store import JobStore
from tests.trainer.distributed.test_equivalence import assert_same_weights, step_losses
from tests.trainer.jobs import DATA_BUCKET, Demo, TrainerRun, create_job

pytestmark = pytest.mark.timeout(900)


def _pairs() -> bytes:
    lines = []
    for n in range(21):  # 21 pairs: the last global batch is short, a rank's share empty
        lines.append(
            {
                "prompt": f"Politely ask for item {n}:",
                "chosen": f" May I have item {n}, please?",
                "rejected": f" Item {n}, now.",
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_two_processes_equal_one_with_the_doubled_batch_of_pairs(
    object_store: ObjectStore,
    job_store: JobStore,
    demo: Demo,
    start_trainer: Callable[..., TrainerRun],
) -> None:
    data = S3Location(DATA_BUCKET, "preference/ranks.jsonl")
    object_store.put_bytes(data, _pairs())
    common: dict[str, Any] = {
        "epochCount": 2,
        "learningRate": 0.002,
        "maxSequenceLength": 64,
        "gradientAccumulationSteps": 2,
    }

    def run(batch_size: int, processes: int) -> Any:
        spec = create_job(
            job_store,
            training_uri=data.uri,
            model_uri=demo.model_uri,
            customization_type="PREFERENCE",
            hyper_parameters=common | {"batchSize": batch_size},
            resources={"gpus": 0, "sharding": "DDP"},
        )
        trainer = start_trainer(spec.jobId, processes=processes)
        assert trainer.wait(timeout=600) == 0, trainer.log()
        return spec

    one = run(4, processes=1)
    two = run(2, processes=2)
    assert_same_weights(object_store, one, two)
    losses_one, losses_two = step_losses(object_store, one), step_losses(object_store, two)
    assert [step for step, _ in losses_two] == [step for step, _ in losses_one]
    assert len(losses_one) == 2 * 3  # 21 pairs, 4 a batch: 6 batches, 3 steps an epoch
    for (step, loss_two), (_, loss_one) in zip(losses_two, losses_one, strict=True):
        assert loss_two == pytest.approx(loss_one, rel=1e-5), step
