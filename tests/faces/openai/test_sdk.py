"""The official `openai` SDK against a real server, store and trainers: files, models and
fine-tuning jobs as an application that fine-tunes through OpenAI's API calls them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from jobstore.storage import ObjectStore, S3Location
from service.core.model_catalog import DEMO_MODEL_NAME, DEMO_MODEL_URI
from service.server import demo
from tests.servers import ApiServer

WAIT_SECONDS = 300
# The service's default learning rate is for real models; the demo's tiny one learns in a
# few steps at 60 times it (0.003).
FAST = {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 60}


def _client(server: ApiServer, api_key: str = "unused-in-development-mode") -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=30)


def _demo_file(object_store: ObjectStore, name: str) -> bytes:
    found = object_store.get_bytes(S3Location(demo.DEMO_BUCKET, f"datasets/{name}"))
    assert found is not None
    return found[0]


def _wait(client: OpenAI, job_id: str, statuses: set[str]) -> FineTuningJob:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        # A cancelled job shows as cancelled at once and ends (finished_at) a little later.
        ended = job.finished_at is not None or job.status not in {
            "cancelled",
            "failed",
            "succeeded",
        }
        if (job.status in statuses and ended) or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


@pytest.fixture
def client(api_server: ApiServer) -> Iterator[OpenAI]:
    with _client(api_server) as sdk:
        yield sdk


def test_the_demo_model_is_listed_by_its_catalog_name() -> None:
    assert f"s3://{demo.DEMO_BUCKET}/{demo.MODEL_PREFIX}" == DEMO_MODEL_URI


def test_a_supervised_job_from_uploaded_files(
    client: OpenAI, api_server: ApiServer, object_store: ObjectStore
) -> None:
    training = _demo_file(object_store, "sample-train.jsonl")
    validation = _demo_file(object_store, "sample-validation.jsonl")

    uploaded = client.files.create(file=("train.jsonl", training), purpose="fine-tune")
    checking = client.files.create(file=("valid.jsonl", validation), purpose="fine-tune")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == (
        "train.jsonl",
        len(training),
        "fine-tune",
    )
    assert {uploaded.id, checking.id} <= {f.id for f in client.files.list()}
    assert client.files.retrieve(uploaded.id).bytes == len(training)
    assert client.files.content(uploaded.id).read() == training

    assert DEMO_MODEL_NAME in {model.id for model in client.models.list()}

    created = client.fine_tuning.jobs.create(
        model=DEMO_MODEL_NAME,
        training_file=uploaded.id,
        validation_file=checking.id,
        suffix="sdk",
        seed=7,
        metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": FAST}},
    )
    assert created.status in ("validating_files", "queued")
    assert (created.model, created.training_file, created.validation_file) == (
        DEMO_MODEL_NAME,
        uploaded.id,
        checking.id,
    )
    assert (created.seed, created.hyperparameters.n_epochs, created.metadata) == (
        7,
        1,
        {"team": "search"},
    )

    # The same job through the native REST face.
    with api_server.client() as rest:
        native = rest.get(f"/v1/jobs/{created.id}").json()
    assert native["jobName"] == "sdk" and native["tags"] == {"team": "search"}
    assert native["baseModelIdentifier"] == DEMO_MODEL_URI
    assert native["hyperParameters"]["learningRate"] == pytest.approx(0.003)

    job = _wait(client, created.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{DEMO_MODEL_NAME}:sdk:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.finished_at is not None and job.finished_at >= job.created_at

    (result,) = job.result_files
    metrics_csv = client.files.content(result).text
    assert metrics_csv.startswith("step_number,")

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [event for event in events if event.type == "metrics"]
    assert metrics and all(event.data and "train_loss" in event.data for event in metrics)
    # Token accuracy beside each loss, a share of the completion tokens.
    for event in metrics:
        assert event.data is not None
        assert 0.0 <= event.data["train_mean_token_accuracy"] <= 1.0
        if "valid_loss" in event.data:
            assert 0.0 <= event.data["valid_mean_token_accuracy"] <= 1.0
    assert any("valid_mean_token_accuracy" in (event.data or {}) for event in metrics)
    assert any(event.type == "message" for event in events)
    # Auto-pagination (after = the last id of each page) walks the same events in order.
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=3)] == [
        e.id for e in events
    ]

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    for checkpoint in checkpoints:
        assert checkpoint.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-")
        assert checkpoint.fine_tuning_job_id == job.id
        assert checkpoint.metrics.train_mean_token_accuracy is not None

    filtered = client.fine_tuning.jobs.list(metadata={"team": "search"})
    assert [listed.id for listed in filtered] == [job.id]
    assert list(client.fine_tuning.jobs.list(metadata={"team": "other"})) == []

    model = client.models.retrieve(job.fine_tuned_model)
    assert model.id == job.fine_tuned_model
    with pytest.raises(openai.NotFoundError):  # the job's id under another suffix
        client.models.retrieve(f"ft:{DEMO_MODEL_NAME}:other:{job.id}")
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(job.fine_tuned_model)

    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)  # it has ended

    assert client.files.delete(checking.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(checking.id)


def test_listing_pages_and_cancelling(client: OpenAI, object_store: ObjectStore) -> None:
    training = client.files.create(
        file=("train.jsonl", _demo_file(object_store, "sample-train.jsonl")), purpose="fine-tune"
    )
    tag = uuid.uuid4().hex[:8]
    created = [
        client.fine_tuning.jobs.create(
            model=DEMO_MODEL_NAME,
            training_file=training.id,
            metadata={"batch": tag},
            hyperparameters={"n_epochs": 20},
        )
        for _ in range(3)
    ]
    # Newest first, one a page: the SDK follows `after` while `has_more`.
    pages = client.fine_tuning.jobs.list(limit=1, metadata={"batch": tag})
    assert [job.id for job in pages] == [job.id for job in reversed(created)]

    for job in created:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    for job in created:
        ended = _wait(client, job.id, {"cancelled", "succeeded", "failed"})
        assert ended.status == "cancelled" and ended.finished_at is not None
        assert ended.fine_tuned_model is None


# OpenAI's preference records (what a `dpo` job trains on).
def _preference_lines(people: range) -> bytes:
    """OpenAI's preference records: a warm greeting preferred over a curt one."""
    return b"".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"Greet person {n}."}]},
                "preferred_output": [{"role": "assistant", "content": f"Hello, person {n}!"}],
                "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
            }
        ).encode()
        + b"\n"
        for n in people
    )


def test_a_dpo_job_is_a_preference_job_and_learns_the_preference(
    client: OpenAI, api_server: ApiServer
) -> None:
    training = client.files.create(
        file=("pairs.jsonl", _preference_lines(range(32))), purpose="fine-tune"
    )
    validation = client.files.create(
        file=("held-out.jsonl", _preference_lines(range(100, 108))), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError) as mixed:
        client.fine_tuning.jobs.create(
            model=DEMO_MODEL_NAME,
            training_file=training.id,
            method={"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.2}}},
        )
    assert mixed.value.param == "method.dpo"  # type: ignore[attr-defined]
    for beta in (0, 11):
        with pytest.raises(openai.BadRequestError) as bad_beta:
            client.fine_tuning.jobs.create(
                model=DEMO_MODEL_NAME,
                training_file=training.id,
                method={"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}},
            )
        assert bad_beta.value.param == "method.dpo.hyperparameters.beta"  # type: ignore[attr-defined]

    dpo = {"beta": 0.2, "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 40}
    created = client.fine_tuning.jobs.create(
        model=DEMO_MODEL_NAME,
        training_file=training.id,
        validation_file=validation.id,
        suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": dpo}},
    )
    for job in (created, client.fine_tuning.jobs.retrieve(created.id)):
        assert job.method is not None and job.method.type == "dpo"
        assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
        assert job.method.dpo.hyperparameters.beta == 0.2
        assert job.method.dpo.hyperparameters.n_epochs == 3
        assert job.method.supervised is None

    with pytest.raises(openai.ConflictError):  # a job that has not ended reads it
        client.files.delete(training.id)

    # The same job through the native REST face.
    with api_server.client() as rest:
        native = rest.get(f"/v1/jobs/{created.id}").json()
    assert native["customizationType"] == "PREFERENCE"
    assert native["hyperParameters"]["dpoBeta"] == 0.2
    assert native["hyperParameters"]["epochCount"] == 3

    job = _wait(client, created.id, {"cancelled", "succeeded", "failed"})
    assert job.status == "succeeded", job.error
    assert job.method is not None and job.method.type == "dpo"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [event.data for event in events if event.type == "metrics" and event.data]
    assert metrics and all("train_reward_accuracy" in data for data in metrics)
    assert "train_mean_token_accuracy" not in metrics[0]
    evaluated = [data for data in metrics if "valid_reward_accuracy" in data]
    # Held-out people: the warm greeting is preferred well above chance at the end.
    assert evaluated and evaluated[-1]["valid_reward_accuracy"] >= 0.9, evaluated
    assert evaluated[-1]["valid_reward_margin"] > 0
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints
    newest = max(checkpoints, key=lambda checkpoint: checkpoint.step_number)
    assert getattr(newest.metrics, "valid_reward_accuracy", None) is not None
    assert client.files.delete(training.id).deleted  # the job has ended


def test_a_bad_file_fails_the_job_naming_its_line(client: OpenAI) -> None:
    lines = b'{"prompt": "a", "completion": "b"}\n{"prompt": "no completion"}\n' * 10
    bad = client.files.create(file=("bad.jsonl", lines), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(model=DEMO_MODEL_NAME, training_file=bad.id)

    job = _wait(client, created.id, {"failed", "succeeded", "cancelled"})

    assert job.status == "failed"
    assert job.error is not None and job.error.param == "training_file"
    assert f"{bad.id}:2: missing" in job.error.message, job.error.message


def test_each_error_in_openais_shape(client: OpenAI, object_store: ObjectStore) -> None:
    training = client.files.create(
        file=("train.jsonl", _demo_file(object_store, "sample-train.jsonl")), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=training.id)
    assert unknown_model.value.param == "model"  # type: ignore[attr-defined]
    assert DEMO_MODEL_NAME in unknown_model.value.message

    with pytest.raises(openai.BadRequestError) as unknown_file:
        client.fine_tuning.jobs.create(model=DEMO_MODEL_NAME, training_file="file-" + "0" * 24)
    assert unknown_file.value.param == "training_file"  # type: ignore[attr-defined]

    with pytest.raises(openai.BadRequestError) as bad_epochs:
        client.fine_tuning.jobs.create(
            model=DEMO_MODEL_NAME, training_file=training.id, hyperparameters={"n_epochs": 0}
        )
    assert bad_epochs.value.param == "hyperparameters.n_epochs"  # type: ignore[attr-defined]

    with pytest.raises(openai.BadRequestError) as not_yet:
        client.fine_tuning.jobs.create(
            model=DEMO_MODEL_NAME, training_file=training.id, method={"type": "reinforcement"}
        )
    assert not_yet.value.param == "method.type"  # type: ignore[attr-defined]

    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert wrong_purpose.value.param == "purpose"  # type: ignore[attr-defined]

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("0p5v2m8x3k7qa1b2")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-" + "0" * 24)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(DEMO_MODEL_NAME)  # a base model is not the tenant's to delete


def test_keys_tenants_rate_limits_and_the_upload_limit(
    s3_server: object, demo_assets: None, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,  # type: ignore[arg-type]
        tmp_path / "home",
        state_bucket=f"openai-{uuid.uuid4().hex[:10]}",
        admin_key="admin-key-for-the-openai-test-0123456789",
        extra_env={
            "TUNEFORGE_ALLOWED_BUCKETS": '["demo"]',
            "TUNEFORGE_TENANT_LIMITS": '{"slow": {"requests_per_second": 0.01, "burst": 1}}',
            "TUNEFORGE_MAX_FILE_BYTES": "4096",
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
        },
    )
    server.start()
    try:
        acme = _client(server, server.create_api_key("acme"))
        globex = _client(server, server.create_api_key("globex"))
        slow = _client(server, server.create_api_key("slow"))

        with pytest.raises(openai.AuthenticationError):
            _client(server, "tfk_000000000000_" + "x" * 40).files.list()

        mine = acme.files.create(
            file=("a.jsonl", b'{"prompt": "a", "completion": "b"}\n'), purpose="fine-tune"
        )
        assert [f.id for f in acme.files.list()] == [mine.id]
        assert list(globex.files.list()) == []  # another tenant's files are not seen
        with pytest.raises(openai.NotFoundError):
            globex.files.retrieve(mine.id)

        with pytest.raises(openai.APIStatusError) as too_large:
            acme.files.create(file=("big.jsonl", b"x" * 10_000), purpose="fine-tune")
        assert too_large.value.status_code == 413
        assert "TUNEFORGE_MAX_FILE_BYTES" in too_large.value.message
        # The same without a Content-Length (a chunked upload): refused as it streams in.
        boundary = "tuneforge-chunked"
        form = (
            (
                f"--{boundary}\r\nContent-Disposition: form-data; name=purpose\r\n\r\n"
                f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=file; "
                'filename="big.jsonl"\r\n\r\n'
            ).encode()
            + b"x" * 10_000
            + f"\r\n--{boundary}--\r\n".encode()
        )
        chunked = httpx.post(
            f"{server.url}/v1/files",
            content=iter([form[i : i + 1024] for i in range(0, len(form), 1024)]),
            headers={
                "Authorization": f"Bearer {acme.api_key}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            timeout=30,
        )
        assert chunked.status_code == 413, chunked.text
        assert chunked.json()["error"]["code"] == "file_too_large"
        assert [f.id for f in acme.files.list()] == [mine.id]  # nothing half-stored

        slow.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            slow.models.list()
        assert int(limited.value.response.headers["retry-after"]) >= 1
    finally:
        server.stop()
        server.kill_trainers()


def test_errors_are_openais_json_shape(api_server: ApiServer) -> None:
    answer = httpx.get(f"{api_server.url}/v1/fine_tuning/jobs/0p5v2m8x3k7qa1b2", timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "0p5v2m8x3k7qa1b2" in error["message"]

    # A body that is not even text is the caller's error too, in the same shape.
    answer = httpx.post(
        f"{api_server.url}/v1/fine_tuning/jobs",
        content=b"\xef<\xef",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "body"


def test_pause_and_resume(client: OpenAI, object_store: ObjectStore) -> None:
    training = client.files.create(
        file=("train.jsonl", _demo_file(object_store, "sample-train.jsonl")), purpose="fine-tune"
    )
    created = client.fine_tuning.jobs.create(
        model=DEMO_MODEL_NAME, training_file=training.id, hyperparameters={"n_epochs": 30}
    )
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(created.id)  # not paused
    _wait(client, created.id, {"running"})

    client.fine_tuning.jobs.pause(created.id)
    paused = _wait(client, created.id, {"paused"})
    assert paused.status == "paused" and paused.finished_at is None

    assert client.fine_tuning.jobs.resume(created.id).status in ("paused", "queued")
    _wait(client, created.id, {"queued", "validating_files", "running"})
    assert client.fine_tuning.jobs.cancel(created.id).status == "cancelled"
