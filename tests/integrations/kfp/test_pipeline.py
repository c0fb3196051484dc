"""tuneforge's Kubeflow Pipelines component (clients/kfp) in a pipeline compiled by the kfp
SDK and run by KFP's local runner, against a real API server, store and trainer."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from jobstore.storage import ObjectStore, S3Location
from tests.integrations.kfp.conftest import KFP_PYTHON, KeyedServer, run_driver
from tests.servers import demo_job


def _arguments(body: dict[str, Any], api_url: str, token: str, runs: int) -> dict[str, Any]:
    """The pipeline's arguments for a create body of tests/servers.py's demo_job."""
    return {
        "api_url": api_url,
        "job_name": body["jobName"],
        "base_model": body["baseModelIdentifier"],
        "training_data_uri": body["trainingDataConfig"]["s3Uri"],
        "validation_data_uri": body["validationDataConfig"]["s3Uri"],
        "output_uri": body["outputDataConfig"]["s3Uri"],
        "hyper_parameters": body["hyperParameters"],
        "client_request_token": token,
        "runs": runs,
    }


def _run(
    kfp_python: Path, tmp_path: Path, keyed: KeyedServer, arguments: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    work = tmp_path / "kfp"
    work.mkdir()
    arguments_path = work / "arguments.json"
    arguments_path.write_text(json.dumps(arguments))
    run = run_driver(kfp_python, arguments_path, work, keyed.api_key)
    assert run.returncode == 0, run.output[-6000:]
    # The key is in the step's environment and its requests, never in its log.
    assert keyed.api_key not in run.output
    results: list[dict[str, Any]] = json.loads((work / "result.json").read_text())
    return results, run.output


def _stdlib_only(program: str) -> set[str]:
    """The modules the shipped component code imports that are not the standard library's
    (kfp itself is installed by KFP's launcher, not by the component)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(program)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "kfp"}


def _bare_python_with_kfp(root: Path) -> Path:
    """A venv holding the kfp package alone: its files, as listed in its RECORD, copied
    from the kfp venv (what `pip install kfp --no-deps` installs, without a download)."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    source = KFP_PYTHON.parents[1] / "lib" / "python3.11" / "site-packages"
    target = root / "lib" / "python3.11" / "site-packages"
    (record,) = source.glob("kfp-[0-9]*.dist-info/RECORD")
    for line in record.read_text().splitlines():
        name = line.split(",")[0]
        if name and not name.startswith(".."):  # scripts outside site-packages: not needed
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    return root / "bin"


def _run_step_in_bare_python(
    container: dict[str, Any], tmp_path: Path, keyed: KeyedServer, arguments: dict[str, Any]
) -> dict[str, Any]:
    """The compiled step's command and arguments, run as a cluster's launcher would run
    them, with an executor input naming local files for the outputs; its executor output."""
    bin_dir = _bare_python_with_kfp(tmp_path / "bare")
    out = tmp_path / "step"
    out.mkdir()

    def artifact(name: str, kind: str) -> dict[str, Any]:
        return {
            "artifacts": [
                {
                    "name": name,
                    "type": {"schemaTitle": kind, "schemaVersion": "0.0.1"},
                    "uri": str(out / name),
                    "metadata": {},
                }
            ]
        }

    parameters = {key: value for key, value in arguments.items() if key != "runs"}
    executor_input = {
        "inputs": {
            "parameterValues": {
                **parameters,
                # As KFP passes a dict input: a protobuf Struct, every number a float.
                "hyper_parameters": {
                    key: float(value) for key, value in parameters["hyper_parameters"].items()
                },
                "poll_interval_seconds": 0.25,
            }
        },
        "outputs": {
            "parameters": {
                "job_id": {"outputFile": str(out / "job_id")},
                "model_uri": {"outputFile": str(out / "model_uri")},
            },
            "artifacts": {
                "model": artifact("model", "system.Model"),
                "metrics": artifact("metrics", "system.Metrics"),
            },
            "outputFile": str(out / "executor_output.json"),
        },
    }
    args = [arg.replace("{{$}}", json.dumps(executor_input)) for arg in container["args"]]
    environment = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(out),
        "TUNEFORGE_API_KEY": keyed.api_key,
        # The step's `pip install kfp==<release> --no-deps` must find it installed.
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    finished = subprocess.run(
        [*container["command"], *args],
        env=environment,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-6000:]
    assert keyed.api_key not in output
    executor_output: dict[str, Any] = json.loads((out / "executor_output.json").read_text())
    return executor_output


def test_pipeline_runs_a_job_and_outputs_its_model_and_metrics(
    kfp_python: Path, keyed_server: KeyedServer, tmp_path: Path
) -> None:
    server = keyed_server.server
    token = f"kfp-{uuid.uuid4().hex}"
    # Three epochs (demo_job's default): a few seconds of training, for progress lines.
    body = demo_job(f"kfp-{uuid.uuid4().hex[:6]}")
    # Two runs of the compiled pipeline with the same idempotency token: the second must
    # get the first's job back, as a retried step on a cluster would.
    results, output = _run(
        kfp_python, tmp_path, keyed_server, _arguments(body, server.url, token, 2)
    )

    first, second = results
    assert first["succeeded"] and second["succeeded"], output[-6000:]
    job_id = first["job_id"]
    assert second["job_id"] == job_id

    with server.client(keyed_server.api_key) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        listed = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert job["state"] == "COMPLETED", job
    assert job["jobName"] == body["jobName"] and job["clientRequestToken"] == token
    # KFP passes the hyperparameters as floats (3.0); the API got its integers.
    assert job["hyperParameters"]["epochCount"] == 3 and job["hyperParameters"]["seed"] == 7
    assert [j["jobId"] for j in listed if j["jobName"] == body["jobName"]] == [job_id]

    model_uri = job["output"]["modelS3Uri"]
    assert first["model_uri"] == second["model_uri"] == model_uri
    assert first["model"]["metadata"]["uri"] == model_uri
    assert first["model"]["metadata"]["jobId"] == job_id
    assert json.loads(first["model_file"])["uri"] == model_uri

    progress = job["progress"]
    metrics = first["metrics"]
    assert progress["trainingLoss"] is not None and progress["validationLoss"] is not None
    assert metrics["training_loss"] == progress["trainingLoss"]
    assert metrics["validation_loss"] == progress["validationLoss"]
    assert metrics["steps"] == progress["step"] == progress["totalSteps"]
    assert metrics["validation_token_accuracy"] == progress["validationMetrics"]["token_accuracy"]

    # Progress in the step's log: every state the job went through, in order; while
    # RUNNING, lines with the step part-way, the epoch, the loss and the time left.
    total = progress["totalSteps"]
    assert f"tuneforge job {job_id} ({body['jobName']}): QUEUED" in output
    states = [m.group(1) for m in re.finditer(r"^ +\d\d:\d\d:\d\d (\w+)", output, re.M)]
    first_run = states[: states.index("COMPLETED") + 1]
    assert list(dict.fromkeys(first_run)) == ["QUEUED", "VALIDATING", "RUNNING", "COMPLETED"]
    midway = re.findall(
        rf"RUNNING  step (\d+)/{total}  epoch \d/3  loss \d+\.\d{{4}}.*  eta \d+:\d\d$",
        output,
        re.M,
    )
    assert any(0 < int(step) < total for step in midway), output[-4000:]
    final = f"COMPLETED  step {total}/{total}  epoch 3/3  loss {progress['trainingLoss']:.4f}"
    assert final in output
    assert f"tuneforge job {job_id} COMPLETED" in output

    # The compiled pipeline: the API key comes from a Kubernetes secret on a cluster, and
    # the shipped component code needs nothing beyond the standard library (and kfp).
    documents = list(yaml.safe_load_all((tmp_path / "kfp" / "pipeline.yaml").read_text()))
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret = executors["exec-fine-tune"]["secretAsEnv"][0]
    assert secret["secretName"] == "tuneforge-api-key"
    assert secret["keyToEnv"] == [{"envVar": "TUNEFORGE_API_KEY", "secretKey": "api-key"}]
    container = documents[0]["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]
    assert container["image"] == "python:3.11-slim"
    program = container["command"][-1]
    assert "def fine_tune(" in program
    assert _stdlib_only(program) == set()

    # That compiled step, its exact command, in a Python that has kfp and nothing else (as
    # in a plain python image after the step's own `pip install kfp --no-deps`): with the
    # run's token it gets the same job back and writes the same outputs.
    step = _run_step_in_bare_python(
        container, tmp_path, keyed_server, _arguments(body, server.url, token, 1)
    )
    assert step["parameterValues"] == {"job_id": job_id, "model_uri": model_uri}
    assert step["artifacts"]["model"]["artifacts"][0]["metadata"]["uri"] == model_uri
    step_metrics = step["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert step_metrics["training_loss"] == progress["trainingLoss"]


def test_a_failed_job_fails_the_step_with_its_reason(
    kfp_python: Path, keyed_server: KeyedServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    server = keyed_server.server
    key = f"datasets/kfp-broken-{uuid.uuid4().hex[:8]}.jsonl"
    lines = [
        json.dumps({"prompt": "What is 1 + 1?", "completion": " 2"}),
        '{"prompt": "What is 2 + 2?", "completion": ',  # line 2: not JSON
    ]
    object_store.put_bytes(S3Location("demo", key), ("\n".join(lines) + "\n").encode())
    body = demo_job(f"kfp-bad-{uuid.uuid4().hex[:6]}", epochCount=1)
    body["trainingDataConfig"]["s3Uri"] = f"s3://demo/{key}"
    token = f"kfp-{uuid.uuid4().hex}"

    results, output = _run(
        kfp_python, tmp_path, keyed_server, _arguments(body, server.url, token, 1)
    )

    (result,) = results
    assert not result["succeeded"]
    assert "FAILURE" in result["error"], result["error"]

    with server.client(keyed_server.api_key) as client:
        (job,) = [
            j
            for j in client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
            if j["jobName"] == body["jobName"]
        ]
    assert job["state"] == "FAILED"
    assert job["failure"]["reason"] == "DATA_VALIDATION"
    assert f"s3://demo/{key}:2:" in job["failure"]["message"]
    # The step's error names the job, its state and the service's own reason and message
    # (the local runner indents each line of the step's log).
    first_line, *more = job["failure"]["message"].splitlines()
    expected = (
        f"RuntimeError: tuneforge job {job['jobId']} ({body['jobName']}) ended FAILED: "
        f"DATA_VALIDATION: {first_line}"
    )
    assert expected in output, output[-6000:]
    assert all(line.strip() in output for line in more), output[-6000:]
