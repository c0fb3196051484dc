"""A job's life through boto3's bedrock client: real server, store and trainer."""

from __future__ import annotations

import pytest
from tuneforge import Client, pb

from jobstore.documents import JobControl, utc_now
from jobstore.storage import ObjectStore, parse_s3_uri
from jobstore.store import JobStore
from tests.faces.bedrock.conftest import (
    ACCOUNT,
    REGION,
    create_body,
    make_client,
    wait_status,
)
from tests.servers import ApiServer


def test_job_completes_with_metrics_and_a_custom_model(
    trainer_server: ApiServer, object_store: ObjectStore
) -> None:
    client = make_client(trainer_server)
    created = client.create_model_customization_job(
        **create_body("bedrock-life", model="life-model"), jobTags=[{"key": "team", "value": "ml"}]
    )
    arn = created["jobArn"]
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    prefix = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/"
    assert arn.startswith(prefix)
    job_id = arn[len(prefix) :]

    job = wait_status(client, "bedrock-life", {"Completed"})
    assert job["jobArn"] == arn and job["jobName"] == "bedrock-life"
    assert job["outputModelName"] == "life-model"
    assert job["outputModelArn"] == f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{job_id}"
    assert job["roleArn"].endswith(":role/tuneforge-test")
    assert job["customizationType"] == "FINE_TUNING"
    assert job["hyperParameters"]["epochCount"] == "1"
    assert job["validationDataConfig"]["validators"][0]["s3Uri"].endswith("validation.jsonl")
    assert job["trainingMetrics"]["trainingLoss"] > 0
    assert job["validationMetrics"][0]["validationLoss"] > 0
    assert job["endTime"] >= job["creationTime"]  # botocore parsed both as datetimes
    details = job["statusDetails"]
    assert {d["status"] for d in details.values()} == {"Completed"}
    assert set(details) == {"validationDetails", "dataProcessingDetails", "trainingDetails"}
    assert "failureMessage" not in job

    # By ARN, the same job; through REST v1, the same job in the same state.
    assert client.get_model_customization_job(jobIdentifier=arn)["jobArn"] == arn
    with trainer_server.client() as rest:
        native = rest.get(f"/v1/jobs/{job_id}").json()
    assert native["state"] == "COMPLETED" and native["jobName"] == "bedrock-life"
    assert native["tags"] == {"team": "ml"}
    # ... and through gRPC.
    with Client(trainer_server.grpc_target) as grpc_client:
        seen = grpc_client.get_job(job_id)
    assert seen.state == pb.COMPLETED and seen.job_name == "bedrock-life"

    model = client.get_custom_model(modelIdentifier="life-model")
    assert model["modelArn"] == job["outputModelArn"] and model["jobArn"] == arn
    assert model["modelStatus"] == "Active"
    assert model["trainingMetrics"]["trainingLoss"] == job["trainingMetrics"]["trainingLoss"]
    assert client.get_custom_model(modelIdentifier=model["modelArn"])["modelName"] == "life-model"
    listed = client.list_custom_models(nameContains="life")["modelSummaries"]
    assert [m["modelName"] for m in listed] == ["life-model"]
    assert listed[0]["modelArn"] == model["modelArn"] and listed[0]["ownerAccountId"] == ACCOUNT
    by_base = client.list_custom_models(
        baseModelArnEquals="s3://demo/models/tiny-llama/", sortOrder="Ascending", maxResults=5
    )["modelSummaries"]
    assert "life-model" in {m["modelName"] for m in by_base}
    assert not client.list_custom_models(baseModelArnEquals="s3://demo/models/other/")[
        "modelSummaries"
    ]

    # A job training on the custom model keeps it from being deleted while it runs.
    on_model = create_body("bedrock-on-model", model="second-model")
    on_model["baseModelIdentifier"] = "life-model"
    client.create_model_customization_job(**on_model)
    with pytest.raises(client.exceptions.ConflictException, match="base model of job"):
        client.delete_custom_model(modelIdentifier="life-model")
    client.stop_model_customization_job(jobIdentifier="bedrock-on-model")
    wait_status(client, "bedrock-on-model", {"Stopped"}, timeout=120)

    model_dir = parse_s3_uri(native["output"]["modelS3Uri"], field="model")
    assert list(object_store.list_objects(model_dir))
    client.delete_custom_model(modelIdentifier="life-model")
    assert not list(object_store.list_objects(model_dir))  # artifacts removed
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_custom_model(modelIdentifier="life-model")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.delete_custom_model(modelIdentifier="life-model")


def test_stop_an_in_progress_job(trainer_server: ApiServer) -> None:
    client = make_client(trainer_server)
    client.create_model_customization_job(**create_body("bedrock-stop", epochCount="100"))
    job = client.get_model_customization_job(jobIdentifier="bedrock-stop")
    assert job["status"] == "InProgress"
    assert (
        client.stop_model_customization_job(jobIdentifier="bedrock-stop")["ResponseMetadata"][
            "HTTPStatusCode"
        ]
        == 200
    )
    job = client.get_model_customization_job(jobIdentifier="bedrock-stop")
    assert job["status"] in ("Stopping", "Stopped")
    if job["status"] == "Stopping":
        with pytest.raises(client.exceptions.ConflictException):
            client.stop_model_customization_job(jobIdentifier="bedrock-stop")
    job = wait_status(client, "bedrock-stop", {"Stopped"}, timeout=120)
    assert "Stopped" in {d["status"] for d in job["statusDetails"].values()}
    assert "outputModelArn" not in job
    with pytest.raises(client.exceptions.ValidationException, match="only an InProgress"):
        client.stop_model_customization_job(jobIdentifier="bedrock-stop")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_custom_model(modelIdentifier="bedrock-stop-model")


def _stop_requested(control: JobControl) -> JobControl:
    return control.model_copy(update={"stopRequested": True, "stopRequestedAt": utc_now()})


def test_a_stop_decides_on_the_job_as_stored_now(
    trainer_server: ApiServer, object_store: ObjectStore
) -> None:
    """Describes may answer from what the replica read up to a second ago; a stop does not
    decide on that. Stopped moments ago by someone else (another replica, here written
    straight to the store), the job is no longer InProgress to a stop: never a 200."""
    client = make_client(trainer_server)
    arn = client.create_model_customization_job(
        **create_body("bedrock-stop-elsewhere", epochCount="100")
    )["jobArn"]
    # Running: from now on only the trainer writes its status, so this replica's entry is
    # not dropped by a write of its own. Then described: in its memory as InProgress.
    trainer_server.wait_for(arn.rsplit("/", 1)[1], {"RUNNING"}, timeout=240)
    assert client.get_model_customization_job(jobIdentifier=arn)["status"] == "InProgress"
    JobStore(object_store, trainer_server.state_bucket).update_control(
        arn.rsplit("/", 1)[1], _stop_requested
    )
    # Stopping (a conflict), or Stopped already if a reconcile pass ended it in between.
    with pytest.raises(
        (client.exceptions.ConflictException, client.exceptions.ValidationException)
    ):
        client.stop_model_customization_job(jobIdentifier=arn)
    wait_status(client, arn, {"Stopped"}, timeout=120)
