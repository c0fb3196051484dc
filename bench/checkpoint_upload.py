"""Checkpoint upload: tuneforge's upload of a checkpoint folder beside raw boto3, same store.

Starts a real SeaweedFS on loopback and writes a folder shaped like a full fine-tuning
checkpoint (trainer/checkpoint.py) of a model with `--parameters` parameters: the weights
(bf16, 2 bytes a parameter, in two safetensors files), the optimizer state (AdamW's two
fp32 moments, 8 bytes a parameter), and the small files (config, tokenizer, scheduler,
RNG and trainer state, metrics, manifest). Then uploads it, `--runs` times each, in turns:

- tuneforge: `ObjectStore.upload_directory`, what a trainer calls to commit a checkpoint;
- boto3, file after file: `client.upload_file` for each file in turn (multipart for the
  large ones, boto3's default TransferConfig);
- boto3, all files at once: one s3transfer TransferManager given every file (the same
  default TransferConfig: 10 threads, 8 MiB parts), as `aws s3 cp --recursive` does.

- boto3 with the client settings ObjectStore uses (64 connections, checksums only where
  required), all files at once: what the client's settings, not the way, account for.

Prints each run and the medians in MB/s, and tuneforge's median as a share of each other
way's (the aim: at least 0.9x of raw boto3's).

    make bench-checkpoint-upload   # or: .venv/bin/python bench/checkpoint_upload.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobstore.storage import ObjectStore, S3Location
from service.server.embedded_s3 import EmbeddedS3, free_port

_SMALL_FILES = {
    "config.json": 1_000,
    "generation_config.json": 200,
    "tokenizer.json": 2_000_000,
    "tokenizer_config.json": 5_000,
    "scheduler.pt": 1_500,
    "rng_state.safetensors": 6_000,
    "trainer_state.json": 3_000,
    "metrics/train.csv": 40_000,
    "metrics/validation.csv": 4_000,
    "manifest.json": 500,
}


def write_checkpoint(folder: Path, parameters: int) -> int:
    """A checkpoint-shaped folder; returns its size in bytes."""
    weights = 2 * parameters
    sizes = {
        "model-00001-of-00002.safetensors": weights // 2,
        "model-00002-of-00002.safetensors": weights - weights // 2,
        "optimizer.pt": 8 * parameters,
        **_SMALL_FILES,
    }
    block = os.urandom(1 << 20)  # random, so no layer on the way can compress it
    for name, size in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as output:
            left = size
            while left > 0:
                output.write(block[: min(left, len(block))])
                left -= len(block)
    return sum(sizes.values())


def _files(folder: Path) -> list[tuple[Path, str]]:
    return [
        (path, path.relative_to(folder).as_posix())
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--parameters", type=float, default=25e6, help="model size (default 25M: 250 MB)"
    )
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        s3 = EmbeddedS3(
            root / "s3", port=free_port(), access_key_id="bench", secret_access_key="bench-secret"
        )
        s3.start()
        try:
            folder = root / "step-100"
            total = write_checkpoint(folder, int(arguments.parameters))
            credentials = {
                "endpoint_url": s3.endpoint_url,
                "aws_access_key_id": "bench",
                "aws_secret_access_key": "bench-secret",
                "region_name": "us-east-1",
            }
            ours = ObjectStore(
                endpoint_url=s3.endpoint_url,
                access_key_id="bench",
                secret_access_key="bench-secret",
                region="us-east-1",
            )
            bucket = "bench-checkpoints"
            ours.ensure_bucket(bucket)
            # boto3 as a user would make it (its defaults: 10 connections, a CRC32
            # checksum on every request) and with the settings ObjectStore gives its client
            # (64 connections, checksums only where required), to tell the way of
            # uploading from the client's settings.
            client = boto3.client("s3", config=Config(signature_version="s3v4"), **credentials)
            configured = boto3.client(
                "s3",
                config=Config(
                    max_pool_connections=64,
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
                **credentials,
            )
            files = _files(folder)

            def tuneforge(prefix: str) -> None:
                ours.upload_directory(folder, S3Location(bucket, prefix))

            def file_after_file(prefix: str) -> None:
                for path, name in files:
                    client.upload_file(str(path), bucket, prefix + name)

            def all_at_once(prefix: str, client: Any = client) -> None:
                with create_transfer_manager(client, TransferConfig()) as manager:
                    uploads = [
                        manager.upload(str(path), bucket, prefix + name) for path, name in files
                    ]
                    for upload in uploads:
                        upload.result()

            ways: dict[str, Callable[[str], None]] = {
                "tuneforge upload_directory": tuneforge,
                "boto3, file after file": file_after_file,
                "boto3, all files at once": all_at_once,
                "boto3 with ObjectStore's client settings, all files at once": (
                    lambda prefix: all_at_once(prefix, configured)
                ),
            }
            print(
                f"checkpoint of {arguments.parameters / 1e6:.0f}M parameters: {len(files)} "
                f"files, {total / 1e6:.0f} MB; SeaweedFS on loopback; {arguments.runs} runs"
            )
            rates: dict[str, list[float]] = {name: [] for name in ways}
            for run in range(arguments.runs):
                # In turns, the order rotated, so no way always goes first on a warm store.
                order = list(ways)[run % len(ways) :] + list(ways)[: run % len(ways)]
                for name in order:
                    prefix = f"run-{run}-{uuid.uuid4().hex[:6]}/"
                    started = time.perf_counter()
                    ways[name](prefix)
                    seconds = time.perf_counter() - started
                    uploaded = sum(
                        item["size"] for item in ours.list_objects(S3Location(bucket, prefix))
                    )
                    assert uploaded == total, (name, uploaded, total)  # every byte arrived
                    rate = total / seconds / 1e6
                    rates[name].append(rate)
                    print(f"  run {run + 1}, {name}: {seconds:.2f} s, {rate:.0f} MB/s")
            medians = {name: statistics.median(values) for name, values in rates.items()}
            print("\nmedian MB/s:")
            for name, rate in medians.items():
                print(f"  {name}: {rate:.0f}")
            our_rate = medians.pop("tuneforge upload_directory")
            for name, rate in medians.items():
                print(f"tuneforge / {name}: {our_rate / rate:.2f}x")
            return 0
        finally:
            s3.stop()


if __name__ == "__main__":
    sys.exit(main())
