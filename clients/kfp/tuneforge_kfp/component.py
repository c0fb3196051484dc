"""The Kubeflow Pipelines component: run one tuneforge fine-tuning job as a pipeline step.

KFP ships the body of `fine_tune` as source text into the step's container and runs it
there, so the function must stand alone: every import and helper lives inside it, and it
uses only the Python standard library (urllib, json) to talk to tuneforge's REST API. The
step then runs in a plain `python:3.11` image; KFP's own launcher installs the `kfp`
package it needs to call the function (its usual `pip install kfp --no-deps` step).

This module must not use `from __future__ import annotations`: KFP reads the parameter
types from the function's annotations, and the shipped source runs without that import.
"""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

# The image the step runs in on a cluster. Nothing beyond Python is needed in it; replace
# it (`base_image=` when loading, or a copy of the component) to use a mirrored image.
BASE_IMAGE = "python:3.11-slim"


@dsl.component(base_image=BASE_IMAGE)
def fine_tune(
    api_url: str,
    job_name: str,
    base_model: str,
    training_data_uri: str,
    output_uri: str,
    model: Output[Model],
    metrics: Output[Metrics],
    validation_data_uri: str = "",
    customization_type: str = "FINE_TUNING",
    hyper_parameters: Optional[dict] = None,  # noqa: UP045 (KFP reads only Optional[...])
    extra_spec: Optional[dict] = None,  # noqa: UP045
    client_request_token: str = "",
    api_key_env: str = "TUNEFORGE_API_KEY",
    poll_interval_seconds: float = 10.0,
    timeout_seconds: float = 0.0,
) -> NamedTuple("Outputs", [("job_id", str), ("model_uri", str)]):  # type: ignore[valid-type]
    """Create a tuneforge fine-tuning job, wait for it, and output its model and metrics.

    The step fails (raises) when the job ends FAILED or STOPPED, with the job's failure
    reason and message. (Google-style sections: KFP shows them as the inputs' and
    outputs' descriptions.)

    Args:
        api_url: The REST API's base URL, e.g. http://tuneforge.tuneforge.svc:8000.
        job_name: The job's jobName.
        base_model: baseModelIdentifier, the s3:// folder of the base model.
        training_data_uri: trainingDataConfig.s3Uri.
        output_uri: outputDataConfig.s3Uri; the job writes its own folder under it.
        model: Output: metadata uri (the fine-tuned model's location), jobId, jobName,
            baseModel, customizationType; its file holds the same as JSON.
        metrics: Output: the final training_loss, validation_loss, token accuracy, steps,
            epochs, tokens_seen, and each metric of the last evaluation as validation_NAME.
        validation_data_uri: validationDataConfig.s3Uri; empty for none.
        customization_type: FINE_TUNING, CONTINUED_PRE_TRAINING, CLASSIFICATION or
            PREFERENCE.
        hyper_parameters: hyperParameters with the API's names, e.g.
            {"epochCount": 1, "learningRate": 0.003}.
        extra_spec: Any other fields of the POST /v1/jobs body (resources, tags,
            integrations, notifications), as they are; the inputs above win.
        client_request_token: Makes the create idempotent: the same token gets the same
            job back instead of a second one. Pass something stable for the run and
            this task, e.g. dsl.PIPELINE_JOB_ID_PLACEHOLDER when the pipeline has one
            fine_tune task (tokens are per tenant: two tasks must not share one).
            Empty: a fresh token for this execution.
        api_key_env: The environment variable holding the API key (a Kubernetes secret
            mapped into the step, docs/kubeflow.md). Unset or empty: no key is sent (a
            server in development mode). The key is never written to the log.
        poll_interval_seconds: How often the job is looked at while it runs.
        timeout_seconds: Fail the step after this long, leaving the job running; 0 waits
            as long as the job takes.

    Returns:
        job_id: The tuneforge job's id.
        model_uri: The job's output.modelS3Uri, where the fine-tuned model is.
    """
    import json
    import os
    import re
    import time
    import urllib.error
    import urllib.request
    import uuid
    from collections import namedtuple

    base_url = api_url.rstrip("/")
    api_key = os.environ.get(api_key_env, "") if api_key_env else ""
    # Connection trouble and these statuses are worth another try: the server restarting,
    # a load balancer between replicas, rate limiting. Anything else is an answer.
    retry_statuses = {429, 500, 502, 503, 504}
    retry_for_seconds = 300.0
    terminal_states = {"COMPLETED", "FAILED", "STOPPED"}

    def call(method: str, path: str, body: Optional[dict] = None) -> dict:  # noqa: UP045
        """One JSON request, retried through transient trouble; an error answer raises."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        give_up_at = time.monotonic() + retry_for_seconds
        pause = 1.0
        while True:
            request = urllib.request.Request(
                base_url + path, data=data, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer: dict = json.loads(response.read() or b"{}")
                    return answer
            except urllib.error.HTTPError as error:
                text = error.read().decode("utf-8", "replace")
                if error.code not in retry_statuses or time.monotonic() > give_up_at:
                    try:
                        detail = json.loads(text)["error"]
                        where = f" (field {detail['field']})" if detail.get("field") else ""
                        text = f"{detail['code']}: {detail['message']}{where}"
                    except (ValueError, KeyError, TypeError):
                        pass
                    raise RuntimeError(
                        f"tuneforge answered {method} {path} with HTTP {error.code}: {text}"
                    ) from None
                problem = f"HTTP {error.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if time.monotonic() > give_up_at:
                    raise RuntimeError(
                        f"cannot reach tuneforge at {base_url} for {method} {path}: {error}"
                    ) from None
                problem = str(getattr(error, "reason", error))
            print(
                f"tuneforge: {method} {path}: {problem}; trying again in {pause:.0f} s", flush=True
            )
            time.sleep(pause)
            pause = min(pause * 2, 30.0)

    def whole_numbers(value: object) -> object:
        """KFP passes dict inputs as a protobuf Struct, whose numbers are all floats: 1
        arrives as 1.0, which the API refuses for an integer field (epochCount). A whole
        float is sent back as an integer; a float field takes an integer as it is."""
        if isinstance(value, dict):
            return {key: whole_numbers(item) for key, item in value.items()}
        if isinstance(value, list):
            return [whole_numbers(item) for item in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def clock(seconds: Optional[float]) -> str:  # noqa: UP045
        whole = int(seconds or 0)
        hours, rest = divmod(whole, 3600)
        return (
            f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
            if hours
            else f"{rest // 60}:{rest % 60:02d}"
        )

    def progress_line(job: dict) -> str:
        """State, step/total, epoch, loss and ETA, as far as the API gives them now."""
        progress = job.get("progress") or {}
        parts = [job["state"]]
        if job["state"] == "QUEUED" and job.get("queuePosition"):
            parts.append(f"queue position {job['queuePosition']}")
        check = progress.get("dataCheck")
        if job["state"] == "VALIDATING" and check:
            parts.append(f"checking data: {check.get('recordsDone', 0)} records")
        if progress.get("totalSteps"):
            parts.append(f"step {progress.get('step', 0)}/{progress['totalSteps']}")
            if progress.get("totalEpochs"):
                parts.append(f"epoch {progress.get('epoch', 0)}/{progress['totalEpochs']}")
        if progress.get("trainingLoss") is not None:
            parts.append(f"loss {progress['trainingLoss']:.4f}")
        if progress.get("validationLoss") is not None:
            parts.append(f"val_loss {progress['validationLoss']:.4f}")
        if job["state"] == "RUNNING" and progress.get("etaSeconds") is not None:
            parts.append(f"eta {clock(progress['etaSeconds'])}")
        return "  ".join(parts)

    # The token may come from a placeholder (a run id with other characters): the API
    # takes letters, digits and single or repeated '-' between them.
    token = re.sub(r"[^A-Za-z0-9-]+", "-", client_request_token)[:256].strip("-")
    extra = whole_numbers(extra_spec or {})
    body: dict = dict(extra) if isinstance(extra, dict) else {}
    body.update(
        {
            "jobName": job_name,
            "baseModelIdentifier": base_model,
            "customizationType": customization_type,
            "trainingDataConfig": {"s3Uri": training_data_uri},
            "outputDataConfig": {"s3Uri": output_uri},
            "clientRequestToken": token or uuid.uuid4().hex,
        }
    )
    if validation_data_uri:
        body["validationDataConfig"] = {"s3Uri": validation_data_uri}
    if hyper_parameters:
        body["hyperParameters"] = whole_numbers(hyper_parameters)

    job = call("POST", "/v1/jobs", body)
    job_id = job["jobId"]
    print(
        f"tuneforge job {job_id} ({job['jobName']}): {job['state']}; "
        f"model will be at {job['output']['modelS3Uri']}",
        flush=True,
    )

    started = time.monotonic()
    last_line = ""
    while True:
        line = progress_line(job)
        if line != last_line:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last_line = line
        if job["state"] in terminal_states:
            break
        if timeout_seconds and time.monotonic() - started > timeout_seconds:
            raise TimeoutError(
                f"tuneforge job {job_id} still {job['state']} after {timeout_seconds:.0f} s; "
                f"it goes on running (stop it with POST /v1/jobs/{job_id}/stop)"
            )
        time.sleep(max(poll_interval_seconds, 0.1))
        job = call("GET", f"/v1/jobs/{job_id}")

    if job["state"] != "COMPLETED":
        failure = job.get("failure") or {}
        why = (
            f"{failure.get('reason')}: {failure.get('message')}"
            if failure
            else "stopped on request"
        )
        raise RuntimeError(f"tuneforge job {job_id} ({job['jobName']}) ended {job['state']}: {why}")

    model_uri = job["output"]["modelS3Uri"]
    progress = job.get("progress") or {}
    # The model stays where tuneforge wrote it; the artifact points there (its metadata),
    # and its file holds the same facts for whoever downloads the artifact itself.
    facts = {
        "uri": model_uri,
        "jobId": job_id,
        "jobName": job["jobName"],
        "baseModel": job["baseModelIdentifier"],
        "customizationType": job["customizationType"],
    }
    model.metadata.update(facts)
    with open(model.path, "w") as handle:
        json.dump(facts, handle, indent=2)

    named = {
        "training_loss": progress.get("trainingLoss"),
        "validation_loss": progress.get("validationLoss"),
        "training_token_accuracy": progress.get("trainingTokenAccuracy"),
        "steps": progress.get("step"),
        "epochs": progress.get("epoch"),
        "tokens_seen": progress.get("tokensSeen"),
    }
    # Task metrics of the last evaluation: token_accuracy for language-model jobs;
    # accuracy, precision, recall, f1 for classification; reward_* for preference jobs.
    for name, value in (progress.get("validationMetrics") or {}).items():
        named[f"validation_{name}"] = value
    for name, value in named.items():
        if value is not None:
            metrics.log_metric(name, float(value))

    ended = f"after {clock(time.monotonic() - started)}"
    print(f"tuneforge job {job_id} COMPLETED {ended}; model: {model_uri}", flush=True)
    Outputs = namedtuple("Outputs", ["job_id", "model_uri"])
    return Outputs(job_id, model_uri)
