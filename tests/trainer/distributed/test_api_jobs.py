"""Multi-process jobs through the real API: the local launcher runs torchrun (gloo, CPU
ranks) for `resources.gpus` 2, rank 0 alone writes the job's documents and output, a
rank SIGKILLed mid-run gets the job relaunched from its newest committed checkpoint,
and a job asking for what the launcher can never give is refused at create.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuneforge import Client
from tuneforge import errors as client_errors

from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job
from tests.trainer.jobs import wait_for

pytestmark = pytest.mark.timeout(900)

# No GPU is visible to the server, whatever the host has: the refusals do not depend
# on the machine the tests run on.
NO_GPUS = {"CUDA_VISIBLE_DEVICES": ""}
# 300 demo records, 4 a rank, 2 ranks: 38 steps an epoch.
TWO_RANKS = {"gpus": 2}
HYPER = {"epochCount": 2, "batchSize": 4, "checkpointIntervalSteps": 10, "keepCheckpoints": 20}


@pytest.fixture
def cpu_ranks_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[ApiServer]:
    """An API server whose local launcher runs each asked-for GPU as a CPU rank."""
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        extra_env=NO_GPUS | {"TUNEFORGE_LOCAL_CPU_RANKS": "true"},
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


@pytest.fixture
def gpu_less_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[ApiServer]:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        extra_env=NO_GPUS,
    )
    server.start()
    yield server
    server.stop()


def create(
    server: ApiServer, name: str, resources: dict[str, Any] = TWO_RANKS, **hyper: Any
) -> str:
    body = demo_job(name, **(HYPER | hyper)) | {
        "resources": resources,
        "outputDataConfig": {"s3Uri": f"s3://demo/output/{name}-{uuid.uuid4().hex[:8]}/"},
    }
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["jobId"]
    return job_id


def events(server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        found: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    return found


def output(object_store: ObjectStore, job: dict[str, Any]) -> S3Location:
    prefix = (
        f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/model-customization-job-{job['jobId']}"
    )
    return parse_s3_uri(prefix, field="output")


def final_weights(object_store: ObjectStore, job: dict[str, Any]) -> bytes:
    found = object_store.get_bytes(output(object_store, job).child("model", "model.safetensors"))
    assert found is not None, "no final model"
    return found[0]


def test_more_gpus_or_nodes_than_the_local_launcher_has_are_refused_on_rest_and_grpc(
    gpu_less_server: ApiServer,
) -> None:
    cases = [({"gpus": 2}, "resources.gpus"), ({"nodes": 2}, "resources.nodes")]
    with gpu_less_server.client() as client, Client(gpu_less_server.grpc_target) as grpc:
        for resources, field in cases:
            body = demo_job("too-big") | {"resources": resources}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["field"] == field, response.text
            grpc_body = body | {"resources": {"gpus": 0, "nodes": 1, "sharding": "DDP"}}
            grpc_body["resources"].update(resources)
            with pytest.raises(client_errors.InvalidArgument) as refused:
                grpc.create_job(grpc_body)
            assert refused.value.field == field, refused.value
        assert client.get("/v1/jobs").json()["jobs"] == []
        # One GPU on a GPU-less host still trains (on the CPU), as before.
        one = client.post("/v1/jobs", json=demo_job("one") | {"resources": {"gpus": 1}})
        assert one.status_code == 201, one.text
        client.post(f"/v1/jobs/{one.json()['jobId']}/stop")
    gpu_less_server.wait_for(one.json()["jobId"], {"STOPPED"}, timeout=120)


def test_a_two_rank_job_completes_and_rank_0_alone_writes(
    cpu_ranks_server: ApiServer, object_store: ObjectStore
) -> None:
    job_id = create(cpu_ranks_server, "two-ranks", epochCount=1)
    job = cpu_ranks_server.wait_for(job_id, {"COMPLETED"}, timeout=600)
    assert job["progress"]["step"] == 38
    attempt = cpu_ranks_server.home / "work" / job_id / "attempt-1"
    assert (attempt / "rank-1").is_dir()  # rank 1 worked beside rank 0
    # One copy of the tokenized data on the host, rank 0's: rank 1 mapped it rather than
    # tokenizing or downloading its own.
    assert len(list(attempt.glob("data/tokenized-*/meta.json"))) == 1
    assert list((attempt / "rank-1").rglob("tokenized-*")) == []
    committed = [e["message"] for e in events(cpu_ranks_server, job_id)]
    checkpoint_events = [m for m in committed if m.startswith("step ")]
    assert len(checkpoint_events) == len(set(checkpoint_events))
    kinds = [e["type"] for e in events(cpu_ranks_server, job_id)]
    assert kinds.count("CHECKPOINT_COMMITTED") == 4  # steps 10, 20, 30 and 38
    assert kinds.count("LAUNCHED") == 1
    assert kinds.count("COMPLETED") <= 1
    csv = object_store.get_bytes(
        output(object_store, job).child("training_artifacts", "step_wise_training_metrics.csv")
    )
    assert csv is not None
    steps = [line.split(",")[0] for line in csv[0].decode().splitlines()[1:]]
    assert steps == [str(step) for step in range(1, 39)]  # one line a step, not two


def rank_pids(attempt: Path, rank: int) -> list[int]:
    """The trainer processes of `attempt` that torchrun started as `rank`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd == str(attempt) and f"RANK={rank}".encode() in environment:
            found.append(int(entry.name))
    return found


def kill_rank_1_after_checkpoint(server: ApiServer, job_id: str, *, step: int) -> dict[str, Any]:
    """SIGKILL rank 1 of the job's first attempt once the checkpoint of `step` is
    committed; returns the job as it ends (COMPLETED, or the wait fails)."""
    attempt = server.home / "work" / job_id / "attempt-1"

    def checkpointed() -> bool:
        return any(
            e["type"] == "CHECKPOINT_COMMITTED" and e["message"].startswith(f"step {step}:")
            for e in events(server, job_id)
        )

    wait_for(checkpointed, timeout=600, what=f"the checkpoint of step {step}")
    (pid,) = wait_for(lambda: rank_pids(attempt, 1), timeout=10, what="rank 1")
    os.kill(pid, signal.SIGKILL)
    return server.wait_for(job_id, {"COMPLETED"}, timeout=600)


def assert_resumed_once_after_a_crash(
    server: ApiServer, job_id: str, *, from_step_at_least: int
) -> None:
    """One relaunch, counted as a crash, that resumed from a committed checkpoint."""
    happened = events(server, job_id)
    retries = [e["message"] for e in happened if e["type"] == "RETRY"]
    assert len(retries) == 1 and "crash" in retries[0], retries
    resumed = [e["message"] for e in happened if e["type"] == "RESUMED"]
    assert len(resumed) == 1 and resumed[0].startswith("resumed from step "), resumed
    assert int(resumed[0].split()[3]) >= from_step_at_least


def test_a_rank_killed_mid_run_resumes_and_ends_with_the_uninterrupted_weights(
    cpu_ranks_server: ApiServer, object_store: ObjectStore
) -> None:
    reference_id = create(cpu_ranks_server, "uninterrupted")
    reference = cpu_ranks_server.wait_for(reference_id, {"COMPLETED"}, timeout=600)

    job_id = create(cpu_ranks_server, "killed")
    job = kill_rank_1_after_checkpoint(cpu_ranks_server, job_id, step=20)
    assert_resumed_once_after_a_crash(cpu_ranks_server, job_id, from_step_at_least=20)
    assert job["progress"]["step"] == reference["progress"]["step"] == 76
    # Same weights, bit for bit: the resumed ranks restore weights, optimizer, every
    # rank's generators and the data position, and two ranks' gradient sums do not
    # depend on the order they are added in.
    assert final_weights(object_store, job) == final_weights(object_store, reference)


def final_file(object_store: ObjectStore, job: dict[str, Any], name: str) -> bytes:
    found = object_store.get_bytes(output(object_store, job).child("model", name))
    assert found is not None, f"no final {name}"
    return found[0]


@pytest.mark.parametrize(
    ("method", "saved"),
    [("LORA", "adapter_model.safetensors"), ("FULL", "model.safetensors")],
)
def test_a_rank_killed_mid_run_of_an_fsdp_job_resumes_to_the_uninterrupted_weights(
    cpu_ranks_server: ApiServer, object_store: ObjectStore, method: str, saved: str
) -> None:
    """FSDP, 2 ranks: rank 1 SIGKILLed after the checkpoint of step 10 (sharded: each
    rank wrote and uploaded its own shards, nothing gathered) gets the job relaunched;
    both ranks load their shards of the weights (for LoRA, the adapter alone, on a base
    sharded alike) and of the optimizer state from it and end with the uninterrupted
    run's. LoRA failed this before its adapter's saved names
    were mapped back to the model's: the resumed ranks trained a fresh adapter."""
    hyper = {"method": method, "checkpointIntervalSteps": 10}
    if method == "LORA":
        hyper |= {"loraRank": 4, "loraDropout": 0.0}
    sharded = TWO_RANKS | {"sharding": "FSDP"}
    reference_id = create(cpu_ranks_server, "fsdp", sharded, **hyper)
    reference = cpu_ranks_server.wait_for(reference_id, {"COMPLETED"}, timeout=600)
    folder = output(object_store, reference).child("checkpoints", "step-10").as_prefix()
    files = {item["key"][len(folder.key) :] for item in object_store.list_objects(folder)}
    # One shard file a rank, the map of the pieces, rank 1's upload marker; no weights or
    # optimizer state gathered whole.
    assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata"} <= files
    assert "sharded/rank-1.done" in files and "COMMITTED" in files
    assert not {saved, "optimizer.pt"} & files, files

    job_id = create(cpu_ranks_server, "fsdp-killed", sharded, **hyper)
    job = kill_rank_1_after_checkpoint(cpu_ranks_server, job_id, step=10)
    assert_resumed_once_after_a_crash(cpu_ranks_server, job_id, from_step_at_least=10)
    assert job["progress"]["step"] == reference["progress"]["step"] == 76
    # Bit for bit, as for DDP: the resumed ranks restore the weights, the optimizer's
    # sharded moments, every rank's generators and the data position.
    assert final_file(object_store, job, saved) == final_file(object_store, reference, saved)
