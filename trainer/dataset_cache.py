"""The tokenized-dataset cache in the store, so a retried or resumed job does not tokenize
(nor validate) the same data again.

    s3://<state bucket>/cache/tokenized/<key>/<split>.<array>   the arrays
    s3://<state bucket>/cache/tokenized/<key>/meta.json         written last: the commit

The entry holds the files preflight wrote for the job (trainer/tokenized_data.py: flat
token arrays, an offsets index, meta.json with the label set, the validation summary
and the warnings), so a job served from the cache downloads them into its working
directory, maps them as the first job did, and reports what the first job reported.

`key` is the sha256 of everything the tokenized examples depend on: the datasets' URIs
and ETags (an overwritten file has a new ETag), a hash of the tokenizer's files (every
file of the model directory but the weights), the chat template, the effective
maxSequenceLength, the customization type and `FORMAT_VERSION` (bumped whenever the
tokenization, the checks or the layout change what they produce). Equal keys mean
equal results.

An entry is written only after the data passed every check; meta.json is written
create-if-absent after every array, so an entry without it is incomplete and unused,
and two jobs writing the same entry write the same bytes. A missing, incomplete or
unreadable entry means tokenizing again, never a failed job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from jobstore.errors import StoreUnavailable
from jobstore.storage import ObjectStore, PreconditionFailed, S3Location, StorageError
from trainer import tokenized_data
from trainer.tokenized_data import META, TokenizedData, open_tokenized

log = logging.getLogger(__name__)

FORMAT_VERSION = tokenized_data.FORMAT_VERSION
PREFIX = "cache/tokenized/"
WEIGHT_SUFFIXES = (".safetensors",)


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


class DatasetCache:
    def __init__(self, storage: ObjectStore, bucket: str) -> None:
        self.storage = storage
        self.bucket = bucket

    def location(self, key: str) -> S3Location:
        """The entry's folder."""
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")  # keys are sha256 hex digests
        return S3Location(self.bucket, f"{PREFIX}{key}/")

    def get(self, key: str, directory: Path) -> TokenizedData | None:
        """The entry downloaded into `directory` and opened, or None when there is none
        or it cannot be read (logged; `directory` is then emptied)."""
        folder = self.location(key)
        found = self.storage.get_bytes(folder.child(META))
        if found is None:
            return None
        try:
            meta = tokenized_data.TokenizedMeta.from_json(found[0])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring unreadable tokenized-data cache entry %s: %s", folder.uri, error)
            return None
        directory.mkdir(parents=True, exist_ok=True)
        try:
            for name, size in meta.expected_sizes().items():
                path = directory / name
                if size:
                    self.storage.download_file(folder.child(name), path)
                else:
                    path.write_bytes(b"")
            (directory / META).write_bytes(found[0])
        except (StorageError, StoreUnavailable) as error:
            log.warning("could not download tokenized-data cache entry %s: %s", folder.uri, error)
            shutil.rmtree(directory, ignore_errors=True)
            return None
        opened = open_tokenized(directory)
        if opened is None:
            log.warning(
                "ignoring tokenized-data cache entry %s: its files have other sizes", folder.uri
            )
            shutil.rmtree(directory, ignore_errors=True)
        return opened

    def put(self, key: str, directory: Path) -> S3Location:
        """Upload a committed directory as the entry unless it exists (another job
        wrote the same content first)."""
        folder = self.location(key)
        if self.storage.head(folder.child(META)) is not None:
            log.info("tokenized-data cache entry %s already written", folder.uri)
            return folder
        for name in tokenized_data.array_files():
            path = directory / name
            if path.stat().st_size:
                self.storage.upload_file(path, folder.child(name))
        try:
            self.storage.put_bytes(
                folder.child(META), (directory / META).read_bytes(), if_none_match=True
            )
        except PreconditionFailed:
            log.info("tokenized-data cache entry %s already written", folder.uri)
        return folder
