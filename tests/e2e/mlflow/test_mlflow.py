"""MLflow tracking (integrations.mlflow) against a real MLflow server: the run, its
params, per-step metrics and the final model's location; an unreachable server does
not fail training; a host the operator did not allow is refused at create."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from service.server.embedded_s3 import free_port
from tests.e2e.mlflow.conftest import MlflowServer
from tests.servers import ApiServer, demo_job


def _events(api_server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    with api_server.client() as client:
        return client.get(f"/v1/jobs/{job_id}/events").json()["events"]  # type: ignore[no-any-return]


def _history(mlflow: MlflowServer, run_id: str, key: str) -> list[dict[str, Any]]:
    history = mlflow.api("metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
    return sorted(history, key=lambda point: point["step"])


def test_mlflow_host_not_allowed_is_refused_naming_the_field(
    mlflow_api_server: ApiServer,
) -> None:
    field = "integrations.mlflow.trackingUri"
    with mlflow_api_server.client() as client:
        before = {job["jobId"] for job in client.get("/v1/jobs").json()["jobs"]}
        for uri in (
            "http://mlflow.example.com:5000",  # not an allowed host
            "file:///tmp/mlruns",  # not http(s)
            "http://user:secret@127.0.0.1:5000",  # credentials in the URI
        ):
            body = demo_job("mlflow-refused")
            body["integrations"] = {"mlflow": {"trackingUri": uri}}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 400, (uri, response.text)
            error = response.json()["error"]
            assert error["field"] == field, error
            assert field in error["message"]
        unknown = demo_job("mlflow-refused")
        unknown["integrations"] = {"mlflow": {"trackingUri": "http://127.0.0.1:1", "x": 1}}
        refused = client.post("/v1/jobs", json=unknown)  # a schema error: 422, as elsewhere
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "integrations.mlflow.x"
        after = {job["jobId"] for job in client.get("/v1/jobs").json()["jobs"]}
        assert after == before  # nothing was created


def test_unreachable_mlflow_warns_and_training_completes(mlflow_api_server: ApiServer) -> None:
    body = demo_job("mlflow-down", epochCount=1)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    body["integrations"] = {"mlflow": {"trackingUri": nobody}}
    with mlflow_api_server.client() as client:
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
    job = mlflow_api_server.wait_for(job_id, {"COMPLETED"}, timeout=400)
    assert job["failure"] is None
    warnings = [e for e in _events(mlflow_api_server, job_id) if e["type"] == "MLFLOW_UNAVAILABLE"]
    assert len(warnings) == 1, warnings
    assert nobody in warnings[0]["message"]
    assert "training goes on" in warnings[0]["message"]


# The MLflow server's cold start (fixture) counts against the test's time limit.
@pytest.mark.timeout(1500)
def test_job_logs_params_metrics_and_model_location_to_mlflow(
    mlflow_api_server: ApiServer, mlflow_server: MlflowServer
) -> None:
    experiment = f"tuneforge-test-{uuid.uuid4().hex[:8]}"
    body = demo_job("mlflow-tracked", epochCount=1, evalIntervalSteps=10)
    body["integrations"] = {
        "mlflow": {"trackingUri": mlflow_server.url, "experimentName": experiment}
    }
    with mlflow_api_server.client() as client:
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["integrations"] == body["integrations"]
        job_id = created.json()["jobId"]
    job = mlflow_api_server.wait_for(job_id, {"COMPLETED"}, timeout=400)

    # The run id is in an event; the run is named after the job and finished.
    started = [e for e in _events(mlflow_api_server, job_id) if e["type"] == "MLFLOW_RUN"]
    assert len(started) == 1, started
    found = mlflow_server.api("experiments/get-by-name", experiment_name=experiment)
    runs = mlflow_server.search_runs(found["experiment"]["experiment_id"])
    assert len(runs) == 1
    run = runs[0]
    run_id = run["info"]["run_id"]
    assert run_id in started[0]["message"]
    assert run["info"]["run_name"] == "mlflow-tracked"
    assert run["info"]["status"] == "FINISHED"

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["epochCount"] == "1"
    assert float(params["learningRate"]) == 0.003
    assert params["batchSize"] == "8"
    assert params["jobId"] == job_id
    assert params["baseModelIdentifier"] == "s3://demo/models/tiny-llama/"
    model_uri = job["output"]["modelS3Uri"]
    assert params["modelS3Uri"] == model_uri
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["tuneforge.modelS3Uri"] == model_uri
    assert tags["tuneforge.jobId"] == job_id

    # A training loss and learning rate every step, a validation loss every evaluation.
    total_steps = job["progress"]["totalSteps"]
    training = _history(mlflow_server, run_id, "training_loss")
    assert [point["step"] for point in training] == list(range(1, total_steps + 1))
    assert training[-1]["value"] < training[0]["value"]
    learning_rates = _history(mlflow_server, run_id, "learning_rate")
    assert len(learning_rates) == total_steps and all(p["value"] > 0 for p in learning_rates)
    validation = _history(mlflow_server, run_id, "validation_loss")
    # Every 10 steps and at the epoch's end.
    assert [p["step"] for p in validation] == [*range(10, total_steps, 10), total_steps]
    # Token accuracy beside each loss: a share of the target tokens.
    for name, losses in (("training", training), ("validation", validation)):
        accuracies = _history(mlflow_server, run_id, f"{name}_token_accuracy")
        assert [p["step"] for p in accuracies] == [p["step"] for p in losses]
        assert all(0.0 <= p["value"] <= 1.0 for p in accuracies)
