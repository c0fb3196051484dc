"""The demo assets: deterministic, complete, and seeded once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jobstore.storage import ObjectStore, S3Location
from service.server.demo import (
    MODEL_PREFIX,
    TRAIN_KEY,
    VALIDATION_KEY,
    build_demo_model,
    demo_datasets,
    seed_demo,
)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_building_twice_gives_the_same_files(demo_model_dir: Path, tmp_path: Path) -> None:
    build_demo_model(tmp_path / "again")
    assert digests(tmp_path / "again") == digests(demo_model_dir)
    assert set(digests(demo_model_dir)) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_datasets_are_deterministic_disjoint_prompt_completion_records() -> None:
    train, validation = demo_datasets()
    assert (train, validation) == demo_datasets()
    train_records = [json.loads(line) for line in train.splitlines()]
    validation_records = [json.loads(line) for line in validation.splitlines()]
    assert len(train_records) == 300 and len(validation_records) == 50
    for record in train_records + validation_records:
        assert set(record) == {"prompt", "completion"}
        assert record["prompt"].endswith("\nAnswer:") and record["completion"].startswith(" ")
    assert not {json.dumps(r) for r in train_records} & {json.dumps(r) for r in validation_records}


def test_vocabulary_matches_the_tokenizer_and_the_model_loads(demo_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert model.config.eos_token_id == tokenizer.eos_token_id


def test_seed_demo_uploads_once(object_store: ObjectStore) -> None:
    bucket = "demo-seed-test"
    seed_demo(object_store, bucket)
    keys = {item["key"] for item in object_store.list_objects(S3Location(bucket, ""))}
    assert {TRAIN_KEY, VALIDATION_KEY, MODEL_PREFIX + "config.json"} <= keys
    assert MODEL_PREFIX + "model.safetensors" in keys
    assert MODEL_PREFIX + "tokenizer.json" in keys
    # A second call finds the assets and leaves them alone.
    before = {
        item["key"]: item["etag"] for item in object_store.list_objects(S3Location(bucket, ""))
    }
    object_store.delete(S3Location(bucket, TRAIN_KEY))
    seed_demo(object_store, bucket)
    after = {
        item["key"]: item["etag"] for item in object_store.list_objects(S3Location(bucket, ""))
    }
    assert after == {k: v for k, v in before.items() if k != TRAIN_KEY}
