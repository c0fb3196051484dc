"""Multi-node jobs on Ray as a Ray Train group (trainer/ray_train.py), against the real
single-node Ray cluster of ray_cluster.py (beside this file): a `resources.nodes` 2 CPU job
runs two gloo ranks, one Ray Train worker each, through the real API; rank 0 alone
writes, and a stop stops every rank. The pure parts (the plan, the entrypoint, the
group's exit code) are checked without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import JobResources, TrainerExit
from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from jobstore.store import JobStore
from service.control.launch.ray import RayPlan, entrypoint, submission_id
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job
from tests.service.control.launch.ray_cluster import (
    ray_api_server_with,
    ray_job_status,
    trainer_pids,
)
from tests.trainer.jobs import wait_for
from trainer.ray_train import (
    RankExit,
    group_exit_code,
    parse_args,
    rank_environment,
    ranks_per_worker,
    scaling_config,
    worker_environment,
)

JOB_ID = "0123456789abcdef"
# 300 demo records, 4 a rank, 2 ranks: 38 steps an epoch (one rank alone: 75).
TWO_NODES = {"nodes": 2, "gpus": 0}
HYPER = {"batchSize": 4, "checkpointIntervalSteps": 10, "keepCheckpoints": 20}


# -- pure parts -----------------------------------------------------------------------


def test_several_nodes_run_as_a_ray_train_group_of_one_worker_a_node() -> None:
    assert RayPlan.of(JobResources(nodes=2)) == RayPlan(2, 0, True)
    three = RayPlan.of(JobResources(nodes=3, gpus=4))
    assert three == RayPlan(3, 4, True)
    assert (three.ranks_per_worker, three.ranks) == (4, 12)
    assert RayPlan(2, 0, True).ranks == 2  # one rank a node on CPUs
    assert RayPlan.of(JobResources(gpus=4)) == RayPlan(1, 4, False)  # torchrun, one node
    assert RayPlan.of(JobResources(gpus=4), ray_train=True) == RayPlan(1, 4, True)
    assert RayPlan.of(JobResources(gpus=1), ray_train=True) == RayPlan(1, 1, False)


def test_the_ray_train_entrypoint_is_the_driver_with_the_plan() -> None:
    command = entrypoint(
        "/opt/venv/bin/python",
        JOB_ID,
        2,
        processes=4,
        plan=RayPlan(2, 4, True),
        cpus_per_rank=2.0,
    )
    assert (
        f"exec /opt/venv/bin/python -m trainer.ray_train --job-id {JOB_ID} "
        f"--name tuneforge-{JOB_ID}-a2 --workers 2 --gpus-per-worker 4 --cpus-per-worker 8.0 "
        "--placement STRICT_SPREAD"
    ) in command
    assert "torchrun" not in command
    spread = entrypoint("python", JOB_ID, 1, plan=RayPlan(2, 0, True), placement="SPREAD")
    assert spread.endswith("--gpus-per-worker 0 --cpus-per-worker 1.0 --placement SPREAD")


def test_each_worker_is_one_node_with_its_gpus_spread_one_a_ray_node() -> None:
    """The ScalingConfig the driver builds: a worker per job node asking for all of the
    node's GPUs, in a STRICT_SPREAD placement group (one bundle a worker, one a node)."""
    node = ["--gpus-per-worker", "8", "--cpus-per-worker", "16"]
    args = parse_args(["--job-id", JOB_ID, "--name", "n", "--workers", "3", *node])
    config = scaling_config(args)
    assert (config.num_workers, config.use_gpu) == (3, True)
    assert config.resources_per_worker == {"CPU": 16.0, "GPU": 8.0}
    assert config.placement_strategy == "STRICT_SPREAD"
    assert config.total_resources == {"CPU": 48.0, "GPU": 24.0}
    assert ranks_per_worker(args) == 8
    cpus = parse_args(
        ["--job-id", JOB_ID, "--name", "n", "--workers", "2", "--placement", "SPREAD"]
    )
    config = scaling_config(cpus)
    assert (config.num_workers, config.use_gpu, config.placement_strategy) == (2, False, "SPREAD")
    assert config.resources_per_worker == {"CPU": 1.0}
    assert ranks_per_worker(cpus) == 1


def test_a_workers_ranks_see_only_its_own_gpus() -> None:
    # Ray Train shows a worker the GPUs of every worker on its node.
    shared = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "PATH": "/bin"}
    assert worker_environment(shared, ["2", "3"]) == {"CUDA_VISIBLE_DEVICES": "2,3", "PATH": "/bin"}
    assert worker_environment({"PATH": "/bin"}, []) == {"PATH": "/bin"}


@pytest.mark.parametrize(
    ("exits", "code"),
    [
        ({0: (0, 5.0), 1: (0, 4.0)}, 0),
        # Rank 0's deliberate codes win over an earlier failure of another rank.
        ({0: (2, 9.0), 1: (1, 1.0)}, int(TrainerExit.BAD_INPUT)),
        ({0: (143, 9.0), 1: (143, 8.0)}, int(TrainerExit.PREEMPTED)),
        ({0: (3, 9.0), 1: (0, 1.0)}, int(TrainerExit.FENCED)),
        # Else the first failure; a rank killed by a signal is 128 + the signal.
        ({0: (1, 9.0), 1: (-9, 2.0)}, 137),
        ({0: (1, 2.0), 1: (1, 9.0)}, 1),
        # A rank that never reported (its worker died) is a crash.
        ({0: (0, 5.0)}, int(TrainerExit.CRASHED)),
    ],
)
def test_the_group_exits_with_torchruns_code(
    exits: dict[int, tuple[int, float]], code: int
) -> None:
    ends = {rank: RankExit(exitcode, at) for rank, (exitcode, at) in exits.items()}
    assert group_exit_code(ends, world_size=2) == code


def test_each_rank_gets_torchruns_environment_and_its_own_directory(tmp_path: Path) -> None:
    base = {"MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500", "TUNEFORGE_ATTEMPT": "3"}
    environment = rank_environment(
        base,
        rank=3,
        world_size=4,
        local_rank=1,
        local_world_size=2,
        master=("10.0.0.1", 41000),
        workdir=tmp_path,
    )
    assert {k: environment[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
    }
    # Rank 0's trainer group, not Ray Train's own (whose port is taken).
    assert (environment["MASTER_ADDR"], environment["MASTER_PORT"]) == ("10.0.0.1", "41000")
    assert environment["TUNEFORGE_ATTEMPT"] == "3"
    assert environment["TUNEFORGE_LOG_FILE"] == str(tmp_path / "trainer.log")


# -- a real Ray cluster -----------------------------------------------------------------


def create(
    server: ApiServer, name: str, resources: dict[str, int] = TWO_NODES, **hyper: Any
) -> dict[str, Any]:
    body = demo_job(name, **(HYPER | hyper)) | {
        "resources": resources,
        "outputDataConfig": {"s3Uri": f"s3://demo/output/{name}-{uuid.uuid4().hex[:8]}/"},
    }
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def events(server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        found: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    return found


@pytest.mark.timeout(900)
def test_a_two_node_job_on_ray_completes_and_rank_0_alone_writes(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    job_id = create(ray_api_server, "ray-two-nodes", epochCount=1)["jobId"]
    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=700)
    assert job["attempt"] == 1
    assert job["progress"]["step"] == 38  # two ranks shared each batch
    kinds = [e["type"] for e in events(ray_api_server, job_id)]
    assert kinds.count("CHECKPOINT_COMMITTED") == 4  # steps 10, 20, 30 and 38
    assert kinds.count("LAUNCHED") == 1
    assert kinds.count("COMPLETED") <= 1
    prefix = f"{job['outputDataConfig']['s3Uri'].rstrip('/')}/model-customization-job-{job_id}"
    csv = object_store.get_bytes(
        parse_s3_uri(prefix, field="output").child(
            "training_artifacts", "step_wise_training_metrics.csv"
        )
    )
    assert csv is not None
    steps = [line.split(",")[0] for line in csv[0].decode().splitlines()[1:]]
    assert steps == [str(step) for step in range(1, 39)]  # one line a step, not two
    with ray_api_server.client() as client:
        log = client.get(f"/v1/jobs/{job_id}/logs").text
    assert "rank 0 of 2 joined the gloo process group" in log
    ray_job = ray_job_status(ray_cluster, job_id, 1)
    assert ray_job["status"].endswith("SUCCEEDED") and ray_job["driver_exit_code"] == 0
    assert trainer_pids(job_id) == []


@pytest.mark.timeout(900)
def test_a_stop_stops_every_rank_of_a_two_node_job_on_ray(
    ray_api_server: ApiServer, ray_cluster: str
) -> None:
    job_id = create(ray_api_server, "ray-two-nodes-stop", epochCount=100)["jobId"]
    ray_api_server.wait_for(job_id, {"RUNNING"}, timeout=700)
    with ray_api_server.client() as client:
        assert client.post(f"/v1/jobs/{job_id}/stop").status_code == 202
    job = ray_api_server.wait_for(job_id, {"STOPPED"}, timeout=300)
    assert job["attempt"] == 1
    ray_job = ray_job_status(ray_cluster, job_id, 1)
    assert ray_job["status"].endswith(("SUCCEEDED", "STOPPED")), ray_job
    assert trainer_pids(job_id) == []


def checkpointed(server: ApiServer, job_id: str, step: int) -> bool:
    return any(
        e["type"] == "CHECKPOINT_COMMITTED" and e["message"].startswith(f"step {step}:")
        for e in events(server, job_id)
    )


def rank_pid(job_id: str, rank: int) -> list[int]:
    """The trainer process of `job_id` that runs `rank` (RANK in its environment)."""
    found = []
    for pid in trainer_pids(job_id):
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environment:
            found.append(pid)
    return found


@pytest.mark.timeout(900)
def test_rays_stop_of_a_two_node_job_preempts_every_rank_and_the_job_resumes(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    """Ray's stop_job (a preemption: nobody asked tuneforge to stop) SIGTERMs the
    driver, which passes it to every rank: rank 0 commits a checkpoint and the driver
    exits 143, which the reconciler relaunches as a preemption, not a crash."""
    from ray.job_submission import JobSubmissionClient

    # 10 epochs, 380 steps: on a quiet machine 2 epochs ran out before the stop arrived.
    job_id = create(ray_api_server, "ray-two-nodes-preempted", epochCount=10)["jobId"]
    wait_for(lambda: checkpointed(ray_api_server, job_id, 10), timeout=700, what="step 10")
    JobSubmissionClient(ray_cluster).stop_job(submission_id(job_id, 1))

    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=700)
    assert job["attempt"] == 2
    assert job["progress"]["step"] == 380
    happened = events(ray_api_server, job_id)
    preempted = [e["message"] for e in happened if e["type"] == "PREEMPTED"]
    assert len(preempted) == 1 and preempted[0].startswith("SIGTERM after step"), preempted
    retries = [e["message"] for e in happened if e["type"] == "RETRY"]
    assert len(retries) == 1 and "(preemption)" in retries[0], retries
    resumed = [e["message"] for e in happened if e["type"] == "RESUMED"]
    assert len(resumed) == 1 and int(resumed[0].split()[3]) >= 10, resumed
    status, _ = JobStore(object_store, ray_api_server.state_bucket).get_status(job_id)
    assert status.retries.get("crash", 0) == 0
    assert ray_job_status(ray_cluster, job_id, 1)["status"].endswith("STOPPED")


@pytest.mark.timeout(900)
def test_a_rank_killed_on_ray_is_a_crash_and_the_job_is_relaunched(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    """Rank 1 SIGKILLed: rank 0 loses its peer and exits without writing, the driver
    exits 137 (the first failure), and the reconciler spends one crash retry."""

    job_id = create(ray_api_server, "ray-two-nodes-crash", epochCount=2)["jobId"]
    wait_for(lambda: checkpointed(ray_api_server, job_id, 10), timeout=700, what="step 10")
    (pid,) = wait_for(lambda: rank_pid(job_id, 1), timeout=30, what="rank 1")
    os.kill(pid, signal.SIGKILL)

    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=700)
    assert job["attempt"] == 2
    assert job["progress"]["step"] == 76
    status, _ = JobStore(object_store, ray_api_server.state_bucket).get_status(job_id)
    assert status.retries == {"crash": 1}
    retries = [e["message"] for e in events(ray_api_server, job_id) if e["type"] == "RETRY"]
    # A crash either way: 137 (rank 1's SIGKILL) or 1 (rank 0 failing on the lost peer),
    # whichever rank's worker reported its exit first; never a preemption or bad input.
    assert len(retries) == 1 and "(crash)" in retries[0], retries
    first = ray_job_status(ray_cluster, job_id, 1)
    assert first["status"].endswith("FAILED") and first["driver_exit_code"] in (1, 137), first


@pytest.mark.timeout(900)
def test_bad_data_fails_a_two_node_job_on_ray_once_with_rank_0s_code(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    """Rank 0 finds the data bad and exits BAD_INPUT; rank 1, its peer gone, exits
    CRASHED; the driver exits 2 (rank 0's code wins) and nothing is retried."""
    key = f"datasets/broken-{uuid.uuid4().hex[:8]}.jsonl"
    lines = [json.dumps({"prompt": "What is 1 + 1?", "completion": " 2"}), '{"prompt": ']
    object_store.put_bytes(S3Location("demo", key), ("\n".join(lines) + "\n").encode())
    body = demo_job("ray-two-nodes-bad-data") | {"resources": TWO_NODES}
    body["trainingDataConfig"]["s3Uri"] = f"s3://demo/{key}"
    with ray_api_server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["jobId"]

    job = ray_api_server.wait_for(job_id, {"FAILED"}, timeout=700)
    assert job["failure"]["reason"] == "DATA_VALIDATION"
    assert f"s3://demo/{key}:2:" in job["failure"]["message"]
    assert job["attempt"] == 1
    ray_job = ray_job_status(ray_cluster, job_id, 1)
    assert ray_job["driver_exit_code"] == int(TrainerExit.BAD_INPUT), ray_job
    kinds = [e["type"] for e in events(ray_api_server, job_id)]
    assert "RETRY" not in kinds and kinds.count("LAUNCHED") == 1, kinds


@pytest.mark.timeout(900)
def test_a_rank_that_cannot_notice_a_dead_peer_is_killed_and_the_job_relaunched(
    ray_api_server: ApiServer, ray_cluster: str, object_store: ObjectStore
) -> None:
    """Rank 0 frozen (SIGSTOP: as NCCL waiting on a dead peer), rank 1 SIGKILLed: rank
    0's worker SIGKILLs it after the teardown grace, as torchrun's agent would, and the
    attempt ends as a crash (137, the first failure) rather than hanging until rank 0's
    heartbeat runs out (which would read as a preemption)."""
    job_id = create(ray_api_server, "ray-two-nodes-frozen", epochCount=2)["jobId"]
    wait_for(lambda: checkpointed(ray_api_server, job_id, 10), timeout=700, what="step 10")
    (rank_0,) = wait_for(lambda: rank_pid(job_id, 0), timeout=30, what="rank 0")
    (rank_1,) = wait_for(lambda: rank_pid(job_id, 1), timeout=30, what="rank 1")
    os.kill(rank_0, signal.SIGSTOP)
    os.kill(rank_1, signal.SIGKILL)

    job = ray_api_server.wait_for(job_id, {"COMPLETED"}, timeout=700)
    assert job["attempt"] == 2
    status, _ = JobStore(object_store, ray_api_server.state_bucket).get_status(job_id)
    assert status.retries == {"crash": 1}
    first = ray_job_status(ray_cluster, job_id, 1)
    assert first["status"].endswith("FAILED") and first["driver_exit_code"] == 137, first


@pytest.mark.timeout(900)
def test_with_ray_train_on_a_one_node_job_runs_its_gpus_as_ranks_of_one_worker(
    ray_cluster: str, s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    """TUNEFORGE_RAY_TRAIN=true: a one-node job with 2 GPUs (the cluster's logical
    ones) runs as a Ray Train group, not torchrun: one worker asking for both GPUs
    starts both ranks, each seeing only that worker's GPUs, and the job completes."""
    from ray.job_submission import JobSubmissionClient

    server = ray_api_server_with(
        ray_cluster, s3_server, tmp_path / "home", TUNEFORGE_RAY_TRAIN="true"
    )
    server.start()
    try:
        job_id = create(server, "ray-train-one-node", {"nodes": 1, "gpus": 2}, epochCount=1)[
            "jobId"
        ]
        ranks = [
            wait_for(lambda r=r: rank_pid(job_id, r), timeout=700, what=f"rank {r}") for r in (0, 1)
        ]
        seen = [rank_variables(pid) for (pid,) in ranks]
        job = server.wait_for(job_id, {"COMPLETED"}, timeout=700)
        assert job["attempt"] == 1
        assert job["progress"]["step"] == 38  # two ranks shared each batch
        with server.client() as client:
            log = client.get(f"/v1/jobs/{job_id}/logs").text
    finally:
        server.stop()
    assert "rank 0 of 2 joined the gloo process group" in log
    assert [v["LOCAL_RANK"] for v in seen] == ["0", "1"]
    assert {v["LOCAL_WORLD_SIZE"] for v in seen} == {"2"}
    # Both of the worker's GPUs, whichever ids Ray gave it.
    assert {len(v["CUDA_VISIBLE_DEVICES"].split(",")) for v in seen} == {2}
    info = JobSubmissionClient(ray_cluster).get_job_info(submission_id(job_id, 1))
    assert "-m trainer.ray_train" in info.entrypoint
    assert "--workers 1 --gpus-per-worker 2" in info.entrypoint
    assert ray_job_status(ray_cluster, job_id, 1)["driver_exit_code"] == 0
    assert trainer_pids(job_id) == []


def rank_variables(pid: int) -> dict[str, str]:
    """The variables of a running trainer that say where its rank runs."""
    names = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES")
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = dict(entry.decode().split("=", 1) for entry in environment if b"=" in entry)
    return {name: pairs.get(name, "") for name in names}
