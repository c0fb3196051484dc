"""Apache Airflow's Amazon provider, unmodified, drives tuneforge's Bedrock face.

The example DAG that docs/airflow.md shows (examples/airflow/tuneforge_customization_dag.py)
runs with `dag.test()` in the Airflow venv (`make .venv-airflow/.installed`; Airflow's pins
clash with the service's), against a real server, store and trainers, through an AWS
connection given as AIRFLOW_CONN_TUNEFORGE. Two DAG runs, one after the other in one
Airflow process:

- a good one: the operator waits with the provider's waiter; the same job name asked for
  again is renamed by the operator and the sensor waits for that job; the deferrable
  operator waits through the provider's trigger (aiobotocore);
- one whose base model does not exist: each job fails, and so does each task that waits
  for one, with the job's failure message in the log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faces.bedrock.conftest import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    BedrockClient,
    make_client,
)
from tests.servers import ApiServer

ROOT = Path(__file__).resolve().parents[3]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FOLDER = ROOT / "examples" / "airflow"
DAG_ID = "tuneforge_customization"
DRIVER = Path(__file__).with_name("run_dag.py")

GOOD = "airflow-good"
BAD = "airflow-bad"
# The cheapest real job on the demo assets: one epoch of the tiny model (seconds).
HYPERPARAMETERS = {"epochCount": "1", "batchSize": "8", "learningRate": "0.003", "seed": "7"}
MISSING_MODEL = "s3://demo/models/no-such-model/"
# Seconds between two looks at a job (the waiter, the trigger and the sensor).
POLL_SECONDS = 2
RUN_TIMEOUT_SECONDS = 420


@dataclass
class DagRuns:
    """What the Airflow process reported: per run, its state and each task's state and
    return value (XCom); and everything it printed (the tasks' logs)."""

    runs: list[dict[str, Any]]
    output: str

    def tasks(self, index: int) -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = self.runs[index]["tasks"]
        return tasks


class ExampleDagRuns:
    """Both DAG runs, made once, at the first test that asks (not in a fixture's setup,
    so that a missing Airflow venv fails the tests instead of erroring them)."""

    def __init__(self, server: ApiServer, home: Path) -> None:
        self.server = server
        self.home = home
        self._result: DagRuns | None = None
        self._failed_before = False

    def result(self) -> DagRuns:
        if not AIRFLOW_PYTHON.exists():
            pytest.fail(
                f"{AIRFLOW_PYTHON} is missing: run `make .venv-airflow/.installed` "
                "(`make test` does) to install Airflow in a venv of its own"
            )
        if self._failed_before:
            pytest.fail("the DAG runs failed in an earlier test of this file: see there")
        if self._result is None:
            self._failed_before = True  # cleared only if the runs come back
            self._result = self._run()
            self._failed_before = False
        return self._result

    def environment(self) -> dict[str, str]:
        inherited = ("AIRFLOW", "AWS_", "TUNEFORGE_")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        connection = {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": self.server.url, "region_name": REGION},
        }
        environment.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                # The folder of the example itself: Airflow parses the file the docs show.
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW_CONN_TUNEFORGE": json.dumps(connection),
                "TUNEFORGE_DAG_TRAINING_DATA_URI": "s3://demo/datasets/sample-train.jsonl",
                "TUNEFORGE_DAG_OUTPUT_DATA_URI": "s3://demo/output/airflow/",
                "TUNEFORGE_DAG_POLL_SECONDS": str(POLL_SECONDS),
                # No credentials or settings of this machine's AWS profile.
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                # Nothing written into the checkout's examples/ folder.
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return environment

    def _run(self) -> DagRuns:
        runs = [
            {"job_name": GOOD, "hyperparameters": HYPERPARAMETERS},
            {"job_name": BAD, "base_model": MISSING_MODEL, "hyperparameters": HYPERPARAMETERS},
        ]
        result_path = self.home / "runs.json"
        log_path = self.home / "airflow-output.log"
        command = [str(AIRFLOW_PYTHON), str(DRIVER), DAG_ID, json.dumps(runs), str(result_path)]
        try:
            completed = subprocess.run(
                command,
                env=self.environment(),
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as expired:
            partial = expired.stdout or ""
            partial = partial.decode() if isinstance(partial, bytes) else partial
            pytest.fail(f"the DAG runs took over {RUN_TIMEOUT_SECONDS} s: ...{partial[-6000:]}")
        output = completed.stdout + completed.stderr
        log_path.write_text(output)
        if completed.returncode != 0:
            pytest.fail(f"the Airflow process failed ({log_path}): ...{output[-6000:]}")
        return DagRuns(json.loads(result_path.read_text()), output)


@pytest.fixture(scope="module")
def example_runs(
    bedrock_server: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> ExampleDagRuns:
    return ExampleDagRuns(bedrock_server, tmp_path_factory.mktemp("airflow-home"))


@pytest.fixture(scope="module")
def bedrock(bedrock_server: ApiServer) -> BedrockClient:
    return make_client(bedrock_server)


def test_the_operator_waits_for_its_job_with_the_waiter(
    example_runs: ExampleDagRuns, bedrock: BedrockClient
) -> None:
    runs = example_runs.result()
    assert runs.runs[0]["state"] == "success", runs.runs[0]
    task = runs.tasks(0)["customize"]
    assert task["state"] == "success"
    job = bedrock.get_model_customization_job(jobIdentifier=GOOD)
    # Completed when the task ended: the task waited for it, with the provider's waiter.
    assert job["status"] == "Completed", job
    assert task["return_value"] == job["jobArn"]
    assert job["outputModelName"] == f"{GOOD}-model"
    assert job["hyperParameters"]["epochCount"] == "1"
    assert job["trainingDataConfig"]["s3Uri"] == "s3://demo/datasets/sample-train.jsonl"
    assert f"Waiting for Bedrock model customization job {GOOD} to complete." in runs.output


def test_a_taken_job_name_is_renamed_and_the_sensor_waits_for_that_job(
    example_runs: ExampleDagRuns, bedrock: BedrockClient
) -> None:
    runs = example_runs.result()
    tasks = runs.tasks(0)
    assert tasks["customize_again"]["state"] == "success"
    assert tasks["wait_for_customize_again"]["state"] == "success"
    arn = tasks["customize_again"]["return_value"]
    renamed = bedrock.get_model_customization_job(jobIdentifier=arn)
    # The operator heard AWS's answer to a taken name and created the job as <name>-<time>.
    assert re.fullmatch(rf"{GOOD}-\d{{10}}", renamed["jobName"]), renamed["jobName"]
    assert f"Changed job name to '{renamed['jobName']}' to avoid collision." in runs.output
    assert renamed["status"] == "Completed", renamed
    assert renamed["outputModelName"] == f"{GOOD}-model-again"
    # The first job keeps its name; both are there, both completed.
    first = bedrock.get_model_customization_job(jobIdentifier=GOOD)
    assert first["jobArn"] != arn
    listed = bedrock.list_model_customization_jobs(nameContains=f"{GOOD}-")
    names = {s["jobName"]: s["status"] for s in listed["modelCustomizationJobSummaries"]}
    assert names[renamed["jobName"]] == "Completed"


def test_the_deferrable_operator_waits_through_its_trigger(
    example_runs: ExampleDagRuns, bedrock: BedrockClient
) -> None:
    runs = example_runs.result()
    task = runs.tasks(0)["customize_deferred"]
    assert task["state"] == "success"
    name = f"{GOOD}-deferred"
    job = bedrock.get_model_customization_job(jobIdentifier=name)
    assert job["status"] == "Completed", job
    assert task["return_value"] == job["jobArn"]
    # It deferred, the trigger (aiobotocore) ran, and the task resumed on its success event.
    assert f"Deferring for Bedrock model customization job {name} to complete." in runs.output
    assert "[DAG TEST] running trigger in line" in runs.output
    assert f"Bedrock model customization job `{name}` complete." in runs.output


def test_a_failed_job_fails_its_tasks_with_the_jobs_failure_message(
    example_runs: ExampleDagRuns, bedrock: BedrockClient
) -> None:
    runs = example_runs.result()
    assert runs.runs[1]["state"] == "failed", runs.runs[1]
    states = {task: found["state"] for task, found in runs.tasks(1).items()}
    assert states == {
        "customize": "failed",  # the waiter saw Failed
        "customize_again": "success",  # it only creates its job (renamed: BAD is taken)
        "wait_for_customize_again": "failed",  # the sensor saw Failed
        "customize_deferred": "failed",  # the trigger saw Failed
    }
    listed = bedrock.list_model_customization_jobs(nameContains=BAD)
    jobs = [
        bedrock.get_model_customization_job(jobIdentifier=summary["jobArn"])
        for summary in listed["modelCustomizationJobSummaries"]
    ]
    names = {job["jobName"] for job in jobs}
    renamed = names - {BAD, f"{BAD}-deferred"}
    assert {BAD, f"{BAD}-deferred"} <= names and len(renamed) == 1, names
    assert re.fullmatch(rf"{BAD}-\d{{10}}", renamed.pop()), names
    for job in jobs:
        assert job["status"] == "Failed", job
        assert MISSING_MODEL in job["failureMessage"], job
        # The example DAG's failure callback logs the job's own reason beside the task.
        line = f"model customization job {job['jobName']} ended Failed: {job['failureMessage']}"
        assert line in runs.output
    # ...and each task failed with the provider's own words.
    assert 'Waiter encountered a terminal failure state: For expression "status"' in runs.output
    assert "Bedrock model customization job sensor failed." in runs.output
    assert "Bedrock model customization failed.: Failed" in runs.output
