"""What the dashboard draws from, and the plot a finished job leaves in its output:
GET /v1/jobs/{id}/metrics against the CSV files, and training_artifacts/loss.png."""

from __future__ import annotations

import csv
import io

from jobstore.storage import ObjectStore, parse_s3_uri
from tests.faces.ui.artifacts import check_loss_plot
from tests.servers import ApiServer, demo_job


def _csv_rows(store: ObjectStore, uri: str) -> list[dict[str, str]]:
    found = store.get_bytes(parse_s3_uri(uri, field="uri"))
    assert found is not None, f"{uri} was not written"
    return list(csv.DictReader(io.StringIO(found[0].decode())))


def test_completed_job_metrics_endpoint_matches_csv_and_loss_plot_is_written(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("metrics-and-plot", epochCount=2))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]

        # Before the first step there is no file yet: no rows, not an error.
        early = client.post("/v1/jobs", json=demo_job("stopped-before-training")).json()
        client.post(f"/v1/jobs/{early['jobId']}/stop")
        empty = client.get(f"/v1/jobs/{early['jobId']}/metrics")
        assert empty.json() == {"jobId": early["jobId"], "training": [], "validation": []}

        job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=400)

        metrics = client.get(f"/v1/jobs/{job_id}/metrics")
        assert metrics.status_code == 200, metrics.text
        body = metrics.json()
        assert body["jobId"] == job_id

        training = _csv_rows(object_store, job["output"]["trainingMetricsS3Uri"])
        validation = _csv_rows(object_store, job["output"]["validationMetricsS3Uri"])
        assert len(body["training"]) == len(training) == job["progress"]["totalSteps"]
        assert [row["step"] for row in body["training"]] == [
            int(row["step_number"]) for row in training
        ]
        for served, stored in zip(body["training"], training, strict=True):
            assert served["trainingLoss"] == float(stored["training_loss"])
            assert served["epoch"] == int(stored["epoch_number"])
        assert len(body["validation"]) == len(validation) == 2  # one evaluation an epoch
        assert [row["validationLoss"] for row in body["validation"]] == [
            float(row["validation_loss"]) for row in validation
        ]

        # The contract is in the OpenAPI document; an unknown job is 404 in the usual shape.
        schema = client.get("/openapi.json").json()
        assert "/v1/jobs/{job_id}/metrics" in schema["paths"]
        missing = client.get("/v1/jobs/0000000000000000/metrics")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "NOT_FOUND"

    check_loss_plot(object_store, job["output"]["outputS3Uri"])
