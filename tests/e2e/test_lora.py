"""LoRA jobs (method LORA) through the real API, store and trainer.

- On the demo tiny-llama with mergeAdapter: the job completes, its loss falls, its
  checkpoints hold the adapter and never the base weights, its final output is the
  adapter (loadable with peft's PeftModel) and a merged model whose logits equal
  base + adapter.
- LoRA for CLASSIFICATION on the pretrained MiniLM with mergeAdapter (a few short
  records, one epoch, to stay small): the job completes with accuracy, precision, recall
  and F1; its output is the adapter plus the trained classifier head (peft's
  modules_to_save) and a merged model whose logits equal base + adapter.
- A target module the model does not have: FAILED before training, with the module
  names that do exist.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

TINY_LLAMA = "s3://demo/models/tiny-llama/"
TRAINING_STATE_FILES = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.safetensors",
    "trainer_state.json",
    "manifest.json",
    "COMMITTED",
}


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    running = ApiServer(
        s3_server, tmp_path_factory.mktemp("lora"), state_bucket=f"lora-{uuid.uuid4().hex[:8]}"
    )
    running.start()
    yield running
    running.stop()
    running.kill_trainers()


def _create(server: ApiServer, body: dict[str, Any]) -> str:
    with server.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["jobId"])


def _download(store: ObjectStore, uri: str, directory: Path) -> Path:
    store.download_prefix(parse_s3_uri(uri, field="uri").as_prefix(), directory)
    return directory


def _files_by_checkpoint(store: ObjectStore, checkpoints_uri: str) -> dict[str, set[str]]:
    prefix = parse_s3_uri(checkpoints_uri, field="uri").as_prefix()
    folders: dict[str, set[str]] = {}
    for item in store.list_objects(prefix):
        folder, _, name = item["key"][len(prefix.key) :].partition("/")
        folders.setdefault(folder, set()).add(name)
    return folders


def _losses(store: ObjectStore, uri: str, column: str) -> list[float]:
    found = store.get_bytes(parse_s3_uri(uri, field="uri"))
    assert found is not None, f"{uri} was not written"
    return [float(row[column]) for row in csv.DictReader(io.StringIO(found[0].decode()))]


def _tensor_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_lora_job_with_merge_completes_and_merged_model_matches_base_plus_adapter(
    server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    body = demo_job(
        "lora-merge",
        epochCount=5,
        learningRate=0.01,
        learningRateWarmupSteps=5,
        maxSequenceLength=64,
        checkpointIntervalSteps=40,
        keepCheckpoints=10,
        method="LORA",
        loraRank=16,
        loraAlpha=32.0,
        loraDropout=0.0,
        mergeAdapter=True,
    )
    job = server.wait_for(_create(server, body), {"COMPLETED"}, timeout=300)
    output = job["output"]

    # The demo model is randomly initialised and its embeddings, MLPs and head stay frozen,
    # so adapters on its attention alone lower the loss by a few percent (about 6.0 ->
    # 5.8 nats), far less than full fine-tuning does: a fall, not a steep one.
    losses = _losses(object_store, output["trainingMetricsS3Uri"], "training_loss")
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert end < start - 0.05, f"training loss did not fall: {start:.3f} -> {end:.3f}"
    validation = _losses(object_store, output["validationMetricsS3Uri"], "validation_loss")
    assert len(validation) == 5 and validation[-1] < validation[0] - 0.05, validation

    # Checkpoints: the adapter and the training state; never the frozen base weights.
    checkpoints = _files_by_checkpoint(object_store, output["checkpointsS3Uri"])
    assert len(checkpoints) >= 3, checkpoints
    for folder, names in checkpoints.items():
        assert {"adapter_model.safetensors", "adapter_config.json", "COMMITTED"} <= names
        weights = {n for n in names if n.endswith(".safetensors")} - TRAINING_STATE_FILES
        assert weights == {"adapter_model.safetensors"}, (folder, names)
        assert "config.json" not in names, (folder, names)
    step_folder = sorted(checkpoints)[0]
    local = tmp_path / "checkpoint"
    _download(object_store, output["checkpointsS3Uri"] + step_folder + "/", local)
    names = _tensor_names(local / "adapter_model.safetensors")
    assert names and all("lora_" in name for name in names), names
    optimizer = torch.load(local / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(names), "optimizer state for the adapter only"

    # The final output: the adapter in model/, the merged full model in model/merged/.
    adapter_dir = _download(object_store, output["modelS3Uri"], tmp_path / "model")
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == TINY_LLAMA
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (16, 32.0)
    assert sorted(adapter_config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    merged_dir = adapter_dir / "merged"
    assert (merged_dir / "config.json").is_file()
    assert (merged_dir / "model.safetensors").is_file()

    base_dir = _download(object_store, TINY_LLAMA, tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    inputs = tokenizer(["What is the capital of France?"], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        merged_logits = merged(**inputs).logits
        with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
        adapter_logits = with_adapter(**inputs).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3), "the adapter is a no-op"


def test_unknown_target_module_fails_before_training_naming_the_modules_there(
    server: ApiServer,
) -> None:
    body = demo_job("lora-bad-target", method="LORA", loraTargetModules=["q_proj", "query"])
    job = server.wait_for(_create(server, body), {"FAILED"}, timeout=180)
    failure = job["failure"]
    assert failure["reason"] == "MODEL_LOAD", failure
    message = failure["message"]
    assert "loraTargetModules" in message and "query: no such module" in message, message
    assert "q_proj, up_proj, v_proj" in message, "lists the layers that exist"
    assert "RUNNING" not in job["stateTimes"], "failed while validating, before training"
    assert job["progress"]["step"] == 0


def test_lora_knobs_with_method_full_are_refused_at_create(server: ApiServer) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json=demo_job("lora-full", mergeAdapter=True))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "hyperParameters.mergeAdapter"


def _reviews(count: int, offset: int) -> list[dict[str, str]]:
    """Short reviews whose label a pretrained sentence encoder can tell apart."""
    good = ["wonderful", "moving", "great fun", "a delight", "brilliant", "charming"]
    bad = ["dull", "far too long", "a mess", "boring", "tedious", "painful to watch"]
    subjects = ["the film", "this movie", "the story", "the acting"]
    records = []
    for index in range(offset, offset + count):
        subject = subjects[index % len(subjects)]
        if index % 2 == 0:
            records.append({"text": f"{subject} is {good[index % 6]}", "label": "positive"})
        else:
            records.append({"text": f"{subject} is {bad[index % 6]}", "label": "negative"})
    return records


def _put_jsonl(store: ObjectStore, name: str, records: list[dict[str, str]]) -> str:
    location = S3Location("demo", f"datasets/lora-cls-{uuid.uuid4().hex[:8]}/{name}")
    store.put_bytes(location, "".join(json.dumps(r) + "\n" for r in records).encode())
    return location.uri


def test_lora_classification_on_minilm_reports_metrics_and_saves_adapter_head_and_merged(
    server: ApiServer, object_store: ObjectStore, minilm_model: str, tmp_path: Path
) -> None:
    validation_records = _reviews(16, offset=1000)
    body = {
        "jobName": "lora-classification",
        "customizationType": "CLASSIFICATION",
        "baseModelIdentifier": minilm_model,
        "trainingDataConfig": {"s3Uri": _put_jsonl(object_store, "t.jsonl", _reviews(48, 0))},
        "validationDataConfig": {"s3Uri": _put_jsonl(object_store, "v.jsonl", validation_records)},
        "outputDataConfig": {"s3Uri": "s3://demo/output/"},
        "hyperParameters": {
            "epochCount": 1,
            "batchSize": 8,
            "learningRate": 0.005,
            "maxSequenceLength": 16,
            "method": "LORA",
            "loraRank": 4,
            "mergeAdapter": True,
        },
    }
    job = server.wait_for(_create(server, body), {"COMPLETED"}, timeout=300)
    metrics = job["progress"]["validationMetrics"]
    assert set(metrics) == {"accuracy", "precision", "recall", "f1"}, metrics
    assert all(0 <= value <= 1 for value in metrics.values()), metrics
    assert job["progress"]["validationLoss"] is not None

    # model/: the adapter, with the new classifier head saved beside the LoRA matrices.
    adapter_dir = _download(object_store, job["output"]["modelS3Uri"], tmp_path / "model")
    assert not (adapter_dir / "model.safetensors").exists()
    names = _tensor_names(adapter_dir / "adapter_model.safetensors")
    assert any("lora_A" in name for name in names), names
    assert any("classifier" in name for name in names), "the trained head is in the adapter"
    assert all("lora_" in name or "classifier" in name for name in names), names
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and adapter_config["r"] == 4

    # model/merged/: a plain classifier with the labels, equal to base + adapter.
    merged_dir = adapter_dir / "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    base_dir = _download(object_store, minilm_model, tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=2, id2label=merged.config.id2label, label2id=merged.config.label2id
    )
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    texts = [r["text"] for r in validation_records]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
        torch.testing.assert_close(
            merged(**inputs).logits, with_adapter(**inputs).logits, atol=1e-4, rtol=1e-4
        )
