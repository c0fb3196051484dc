"""The `tuneforge` CLI, run as a subprocess against a real server."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from jobstore.storage import ObjectStore, S3Location
from service.server.embedded_s3 import free_port
from tests.servers import ApiServer, demo_job

SCRIPT = Path(sys.executable).parent / "tuneforge"


def _tuneforge(
    *arguments: str, endpoint: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tuneforge"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    if endpoint is not None:
        environment["TUNEFORGE_ENDPOINT"] = endpoint
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=environment, timeout=timeout
    )


def test_cli_creates_and_watches_a_job(lively_server: ApiServer, tmp_path: Path) -> None:
    api_server = lively_server
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(demo_job("cli-life", epochCount=1)))
    created = _tuneforge(
        "jobs",
        "create",
        "--file",
        str(job_file),
        "--tag",
        "team=cli",
        "--watch",
        endpoint=api_server.grpc_target,
        timeout=300,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    lines = created.stdout.splitlines()
    assert lines[0].startswith("created job ") and "(cli-life)" in lines[0]
    job_id = lines[0].split()[2]
    # Not a terminal: one plain line per update, no progress-bar control characters.
    assert "\r" not in created.stdout and "\x1b" not in created.stdout
    running = [line for line in lines if "  RUNNING " in line]
    assert running and any(" step " in line and " loss " in line for line in running), lines
    assert any("eta " in line for line in running), lines
    assert any(" token_accuracy 0." in line or " token_accuracy 1." in line for line in running)
    assert (
        lines[-1].startswith(f"job {job_id} COMPLETED") and "model: s3://demo/output/" in lines[-1]
    )

    described = _tuneforge(
        "jobs", "get", job_id, "--output", "json", endpoint=api_server.grpc_target
    )
    assert described.returncode == 0, described.stderr
    job = json.loads(described.stdout)
    with api_server.client() as rest:
        assert job == rest.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "COMPLETED" and job["tags"] == {"team": "cli"}

    listed = _tuneforge("--endpoint", api_server.grpc_target, "jobs", "list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].split()[:3] == ["JOB", "ID", "NAME"]
    assert any(
        line.startswith(job_id) and "COMPLETED" in line for line in listed.stdout.splitlines()
    )

    logs = _tuneforge("jobs", "logs", job_id, endpoint=api_server.grpc_target)
    assert logs.returncode == 0 and logs.stdout.strip()
    events = _tuneforge("jobs", "events", job_id, endpoint=api_server.grpc_target)
    assert events.returncode == 0 and "CREATED" in events.stdout

    # On a terminal: a live line with a progress bar, redrawn in place.
    leader, follower = pty.openpty()
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tuneforge"]
    watched = subprocess.run(
        [*command, "--endpoint", api_server.grpc_target, "jobs", "watch", job_id],
        stdout=follower,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    os.close(follower)
    screen = os.read(leader, 65536).decode()
    os.close(leader)
    assert watched.returncode == 0
    assert "\r\x1b[K" in screen and "[########################] 100%" in screen, repr(screen)


def test_cli_get_unknown_job_exits_non_zero_with_one_line(api_server: ApiServer) -> None:
    result = _tuneforge("jobs", "get", "0000000000000000", endpoint=api_server.grpc_target)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "tuneforge: NOT_FOUND: no job with id '0000000000000000' (field jobId)\n"
    )
    over_rest = _tuneforge("--rest", api_server.url, "jobs", "get", "0000000000000000")
    assert over_rest.returncode == 1 and over_rest.stderr == result.stderr


def test_cli_exit_codes(api_server: ApiServer, tmp_path: Path) -> None:
    target = api_server.grpc_target
    flags = [
        "--name",
        "cli-flags",
        "--base-model",
        "s3://demo/models/tiny-llama/",
        "--training-data",
        "s3://demo/datasets/sample-train.jsonl",
        "--output-data",
        "s3://demo/output/",
    ]
    refused = _tuneforge("jobs", "create", *flags, "--learning-rate", "2", endpoint=target)
    assert refused.returncode == 1
    assert refused.stderr.startswith("tuneforge: INVALID_ARGUMENT: hyperParameters.learningRate")
    assert refused.stderr.endswith("(field hyperParameters.learningRate)\n")
    assert refused.stderr.count("\n") == 1

    usage = _tuneforge("jobs", "create", "--epochs", "three", endpoint=target)
    assert usage.returncode == 2
    missing = _tuneforge("jobs", "create", "--file", str(tmp_path / "nope.yaml"), endpoint=target)
    assert missing.returncode == 2 and missing.stderr.startswith("tuneforge: cannot read ")
    bad_state = _tuneforge("jobs", "list", "--state", "SLEEPING", endpoint=target)
    assert bad_state.returncode == 2 and "unknown job state" in bad_state.stderr

    # dpoBeta belongs to PREFERENCE jobs; the type is one of the enum's names.
    beta_alone = _tuneforge("jobs", "create", *flags, "--dpo-beta", "0.2", endpoint=target)
    assert beta_alone.returncode == 1
    assert beta_alone.stderr.startswith("tuneforge: INVALID_ARGUMENT: hyperParameters.dpoBeta")
    assert "only to customizationType PREFERENCE" in beta_alone.stderr
    bad_type = _tuneforge("jobs", "create", *flags, "--customization-type", "RLHF", endpoint=target)
    assert bad_type.returncode == 2 and "PREFERENCE" in bad_type.stderr

    unreachable = _tuneforge("jobs", "list", endpoint=f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("tuneforge: UNAVAILABLE: ")
    assert unreachable.stderr.count("\n") == 1

    # Stop through the REST SDK: `watch` then exits 4, the job having ended STOPPED.
    job_id = _tuneforge(
        "jobs", "create", *flags, "--epochs", "100", "-q", endpoint=target
    ).stdout.strip()
    assert len(job_id) == 16
    # A pause taken back at once, through each transport: the job goes on.
    paused = _tuneforge("jobs", "pause", job_id, endpoint=target)
    assert paused.returncode == 0 and "(pause requested)" in paused.stdout, paused.stderr
    resumed = _tuneforge("--rest", api_server.url, "jobs", "resume", job_id)
    assert resumed.returncode == 0 and "(resume requested)" in resumed.stdout, resumed.stderr
    again = _tuneforge("jobs", "resume", job_id, endpoint=target)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr  # not paused
    stopped = _tuneforge("--rest", api_server.url, "jobs", "stop", job_id)
    assert stopped.returncode == 0 and stopped.stdout == f"job {job_id}: STOPPING\n"
    started = time.monotonic()
    watched = _tuneforge("jobs", "watch", job_id, "--output", "json", endpoint=target, timeout=120)
    assert watched.returncode == 4, watched.stderr
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates[-1]["state"] == "STOPPED" and updates[-1]["stopRequested"]
    assert time.monotonic() - started < 90
    again = _tuneforge("jobs", "stop", job_id, endpoint=target)
    assert again.returncode == 1 and again.stderr.startswith("tuneforge: FAILED_PRECONDITION: ")


def test_cli_creates_a_preference_job(api_server: ApiServer) -> None:
    created = _tuneforge(
        "jobs",
        "create",
        "--name",
        "cli-dpo",
        "--base-model",
        "s3://demo/models/tiny-llama/",
        "--training-data",
        "s3://demo/datasets/sample-train.jsonl",
        "--output-data",
        "s3://demo/output/",
        "--customization-type",
        "preference",
        "--dpo-beta",
        "0.2",
        "--output",
        "json",
        endpoint=api_server.grpc_target,
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    try:
        assert job["customizationType"] == "PREFERENCE"
        assert job["hyperParameters"]["dpoBeta"] == 0.2
        # The REST SDK converts the same job to the same values.
        over_rest = _tuneforge(
            "--rest", api_server.url, "jobs", "get", job["jobId"], "--output", "json"
        )
        described = json.loads(over_rest.stdout)
        assert described["customizationType"] == "PREFERENCE"
        assert described["hyperParameters"]["dpoBeta"] == 0.2
    finally:
        # Not meant to train (the demo data holds no preference pairs): stop it, unless
        # it has already ended.
        _tuneforge("jobs", "stop", job["jobId"], endpoint=api_server.grpc_target)


def test_cli_validate_only_prints_the_dry_run_report_and_creates_nothing(
    api_server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    key = f"datasets/cli-dry-run-{uuid.uuid4().hex[:8]}.jsonl"
    lines = ['{"prompt": "1 + 1?", "completion": " 2"}', "{not json", '{"prompt": "x"}']
    object_store.put_bytes(S3Location("demo", key), ("\n".join(lines) + "\n").encode())
    bad = demo_job("cli-dry-run")
    bad["trainingDataConfig"]["s3Uri"] = f"s3://demo/{key}"
    bad.pop("validationDataConfig", None)
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    good_file = tmp_path / "good.yaml"
    good_file.write_text(yaml.safe_dump(demo_job("cli-dry-run-good")))

    # gRPC, readable: every bad line by file:line, exit 5.
    checked = _tuneforge(
        "jobs", "create", "--file", str(bad_file), "--validate-only",
        endpoint=api_server.grpc_target, timeout=180,
    )  # fmt: skip
    assert checked.returncode == 5, checked.stdout + checked.stderr
    assert checked.stdout.startswith("invalid: 2 problem(s)\n"), checked.stdout
    assert f"  error: s3://demo/{key}:2: " in checked.stdout
    assert f"  error: s3://demo/{key}:3: " in checked.stdout

    # REST, JSON: the good data is valid, with its counts; exit 0.
    checked = _tuneforge(
        "--rest", api_server.url, "jobs", "create", "--file", str(good_file),
        "--validate-only", "--output", "json", timeout=180,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["valid"] is True and not report.get("errors")
    assert int(report["training"]["tokens"]) > 0 and int(report["totalSteps"]) > 0

    # Neither made a job.
    listed = _tuneforge("--rest", api_server.url, "jobs", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["jobs"] == []
