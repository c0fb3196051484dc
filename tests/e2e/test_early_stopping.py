"""Early stopping on validation loss: refused at create without validation data (4xx
naming the field, nothing created); with it, the job completes before its last step and
an event says where and why."""

from __future__ import annotations

from jobstore.storage import ObjectStore, parse_s3_uri
from tests.servers import ApiServer, demo_job


def test_early_stopping_without_validation_data_is_refused_naming_the_field(
    api_server: ApiServer,
) -> None:
    body = demo_job("no-validation", earlyStoppingPatience=2)
    del body["validationDataConfig"]
    with api_server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == "hyperParameters.earlyStoppingPatience"
        assert "validationDataConfig" in error["message"]
        assert client.get("/v1/jobs").json()["jobs"] == []


def test_early_stopping_ends_the_job_completed_before_its_last_step(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    # An improvement must be a drop of more than 100 nats: only the first evaluation
    # (step 5) counts as one, so steps 10 and 15 make two in a row without: stop at 15.
    body = demo_job(
        "early",
        epochCount=3,
        evalIntervalSteps=5,
        earlyStoppingPatience=2,
        earlyStoppingThreshold=100.0,
    )
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
        job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=600)
        events = client.get(f"/v1/jobs/{job_id}/events").json()["events"]
    progress = job["progress"]
    assert progress["step"] == 15 and progress["totalSteps"] == 114
    [stopped] = [e for e in events if e["type"] == "EARLY_STOPPED"]
    assert stopped["message"].startswith("early stopping at step 15: validation loss ")
    assert "2 evaluations in a row" in stopped["message"]
    # The final model is the weights of the step early stopping fired at.
    model = parse_s3_uri(job["output"]["modelS3Uri"], field="modelS3Uri")
    assert object_store.head(model.child("model.safetensors")) is not None
