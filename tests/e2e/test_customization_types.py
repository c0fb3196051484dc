"""CONTINUED_PRE_TRAINING and CLASSIFICATION jobs through the real API, store and trainer.

Continued pre-training runs on the demo tiny-llama with text documents longer than
maxSequenceLength; classification fine-tunes the pretrained all-MiniLM-L6-v2 (BERT) on a
slice of SST-2 (/work/shared/data/sst2) and must beat the majority-class baseline.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from service.server.demo import TRAIN_KEY
from tests.servers import ApiServer

SST2 = Path(os.environ.get("TUNEFORGE_SST2_DIR", "/work/shared/data/sst2"))
CLASSIFICATION_TRAIN = 600
CLASSIFICATION_VALIDATION = 200


def _read_csv(store: ObjectStore, uri: str) -> list[dict[str, str]]:
    found = store.get_bytes(parse_s3_uri(uri, field="uri"))
    assert found is not None, f"{uri} was not written"
    return list(csv.DictReader(io.StringIO(found[0].decode())))


def _put_jsonl(store: ObjectStore, key: str, records: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(record) + "\n" for record in records).encode()
    store.put_bytes(S3Location("demo", key), body)
    return f"s3://demo/{key}"


def _job(name: str, kind: str, model: str, train: str, validation: str, **hyper: Any) -> dict:
    return {
        "jobName": name,
        "customizationType": kind,
        "baseModelIdentifier": model,
        "trainingDataConfig": {"s3Uri": train},
        "validationDataConfig": {"s3Uri": validation},
        "outputDataConfig": {"s3Uri": "s3://demo/output/"},
        "hyperParameters": hyper,
    }


def _sst2(name: str, count: int) -> list[dict[str, Any]]:
    with (SST2 / name).open() as lines:
        return [json.loads(line) for _, line in zip(range(count), lines, strict=False)]


# -- continued pre-training -----------------------------------------------------------


def _documents(store: ObjectStore) -> list[dict[str, str]]:
    """Documents in the demo tokenizer's vocabulary, each several chunks long: the demo
    instruction records run together as text, half as Bedrock's {"input"}, half {"text"}."""
    found = store.get_bytes(S3Location("demo", TRAIN_KEY))
    assert found is not None
    records = [json.loads(line) for line in found[0].decode().splitlines() if line.strip()]
    texts = [r["prompt"] + r["completion"] for r in records]
    documents = [" ".join(texts[i : i + 12]) for i in range(0, len(texts), 12)]
    return [{"input" if i % 2 else "text": doc} for i, doc in enumerate(documents)]


def test_continued_pre_training_job_completes_and_its_loss_falls(
    api_server: ApiServer, object_store: ObjectStore
) -> None:
    documents = _documents(object_store)
    train = _put_jsonl(object_store, "datasets/cpt-train.jsonl", documents[:-3])
    validation = _put_jsonl(object_store, "datasets/cpt-validation.jsonl", documents[-3:])
    body = _job(
        "cpt",
        "CONTINUED_PRE_TRAINING",
        "s3://demo/models/tiny-llama/",
        train,
        validation,
        epochCount=4,
        batchSize=8,
        learningRate=0.005,
        learningRateWarmupSteps=5,
        maxSequenceLength=64,
    )
    with api_server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["customizationType"] == "CONTINUED_PRE_TRAINING"
        job_id = response.json()["jobId"]
    job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=240)
    progress = job["progress"]
    # 22 documents of ~200 tokens split into 64-token chunks: more than one per document.
    steps_per_epoch = progress["totalSteps"] // 4
    assert steps_per_epoch * 8 > len(documents) - 3
    assert progress["validationLoss"] is not None
    # A causal LM's evaluation reports its token accuracy, nothing of a classifier's.
    assert set(progress["validationMetrics"]) == {"token_accuracy"}

    training = _read_csv(object_store, job["output"]["trainingMetricsS3Uri"])
    losses = [float(row["training_loss"]) for row in training]
    start, end = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert end < 0.7 * start, f"training loss did not fall: {start:.3f} -> {end:.3f}"
    validation_rows = _read_csv(object_store, job["output"]["validationMetricsS3Uri"])
    assert list(validation_rows[0]) == [
        "step_number",
        "epoch_number",
        "validation_loss",
        "perplexity",
        "token_accuracy",
    ]
    assert float(validation_rows[-1]["validation_loss"]) < float(
        validation_rows[0]["validation_loss"]
    )


# -- classification ---------------------------------------------------------------------


def test_classification_on_sst2_beats_the_majority_baseline(
    api_server: ApiServer, object_store: ObjectStore, minilm_model: str, tmp_path: Path
) -> None:
    train_records = _sst2("train.jsonl", CLASSIFICATION_TRAIN)
    validation_records = _sst2("validation.jsonl", CLASSIFICATION_VALIDATION)
    counts = Counter(r["label"] for r in validation_records)
    baseline = max(counts.values()) / len(validation_records)
    train = _put_jsonl(object_store, "datasets/sst2-train.jsonl", train_records)
    validation = _put_jsonl(object_store, "datasets/sst2-validation.jsonl", validation_records)
    body = _job(
        "sst2",
        "CLASSIFICATION",
        minilm_model,
        train,
        validation,
        epochCount=2,
        batchSize=32,
        learningRate=1e-4,
        learningRateWarmupSteps=4,
        maxSequenceLength=64,
    )
    with api_server.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["jobId"]
    job = api_server.wait_for(job_id, {"COMPLETED"}, timeout=300)

    metrics = job["progress"]["validationMetrics"]
    assert set(metrics) == {"accuracy", "precision", "recall", "f1"}
    assert metrics["accuracy"] > baseline + 0.1, (metrics, baseline)
    assert all(0 < value <= 1 for value in metrics.values()), metrics

    rows = _read_csv(object_store, job["output"]["validationMetricsS3Uri"])
    assert list(rows[0]) == [
        "step_number",
        "epoch_number",
        "validation_loss",
        "perplexity",
        "accuracy",
        "precision",
        "recall",
        "f1",
    ]
    assert len(rows) == 2  # one evaluation per epoch
    assert float(rows[-1]["accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)

    # The gRPC face shows the same type and metrics.
    with grpc.insecure_channel(api_server.grpc_target) as channel:
        found = pb_grpc.FineTuningServiceStub(channel).GetJob(pb.GetJobRequest(job_id=job_id))
    assert found.customization_type == pb.CLASSIFICATION
    assert dict(found.progress.validation_metrics) == pytest.approx(metrics)

    model_dir = tmp_path / "model"
    object_store.download_prefix(parse_s3_uri(job["output"]["modelS3Uri"], field="m"), model_dir)
    assert list(model_dir.glob("*.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    texts = [r["text"] for r in validation_records[:64]]
    inputs = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1).tolist()
    correct = sum(
        model.config.id2label[p] == r["label"]
        for p, r in zip(predicted, validation_records, strict=False)
    )
    assert correct / len(texts) > baseline  # the saved model is the trained one


def test_a_validation_label_unknown_to_training_fails_naming_file_and_line(
    api_server: ApiServer, object_store: ObjectStore, minilm_model: str
) -> None:
    train = _put_jsonl(
        object_store,
        "datasets/labels-train.jsonl",
        [{"text": "good", "label": 1}, {"text": "bad", "label": 0}],
    )
    validation = _put_jsonl(
        object_store,
        "datasets/labels-validation.jsonl",
        [{"text": "fine", "label": 1}, {"text": "meh", "label": 2}],
    )
    body = _job("labels", "CLASSIFICATION", minilm_model, train, validation, epochCount=1)
    with api_server.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["jobId"]
    job = api_server.wait_for(job_id, {"FAILED"}, timeout=120)
    assert job["failure"]["reason"] == "DATA_VALIDATION"
    assert f"{validation}:2: label" in job["failure"]["message"]
    assert '"2" is not a label of the training data' in job["failure"]["message"]
