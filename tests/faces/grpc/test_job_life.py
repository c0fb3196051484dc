"""A job's life through the generated gRPC stubs: a real server, store and trainer."""

from __future__ import annotations

import itertools
import time

import grpc
from tuneforge import Client, convert
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore, parse_s3_uri
from tests.servers import ApiServer, demo_job

ORDER = [pb.QUEUED, pb.VALIDATING, pb.RUNNING, pb.STOPPING, pb.COMPLETED, pb.STOPPED]


def _states_in_order(updates: list[pb.Job]) -> list[int]:
    """The states seen, each once, in the order first seen."""
    seen: list[int] = []
    for job in updates:
        if not seen or seen[-1] != job.state:
            seen.append(job.state)
    return seen


def test_watch_follows_a_demo_job_to_completed(lively_server: ApiServer) -> None:
    channel = grpc.insecure_channel(lively_server.grpc_target)
    stub = pb_grpc.FineTuningServiceStub(channel)
    client = Client(lively_server.grpc_target)
    request = convert.create_request(demo_job("grpc-life", epochCount=1))
    created = stub.CreateJob(request, timeout=30)
    assert created.created
    assert created.job.state == pb.QUEUED
    job_id = created.job.job_id

    # Iterating to the end proves the server closed the stream after the terminal state.
    stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=240)
    updates = [response.job for response in stream]

    states = _states_in_order(updates)
    assert states[0] in (pb.QUEUED, pb.VALIDATING), states  # the current state first
    assert states[-1] == pb.COMPLETED
    assert pb.RUNNING in states
    assert states == sorted(states, key=ORDER.index), f"states out of order: {states}"
    assert all(job.state != pb.COMPLETED for job in updates[:-1]), "updates after the end"

    running_steps = [job.progress.step for job in updates if job.state == pb.RUNNING]
    assert running_steps == sorted(running_steps), running_steps
    assert len(set(running_steps)) >= 2, f"no progress updates while RUNNING: {running_steps}"
    assert any(job.progress.HasField("training_loss") for job in updates if job.state == pb.RUNNING)
    for earlier, later in itertools.pairwise(updates):
        assert not convert.same_view(earlier, later), "an update that changed nothing"

    final = updates[-1]
    assert final.progress.step == final.progress.total_steps > 0
    assert final.progress.total_epochs == 1
    assert not final.HasField("failure")
    assert [entry.state for entry in final.state_times] == [
        pb.QUEUED,
        pb.VALIDATING,
        pb.RUNNING,
        pb.COMPLETED,
    ]
    created_at = final.created_at.ToDatetime()
    assert created_at <= final.started_at.ToDatetime() <= final.ended_at.ToDatetime()
    assert final.output.model_s3_uri.endswith(f"model-customization-job-{job_id}/model/")
    assert final.hyper_parameters.epoch_count == 1
    assert final.hyper_parameters.learning_rate == 0.003
    assert final.hyper_parameters.max_sequence_length == 512  # the default, filled in

    # The same job through the hand-written client: describe, events, log.
    described = client.get_job(job_id)
    assert convert.job_to_dict(described) == convert.job_to_dict(final)
    events = client.list_job_events(job_id)
    assert [event.sequence for event in events] == list(range(len(events)))
    types = [event.type for event in events]
    assert types[0] == "CREATED" and "LAUNCHED" in types, types
    assert client.wait(job_id, timeout=30).state == pb.COMPLETED

    log = client.read_job_log(job_id)
    assert log.size > 0 and log.next_offset == log.size
    assert len(log.data) == log.size
    tail = client.read_job_log(job_id, offset=-10)
    assert tail.data == log.data[-10:]
    client.close()
    channel.close()


def test_stop_through_grpc_watch_sees_stopping_then_stopped(
    api_server: ApiServer,
    stub: pb_grpc.FineTuningServiceStub,
    client: Client,
    object_store: ObjectStore,
) -> None:
    job_id = client.create_job(demo_job("grpc-stop", epochCount=100)).job.job_id
    updates: list[pb.Job] = []
    stopped_at: float | None = None
    for job in client.watch(job_id, timeout=180):
        updates.append(job)
        if job.state == pb.RUNNING and job.progress.step > 0 and stopped_at is None:
            answer = stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=30)
            assert answer.state == pb.STOPPING and answer.stop_requested
            stopped_at = time.monotonic()
    assert stopped_at is not None, "the job never ran"
    assert time.monotonic() - stopped_at < 60

    states = _states_in_order(updates)
    assert states[-2:] == [pb.STOPPING, pb.STOPPED], states
    assert pb.COMPLETED not in states
    final = updates[-1]
    assert final.stop_requested and final.HasField("ended_at")
    assert 0 < final.progress.step < final.progress.total_steps

    # Stopping writes a final committed checkpoint; the listing shows only committed ones.
    checkpoints = client.list_checkpoints(job_id)
    assert checkpoints, "no committed checkpoint after the stop"
    assert checkpoints[-1].step == final.progress.step
    for checkpoint in checkpoints:
        marker = parse_s3_uri(checkpoint.s3_uri + "COMMITTED", field="checkpoint")
        assert object_store.head(marker) is not None
        assert checkpoint.HasField("committed_at")
