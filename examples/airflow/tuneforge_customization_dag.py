"""Fine-tune models on tuneforge from Apache Airflow, with the Amazon provider as it ships.

tuneforge answers the Amazon Bedrock API, so the provider's BedrockCustomizeModelOperator
and BedrockCustomizeModelCompletedSensor drive it unchanged through an AWS connection
whose extra holds tuneforge's address (docs/airflow.md), for example:

    AIRFLOW_CONN_TUNEFORGE='{"conn_type": "aws",
        "login": "<access key>", "password": "<secret key>",
        "extra": {"endpoint_url": "http://127.0.0.1:8000", "region_name": "eu-west-1"}}'

One run shows the three ways of waiting for a job:

- `customize` creates a job and waits for it inside the task (the provider's waiter).
- `customize_again` asks for the same job name once more. The name is taken, so the
  operator (ensure_unique_job_name=True) creates the job as `<job name>-<unix time>`
  instead. It does not wait: `wait_for_customize_again`, the sensor, polls the job it made.

Job names and custom model names are unique, as in Bedrock: each run needs a `job_name`
not used before (`customize` and the model names fail on a taken one).
- `customize_deferred` (deferrable=True) hands its worker slot back while Airflow's
  triggerer polls the job.

When a job fails, so does the task waiting for it, and `log_job_failure` logs the job's
own reason: the provider's errors only say that the job ended `Failed`.

What the jobs train comes from the run's params (`job_name`, `base_model`,
`hyperparameters`, `role_arn`). The rest is read from the environment when Airflow parses
this file: the operator does not render `training_data_uri` and `output_data_uri` as
templates, and takes its polling interval as a number.

- TUNEFORGE_DAG_CONNECTION: the Airflow connection id (default `tuneforge`).
- TUNEFORGE_DAG_TRAINING_DATA_URI: the training data (default: the demo bucket's).
- TUNEFORGE_DAG_OUTPUT_DATA_URI: where models are written (default `s3://demo/output/`).
- TUNEFORGE_DAG_POLL_SECONDS: seconds between two looks at a job's status (default 60).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime

from airflow.providers.amazon.aws.hooks.bedrock import BedrockHook
from airflow.providers.amazon.aws.operators.bedrock import BedrockCustomizeModelOperator
from airflow.providers.amazon.aws.sensors.bedrock import BedrockCustomizeModelCompletedSensor
from airflow.sdk import DAG, Context, Param, TriggerRule

CONNECTION_ID = os.environ.get("TUNEFORGE_DAG_CONNECTION", "tuneforge")
TRAINING_DATA_URI = os.environ.get(
    "TUNEFORGE_DAG_TRAINING_DATA_URI", "s3://demo/datasets/sample-train.jsonl"
)
OUTPUT_DATA_URI = os.environ.get("TUNEFORGE_DAG_OUTPUT_DATA_URI", "s3://demo/output/")
POLL_SECONDS = max(1, int(os.environ.get("TUNEFORGE_DAG_POLL_SECONDS", "60")))
# How many looks at a job before the task gives up: about two hours at the default.
POLL_ATTEMPTS = max(1, 7200 // POLL_SECONDS)

log = logging.getLogger(__name__)


def log_job_failure(context: Context) -> None:
    """Log why the task's job failed.

    The provider's waiter, trigger and sensor only say that the job ended `Failed`;
    tuneforge, like Bedrock, gives the reason in the job's `failureMessage`.
    """
    task = context["task"]
    job_name = getattr(task, "job_name", None)
    if not job_name:
        return
    try:
        job = BedrockHook(aws_conn_id=CONNECTION_ID).conn.get_model_customization_job(
            jobIdentifier=job_name
        )
    except Exception:  # the job may never have been created (e.g. a refused request)
        log.exception("could not read model customization job %s", job_name)
        return
    # A job that has not ended (the task gave up waiting), or one that is not this task's
    # (a create refused for a taken name finds the other job), has no reason to give.
    if job["status"] in ("Failed", "Stopped"):
        log.error(
            "model customization job %s ended %s: %s",
            job["jobName"],
            job["status"],
            job.get("failureMessage", "(no failure message)"),
        )


with DAG(
    dag_id="tuneforge_customization",
    description="Fine-tune models on tuneforge through its Bedrock-compatible API",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["tuneforge", "bedrock"],
    # `hyperparameters` stays a dict when rendered, as the operator needs, not its text.
    render_template_as_native_obj=True,
    params={
        # Room for the `-<unix time>` a taken name gets (job names have 63 characters).
        "job_name": Param(
            "tuneforge-airflow", type="string", pattern=r"^[a-zA-Z][a-zA-Z0-9-]{0,39}$"
        ),
        "base_model": Param("s3://demo/models/tiny-llama/", type="string"),
        "role_arn": Param("arn:aws:iam::123456789012:role/tuneforge", type="string"),
        "hyperparameters": Param(
            {"epochCount": "1", "batchSize": "8", "learningRate": "0.003"},
            type="object",
            description="Bedrock hyperParameters: string values (docs/hyperparameters.md)",
        ),
    },
    default_args={
        "aws_conn_id": CONNECTION_ID,
        "on_failure_callback": log_job_failure,
    },
) as dag:
    common = {
        "role_arn": "{{ params.role_arn }}",
        "base_model_id": "{{ params.base_model }}",
        "training_data_uri": TRAINING_DATA_URI,
        "output_data_uri": OUTPUT_DATA_URI,
        "hyperparameters": "{{ params.hyperparameters }}",
    }

    customize = BedrockCustomizeModelOperator(
        task_id="customize",
        job_name="{{ params.job_name }}",
        custom_model_name="{{ params.job_name }}-model",
        wait_for_completion=True,
        waiter_delay=POLL_SECONDS,
        waiter_max_attempts=POLL_ATTEMPTS,
        **common,
    )

    # The same job name again: the operator finds it taken and renames this job. A new
    # model needs a new name too (custom model names are unique), so it has its own. It
    # runs once `customize` has ended, completed or failed: all it needs is the name taken.
    customize_again = BedrockCustomizeModelOperator(
        task_id="customize_again",
        job_name="{{ params.job_name }}",
        custom_model_name="{{ params.job_name }}-model-again",
        ensure_unique_job_name=True,
        wait_for_completion=False,
        trigger_rule=TriggerRule.ALL_DONE,
        **common,
    )

    # The operator returns the job's ARN (an XCom), which names the renamed job.
    wait_for_customize_again = BedrockCustomizeModelCompletedSensor(
        task_id="wait_for_customize_again",
        job_name="{{ ti.xcom_pull(task_ids='customize_again') }}",
        poke_interval=POLL_SECONDS,
        max_retries=POLL_ATTEMPTS,
        timeout=POLL_SECONDS * POLL_ATTEMPTS,
    )

    customize_deferred = BedrockCustomizeModelOperator(
        task_id="customize_deferred",
        job_name="{{ params.job_name }}-deferred",
        custom_model_name="{{ params.job_name }}-deferred-model",
        deferrable=True,
        waiter_delay=POLL_SECONDS,
        waiter_max_attempts=POLL_ATTEMPTS,
        **common,
    )

    customize >> customize_again >> wait_for_customize_again
