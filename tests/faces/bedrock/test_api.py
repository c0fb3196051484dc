"""Create, list, get and errors through boto3's bedrock client (development-mode server,
cheap jobs: their trainer is /bin/false, so they end Failed in a few seconds)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from jobstore.storage import ObjectStore, S3Location
from tests.faces.bedrock.conftest import ACCOUNT, REGION, create_body, make_client, wait_status
from tests.servers import ApiServer, demo_job

SUPPORTED_TYPES = "FINE_TUNING, CONTINUED_PRE_TRAINING, PREFERENCE"


def test_create_is_idempotent_with_client_request_token(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server, "any-key", "any-secret")  # development mode
    body = dict(create_body("idem-job"), clientRequestToken="idem-token-1")
    first = client.create_model_customization_job(**body)["jobArn"]
    again = client.create_model_customization_job(**body)["jobArn"]
    assert again == first

    changed = dict(body, hyperParameters={"epochCount": "2"})
    with pytest.raises(client.exceptions.ConflictException, match="different parameters"):
        client.create_model_customization_job(**changed)
    # The same name without that token (or with another token) is another job: names are
    # unique, and the answer is AWS's own, the one Airflow's operator renames the job on.
    for token in ({}, {"clientRequestToken": "idem-token-2"}):
        with pytest.raises(client.exceptions.ValidationException) as refused:
            client.create_model_customization_job(
                **create_body("idem-job", model="other-model"), **token
            )
        assert refused.value.response["Error"] == {
            "Code": "ValidationException",
            "Message": "The provided job name is currently in use.",
        }
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # A custom model name already taken by another job.
    with pytest.raises(client.exceptions.ConflictException, match="custom model named"):
        client.create_model_customization_job(**create_body("idem-other", model="idem-job-model"))
    # ...and the refused create left its job name free.
    client.create_model_customization_job(**create_body("idem-other"))


def test_jobs_ask_for_the_gpus_the_operator_set(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    arn = client.create_model_customization_job(**create_body("gpu-job"))["jobArn"]
    job_id = arn.rsplit("/", 1)[-1]
    with cheap_server.client() as rest:
        job = rest.get(f"/v1/jobs/{job_id}").json()
    assert job["resources"]["gpus"] == 1, job


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"customizationType": "DISTILLATION"}, f"supported: {SUPPORTED_TYPES}$"),
        ({"customizationType": "CLASSIFICATION"}, f"supported: {SUPPORTED_TYPES}$"),
        ({"hyperParameters": {"epochCount": "0"}}, r"hyperParameters\.epochCount .*1-100"),
        ({"hyperParameters": {"learningRate": "2"}}, r"learningRate .*\(0, 1\]"),
        ({"hyperParameters": {"batchSize": "eight"}}, r"batchSize must be an integer .*1-1024"),
        ({"hyperParameters": {"temperature": "0.1"}}, r"temperature is not a supported"),
        ({"trainingDataConfig": {"s3Uri": "s3://demo/datasets/"}}, "trainingDataConfig.s3Uri"),
        ({"baseModelIdentifier": "amazon.titan-text-lite-v1"}, "baseModelIdentifier"),
        ({"roleArn": "not-a-role"}, "roleArn"),
        ({"jobName": "bad name!"}, "jobName"),
        ({"vpcConfig": {"subnetIds": ["s"], "securityGroupIds": ["g"]}}, "vpcConfig"),
    ],
)
def test_invalid_requests_raise_validation_exception(
    cheap_server: ApiServer, change: dict[str, object], message: str
) -> None:
    client = make_client(cheap_server)
    body = create_body("invalid-job")
    body.update(change)
    with pytest.raises(client.exceptions.ValidationException, match=message):
        client.create_model_customization_job(**body)


def test_unknown_jobs_and_models_raise_resource_not_found(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    for identifier in (
        "no-such-job",
        f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/0000000000000000",
        f"arn:aws:bedrock:us-west-2:{ACCOUNT}:model-customization-job/0000000000000000",
    ):
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_model_customization_job(jobIdentifier=identifier)
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.stop_model_customization_job(jobIdentifier=identifier)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_custom_model(modelIdentifier="no-such-model")


def test_list_filters_and_paginator(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    before = datetime.now(UTC) - timedelta(seconds=1)
    arns = [
        client.create_model_customization_job(**create_body(f"page-{i:02d}"))["jobArn"]
        for i in range(25)
    ]
    after = datetime.now(UTC) + timedelta(seconds=1)

    paginator = client.get_paginator("list_model_customization_jobs")
    pages = list(paginator.paginate(nameContains="PAGE-", PaginationConfig={"PageSize": 10}))
    sizes = [len(page["modelCustomizationJobSummaries"]) for page in pages]
    assert sizes[:3] == [10, 10, 5] and sum(sizes) == 25
    listed = [s["jobArn"] for page in pages for s in page["modelCustomizationJobSummaries"]]
    assert listed == list(reversed(arns))  # newest first by default

    ascending = [
        s["jobName"]
        for page in paginator.paginate(
            nameContains="page-", sortBy="CreationTime", sortOrder="Ascending", maxResults=10
        )
        for s in page["modelCustomizationJobSummaries"]
    ]
    assert ascending == [f"page-{i:02d}" for i in range(25)]

    first = client.list_model_customization_jobs(nameContains="page-", maxResults=10)
    assert len(first["modelCustomizationJobSummaries"]) == 10 and first["nextToken"]
    summary = first["modelCustomizationJobSummaries"][0]
    assert summary["customModelName"] == "page-24-model"
    assert summary["status"] in ("InProgress", "Failed")

    window = client.list_model_customization_jobs(
        creationTimeAfter=before, creationTimeBefore=after, maxResults=100
    )["modelCustomizationJobSummaries"]
    assert set(arns) <= {s["jobArn"] for s in window}
    assert not client.list_model_customization_jobs(nameContains="page-", creationTimeAfter=after)[
        "modelCustomizationJobSummaries"
    ]
    assert not client.list_model_customization_jobs(
        nameContains="page-", creationTimeBefore=before
    )["modelCustomizationJobSummaries"]

    wait_status(client, "page-00", {"Failed"}, timeout=120)
    failed = {
        s["jobName"]
        for page in paginator.paginate(nameContains="page-", statusEquals="Failed")
        for s in page["modelCustomizationJobSummaries"]
    }
    assert "page-00" in failed
    assert not client.list_model_customization_jobs(nameContains="page-", statusEquals="Completed")[
        "modelCustomizationJobSummaries"
    ]
    job = client.get_model_customization_job(jobIdentifier="page-00")
    assert job["failureMessage"].startswith("TRAINER_CRASHED")
    assert "Failed" in {d["status"] for d in job["statusDetails"].values()}
    # A failed job made no model: its custom model name is free for another job.
    client.create_model_customization_job(**create_body("page-retry", model="page-00-model"))

    with pytest.raises(client.exceptions.ValidationException, match="statusEquals"):
        client.list_model_customization_jobs(statusEquals="Running")
    with pytest.raises(client.exceptions.ValidationException, match="nextToken"):
        client.list_model_customization_jobs(nextToken="not-a-token")


def test_rest_and_bedrock_see_the_same_jobs(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    with cheap_server.client() as rest:
        native = rest.post("/v1/jobs", json=demo_job("made-by-rest", epochCount=1)).json()
    arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/{native['jobId']}"
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["jobName"] == "made-by-rest" and job["status"] == "InProgress"
    assert client.get_model_customization_job(jobIdentifier=native["jobId"])["jobArn"] == arn
    names = [
        s["jobName"]
        for s in client.list_model_customization_jobs(nameContains="made-by-rest")[
            "modelCustomizationJobSummaries"
        ]
    ]
    assert names == ["made-by-rest"]

    made = client.create_model_customization_job(**create_body("made-by-bedrock"))["jobArn"]
    with cheap_server.client() as rest:
        seen = rest.get(f"/v1/jobs/{made.rsplit('/', 1)[1]}").json()
    assert seen["jobName"] == "made-by-bedrock"
    assert seen["hyperParameters"]["epochCount"] == 1


def test_a_corrupt_record_is_an_internal_server_exception(
    cheap_server: ApiServer, object_store: ObjectStore
) -> None:
    client = make_client(cheap_server)
    arn = client.create_model_customization_job(**create_body("corrupt-job"))["jobArn"]
    job_id = arn.rsplit("/", 1)[1]
    time.sleep(0.5)
    # status.json, not spec.json: a spec never changes after create, so the server keeps
    # the one it wrote in memory and would never see it overwritten; the status it reads
    # again once what it read is older than the staleness bound.
    object_store.put_bytes(
        S3Location(cheap_server.state_bucket, f"jobs/{job_id}/status.json"), b"{not json"
    )
    # A describe may answer from what the replica read up to read_staleness_seconds (1 s)
    # ago; after that it reads the status again.
    time.sleep(1.2)
    with pytest.raises(client.exceptions.InternalServerException):
        client.get_model_customization_job(jobIdentifier="corrupt-job")
    # The one corrupt record does not refuse other creates.
    other = client.create_model_customization_job(**create_body("after-corrupt-job"))
    described = client.get_model_customization_job(jobIdentifier=other["jobArn"])
    assert described["jobName"] == "after-corrupt-job"


def test_continued_pre_training_is_accepted(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    body = dict(create_body("cpt-job"), customizationType="CONTINUED_PRE_TRAINING")
    arn = client.create_model_customization_job(**body)["jobArn"]
    assert client.get_model_customization_job(jobIdentifier=arn)["customizationType"] == (
        "CONTINUED_PRE_TRAINING"
    )
    with cheap_server.client() as rest:
        native = rest.get(f"/v1/jobs/{arn.rsplit('/', 1)[1]}").json()
    assert native["customizationType"] == "CONTINUED_PRE_TRAINING"
