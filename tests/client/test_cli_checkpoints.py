"""`tuneforge jobs checkpoints` shows what the API returns for each committed checkpoint:
step, epoch, training and validation loss, committed time and S3 URI, over gRPC and REST,
for a real job on a real server."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import ApiServer, demo_job


def _checkpoints(*transport: str, job_id: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    printed = subprocess.run(
        [sys.executable, "-m", "tuneforge", *transport, "jobs", "checkpoints", job_id],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    return printed.stdout.splitlines()


def test_the_checkpoints_view_shows_step_epoch_losses(lively_server: ApiServer) -> None:
    body = demo_job(
        "cli-checkpoints",
        epochCount=1,
        checkpointIntervalSteps=10,
        evalIntervalSteps=10,
        keepCheckpoints=2,
    )
    with lively_server.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        lively_server.wait_for(job_id, {"COMPLETED"}, 300)
        listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]
    assert len(listed) == 2, listed
    assert all(c["validationLoss"] is not None and c["epoch"] == 1 for c in listed), listed

    over_grpc = _checkpoints("--endpoint", lively_server.grpc_target, job_id=job_id)
    over_rest = _checkpoints("--rest", lively_server.url, job_id=job_id)
    assert over_grpc == over_rest
    header, *rows = over_grpc
    assert header.split()[:6] == ["STEP", "EPOCH", "TRAIN", "LOSS", "VAL", "LOSS"]
    assert len(rows) == len(listed)
    for row, checkpoint in zip(rows, listed, strict=True):
        step, epoch, training_loss, validation_loss, committed_at, *rest = row.split()
        assert int(step) == checkpoint["step"] and int(epoch) == 1
        assert training_loss == f"{checkpoint['trainingLoss']:.4f}"
        assert validation_loss == f"{checkpoint['validationLoss']:.4f}"
        assert committed_at == checkpoint["committedAt"]
        assert rest[-1] == checkpoint["s3Uri"]
