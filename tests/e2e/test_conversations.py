"""Conversation data end to end through the API on the tiny demo model: Bedrock's
`bedrock-conversation-2024` and OpenAI's `messages` format both train to COMPLETED with a
falling loss (OpenAI's with string contents and with lists of text parts); an OpenAI
record with an image part fails the job in VALIDATING, naming the file and line; the
validation summary shows in REST and gRPC; a second job on the same
data takes its tokenized data from the cache.

One API server for the module keeps the trainer subprocesses few and the test bounded.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from service.server.demo import demo_datasets
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

SYSTEM = "Answer with the answer only."


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("conversations") / "home"
    api = ApiServer(s3_server, home, state_bucket=f"chat-{uuid.uuid4().hex[:12]}")
    api.start()
    yield api
    api.stop()
    api.kill_trainers()


def _turns(jsonl: str) -> list[list[tuple[str, str]]]:
    """The demo's prompt/completion records as conversations: pairs of records become
    two-turn conversations, so every file has multi-turn ones, and the rest single turns."""
    records = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    pairs = [(r["prompt"].removesuffix("\nAnswer:"), r["completion"].strip()) for r in records]
    conversations = [[pairs[i], pairs[i + 1]] for i in range(0, len(pairs) // 2, 2)]
    conversations += [[pair] for pair in pairs[len(pairs) // 2 :]]
    return conversations


def bedrock_jsonl(jsonl: str) -> str:
    lines = []
    for turns in _turns(jsonl):
        messages = []
        for question, answer in turns:
            messages.append({"role": "user", "content": [{"text": question}]})
            messages.append({"role": "assistant", "content": [{"text": answer}]})
        record = {
            "schemaVersion": "bedrock-conversation-2024",
            "system": [{"text": SYSTEM}],
            "messages": messages,
        }
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def openai_jsonl(jsonl: str) -> str:
    """OpenAI's chat format; every other record writes its contents as lists of text
    parts (`[{"type": "text", "text": ...}]`), which OpenAI allows beside plain strings."""
    lines = []
    for index, turns in enumerate(_turns(jsonl)):
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        for question, answer in turns:
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        if index % 2 == 1:
            for message in messages:
                message["content"] = [{"type": "text", "text": message["content"]}]
        lines.append(json.dumps({"messages": messages}))
    return "\n".join(lines) + "\n"


def upload(object_store: ObjectStore, name: str, text: str) -> str:
    location = S3Location("demo", f"datasets/chat-{uuid.uuid4().hex[:8]}/{name}")
    object_store.put_bytes(location, text.encode())
    return location.uri


def create(server: ApiServer, name: str, training: str, validation: str) -> str:
    body = demo_job(name, epochCount=3, maxSequenceLength=128)
    body["trainingDataConfig"]["s3Uri"] = training
    body["validationDataConfig"]["s3Uri"] = validation
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["jobId"])


def training_losses(object_store: ObjectStore, job: dict[str, Any]) -> list[float]:
    location = parse_s3_uri(job["output"]["trainingMetricsS3Uri"], field="metrics")
    found = object_store.get_bytes(location)
    assert found is not None, "no training metrics"
    rows = list(csv.DictReader(io.StringIO(found[0].decode())))
    return [float(row["training_loss"]) for row in rows]


def events(server: ApiServer, job_id: str) -> list[dict[str, Any]]:
    with server.client() as client:
        response = client.get(f"/v1/jobs/{job_id}/events", params={"pageSize": 1000})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


@pytest.fixture(scope="module")
def datasets(object_store: ObjectStore, demo_assets: None) -> dict[str, tuple[str, str]]:
    train, validation = demo_datasets()
    return {
        "bedrock": (
            upload(object_store, "train.jsonl", bedrock_jsonl(train)),
            upload(object_store, "validation.jsonl", bedrock_jsonl(validation)),
        ),
        "openai": (
            upload(object_store, "train.jsonl", openai_jsonl(train)),
            upload(object_store, "validation.jsonl", openai_jsonl(validation)),
        ),
    }


@pytest.fixture(scope="module")
def completed(server: ApiServer, datasets: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """One job per format, run at the same time, each waited for to COMPLETED."""
    job_ids = {fmt: create(server, f"chat-{fmt}", *uris) for fmt, uris in datasets.items()}
    return {fmt: server.wait_for(job_id, {"COMPLETED"}, 300) for fmt, job_id in job_ids.items()}


@pytest.mark.parametrize("fmt", ["bedrock", "openai"])
def test_a_conversation_dataset_trains_to_completed_with_a_falling_loss(
    fmt: str, completed: dict[str, dict[str, Any]], object_store: ObjectStore
) -> None:
    job = completed[fmt]
    losses = training_losses(object_store, job)
    assert len(losses) >= 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert job["progress"]["validationLoss"] is not None


def test_the_validation_summary_is_in_the_rest_and_grpc_descriptions(
    server: ApiServer, completed: dict[str, dict[str, Any]], demo_assets: None
) -> None:
    train, validation = demo_datasets()
    expected_train = len(_turns(train))
    expected_validation = len(_turns(validation))
    job = completed["openai"]
    summary = job["dataSummary"]
    assert summary["trainingRecords"] == expected_train
    assert summary["validationRecords"] == expected_validation
    lengths = summary["tokenLengths"]
    assert 0 < lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"] <= 128
    assert summary["truncatedRecords"] == 0
    assert summary["labelDistribution"] == {}

    with grpc.insecure_channel(server.grpc_target) as channel:
        described = pb_grpc.FineTuningServiceStub(channel).GetJob(
            pb.GetJobRequest(job_id=job["jobId"]), timeout=30
        )
    assert described.HasField("data_summary")
    assert described.data_summary.training_records == expected_train
    assert described.data_summary.validation_records == expected_validation
    assert described.data_summary.token_lengths.p90 == lengths["p90"]
    assert described.data_summary.token_lengths.max == lengths["max"]


def test_a_second_job_on_the_same_data_takes_the_tokenized_data_from_the_cache(
    server: ApiServer,
    completed: dict[str, dict[str, Any]],
    datasets: dict[str, tuple[str, str]],
) -> None:
    first = completed["bedrock"]
    assert not any("from cache" in e["message"] for e in events(server, first["jobId"]))
    second_id = create(server, "chat-bedrock-again", *datasets["bedrock"])
    second = server.wait_for(second_id, {"COMPLETED"}, 300)
    validated = [e for e in events(server, second_id) if e["type"] == "DATA_VALIDATED"]
    assert len(validated) == 1 and "(tokenized data from cache)" in validated[0]["message"]
    with server.client() as client:
        log = client.get(f"/v1/jobs/{second_id}/logs").text
    assert "tokenized data from cache" in log
    # The same data gives the same summary, whether tokenized or read from the cache.
    assert second["dataSummary"] == first["dataSummary"]


def test_an_openai_image_part_fails_the_job_in_validating_naming_file_and_line(
    server: ApiServer, object_store: ObjectStore, demo_assets: None
) -> None:
    train, validation = demo_datasets()
    records = openai_jsonl(train).splitlines()
    image = json.loads(records[2])
    image["messages"][1]["content"] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    records[2] = json.dumps(image)
    training = upload(object_store, "train.jsonl", "\n".join(records) + "\n")
    job_id = create(
        server, "chat-image", training, upload(object_store, "v.jsonl", openai_jsonl(validation))
    )
    job = server.wait_for(job_id, {"FAILED"}, 120)
    assert job["failure"]["reason"] == "DATA_VALIDATION"
    assert (
        f'{training}:3: "messages"[1]."content"[1] is a \'image_url\' part; only text parts'
        in job["failure"]["message"]
    ), job["failure"]["message"]
    assert "RUNNING" not in job["stateTimes"]
