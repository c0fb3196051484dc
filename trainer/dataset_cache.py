"""The tokenized-dataset cache in the store, so a retried or resumed job does not tokenize
(nor validate) the same data again.

    s3://<state bucket>/cache/tokenized/<key>/examples.safetensors

`key` is the sha256 of everything the tokenized examples depend on: the datasets' URIs
and ETags (an overwritten file has a new ETag), a hash of the tokenizer's files (every
file of the model directory but the weights), the chat template, the effective
maxSequenceLength, the customization type and `FORMAT_VERSION` (bumped whenever the
tokenization or the checks change what they produce). Equal keys mean equal results.

An entry is written only after the data passed every check, once (create-if-absent),
and never changed. It holds the examples of each split as flat int32 tensors with
offsets (safetensors: no pickle), and in its metadata the label set, the validation
summary and the warnings, so a job served from the cache reports what the first did.
A missing or unreadable entry means tokenizing again, never a failed job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.documents import DataSummary
from service.storage import ObjectStore, PreconditionFailed, S3Location
from trainer.data import TokenizedExample

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREFIX = "cache/tokenized/"
SPLITS = ("training", "validation")
WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class CachedData:
    splits: dict[str, list[TokenizedExample]]
    labels: list[str] | None
    summary: DataSummary
    warnings: list[str]


def tokenizer_files_hash(model_dir: Path) -> str:
    """sha256 over the name and content of every file of the model directory except the
    weights: the tokenizer files, and the configs that can change tokenization."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix not in WEIGHT_SUFFIXES
    )
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(
    *,
    datasets: Sequence[tuple[str, str, str]],
    tokenizer_hash: str,
    chat_template: str | None,
    max_length: int,
    customization_type: str,
) -> str:
    """The entry's name; `datasets` holds (split, s3 URI, ETag) of each data file."""
    document = {
        "formatVersion": FORMAT_VERSION,
        "datasets": [list(entry) for entry in datasets],
        "tokenizer": tokenizer_hash,
        "chatTemplate": chat_template,
        "maxSequenceLength": max_length,
        "customizationType": customization_type,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _flatten(examples: Sequence[TokenizedExample], split: str) -> dict[str, torch.Tensor]:
    def offsets(lengths: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)

    return {
        f"{split}.input_ids": torch.tensor(
            [token for e in examples for token in e.input_ids], dtype=torch.int32
        ),
        f"{split}.input_offsets": offsets([len(e.input_ids) for e in examples]),
        f"{split}.labels": torch.tensor(
            [label for e in examples for label in e.labels], dtype=torch.int32
        ),
        f"{split}.label_offsets": offsets([len(e.labels) for e in examples]),
    }


def _unflatten(
    tensors: dict[str, torch.Tensor], split: str, classification: bool
) -> list[TokenizedExample]:
    input_ids = tensors[f"{split}.input_ids"].tolist()
    labels = tensors[f"{split}.labels"].tolist()
    input_offsets = tensors[f"{split}.input_offsets"].tolist()
    label_offsets = tensors[f"{split}.label_offsets"].tolist()
    return [
        TokenizedExample(
            input_ids[input_offsets[i] : input_offsets[i + 1]],
            labels[label_offsets[i] : label_offsets[i + 1]],
            classification=classification,
        )
        for i in range(len(input_offsets) - 1)
    ]


def encode(data: CachedData, classification: bool) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        tensors |= _flatten(data.splits.get(split, []), split)
    metadata = {
        "formatVersion": str(FORMAT_VERSION),
        "classification": json.dumps(classification),
        "labels": json.dumps(data.labels),
        "summary": data.summary.model_dump_json(),
        "warnings": json.dumps(data.warnings),
    }
    return bytes(save_safetensors(tensors, metadata=metadata))


def decode(body: bytes) -> CachedData:
    """The entry's content; raises ValueError if it is not one."""
    try:
        tensors = load_safetensors(body)
    except SafetensorError as error:
        raise ValueError(f"not a safetensors file: {error}") from error
    metadata = _metadata(body)
    if metadata.get("formatVersion") != str(FORMAT_VERSION):
        raise ValueError(f"format version {metadata.get('formatVersion')}")
    classification = bool(json.loads(metadata["classification"]))
    return CachedData(
        splits={split: _unflatten(tensors, split, classification) for split in SPLITS},
        labels=json.loads(metadata["labels"]),
        summary=DataSummary.model_validate_json(metadata["summary"]),
        warnings=list(json.loads(metadata["warnings"])),
    )


def _metadata(body: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file: an 8-byte little-endian header length,
    then the JSON header."""
    if len(body) < 8:
        raise ValueError("too short for a safetensors file")
    length = int.from_bytes(body[:8], "little")
    header: dict[str, Any] = json.loads(body[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


class DatasetCache:
    def __init__(self, storage: ObjectStore, bucket: str) -> None:
        self.storage = storage
        self.bucket = bucket

    def location(self, key: str) -> S3Location:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")  # keys are sha256 hex digests
        return S3Location(self.bucket, f"{PREFIX}{key}/examples.safetensors")

    def get(self, key: str) -> CachedData | None:
        """The entry, or None when there is none or it cannot be read (logged)."""
        location = self.location(key)
        found = self.storage.get_bytes(location)
        if found is None:
            return None
        try:
            return decode(found[0])
        except (ValueError, KeyError, TypeError) as error:
            log.warning(
                "ignoring unreadable tokenized-data cache entry %s: %s", location.uri, error
            )
            return None

    def put(self, key: str, data: CachedData, *, classification: bool) -> S3Location:
        """Write the entry unless it exists (another job wrote the same content first)."""
        location = self.location(key)
        try:
            self.storage.put_bytes(location, encode(data, classification), if_none_match=True)
        except PreconditionFailed:
            log.info("tokenized-data cache entry %s already written", location.uri)
        return location
