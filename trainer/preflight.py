"""Preflight: every record of the training and validation data checked, then tokenized,
before any model weights are loaded (state VALIDATING, CPU only).

Phase 1 needs no model: the files, JSON, schemas, empty fields, the order of conversation
roles, one format per file, the label set (CLASSIFICATION). The base model is downloaded
and checked meanwhile, in a background thread; a malformed dataset fails whatever the
model. Then only the tokenizer (and config.json, for its position limit) is loaded.
Phase 2 counts the tokens: a record with nothing left to learn within maxSequenceLength
is an error.

Problems are collected, not stopped at the first: the job fails with reason
DATA_VALIDATION and a message listing the first 20 as `s3://bucket/key:LINE: what is
wrong`, with the total count. Warnings do not fail the job; each kind is one
VALIDATION_WARNING job event: records that will be truncated, duplicate records,
validation records that are also in the training data.

Bounds (constants here; README.md, "Data formats"):

    MAX_DATASET_BYTES  1 GiB per data file (checked before downloading it)
    MAX_RECORDS        1,000,000 records per data file
    maxSequenceLength  8-32768 (HyperParameters), and at most the model's positions
                       (config.json max_position_embeddings)

The result (tokenized examples, label set, summary, warnings) is cached in the store
(trainer/dataset_cache.py); a job whose data, tokenizer and settings match a cached
entry skips tokenization.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.documents import DataSummary, JobSpec, TokenLengths
from service.errors import InvalidArgument, StoreUnavailable
from service.storage import ObjectStore, StorageError, parse_s3_uri
from trainer import conversations, data, tokenization
from trainer.data import IGNORE_INDEX, Example, TokenizedExample, ValidationErrors
from trainer.dataset_cache import CachedData, DatasetCache, cache_key, tokenizer_files_hash
from trainer.errors import DataValidationError, ModelLoadError
from trainer.model import check_model_directory, download_model
from trainer.reporting import Reporter

log = logging.getLogger(__name__)

WARNING_EVENT = "VALIDATION_WARNING"
MAX_DATASET_BYTES = 1 << 30
MAX_RECORDS = 1_000_000
LINES_NAMED_IN_A_WARNING = 10


@dataclass(frozen=True)
class PreparedData:
    training: list[TokenizedExample]
    validation: list[TokenizedExample]
    labels: list[str] | None  # CLASSIFICATION: class id -> label
    max_length: int  # maxSequenceLength, capped at the model's positions
    summary: DataSummary
    warnings: list[str]
    from_cache: bool


@dataclass(frozen=True)
class DataFile:
    split: str  # "training" or "validation"
    uri: str
    etag: str


# -- the tokenizer and the sequence length -------------------------------------------


def load_tokenizer(model_dir: Path, uri: str) -> Any:
    """The base model's tokenizer, from a directory model.check_model_directory passed."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(
            f"could not load the tokenizer of base model {uri}: {type(error).__name__}: {error}"
        ) from error


def effective_max_length(model_dir: Path, max_sequence_length: int) -> int:
    """maxSequenceLength, capped at the positions the model has (past them a model with
    learned position embeddings fails deep in a kernel). Read from config.json."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return max_sequence_length  # check_model_directory reports a bad config
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(limit, int) and 0 < limit < max_sequence_length:
        log.warning(
            "maxSequenceLength %d is more than the model's %d positions; using %d",
            max_sequence_length,
            limit,
            limit,
        )
        return limit
    return max_sequence_length


class ModelFetch:
    """Imports transformers, downloads the base model and checks it, in a background
    thread, while phase 1 reads the data. `result()` waits for it and raises what it
    raised. The thread is a daemon: a job that fails on its data does not wait for the
    download (the launcher's working directory, with what was downloaded, goes with it)."""

    def __init__(self, storage: ObjectStore, uri: str, model_dir: Path) -> None:
        self.storage = storage
        self.uri = uri
        self.model_dir = model_dir
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="model-fetch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _fetch(self) -> None:
        try:
            import transformers  # noqa: F401  (seconds to import: overlap it with phase 1 too)

            download_model(self.storage, self.uri, self.model_dir)
            check_model_directory(self.model_dir, self.uri)
        except BaseException as error:  # handed to the caller by result()
            self._error = error

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


# -- the files -----------------------------------------------------------------------


def data_files(spec: JobSpec, storage: ObjectStore, errors: ValidationErrors) -> list[DataFile]:
    """The training and validation files with their ETags; a missing or too large file
    is an error."""
    sources = [("training", spec.trainingDataConfig.s3Uri)]
    if spec.validationDataConfig is not None:
        sources.append(("validation", spec.validationDataConfig.s3Uri))
    files = []
    for split, uri in sources:
        try:
            location = parse_s3_uri(uri, field=f"{split}DataConfig.s3Uri")
        except InvalidArgument as error:
            errors.add(uri, error.message)
            continue
        head = storage.head(location)
        if head is None:
            errors.add(uri, f"{split} data {uri} does not exist")
            continue
        size = int(head.get("ContentLength", 0))
        if size > MAX_DATASET_BYTES:
            errors.add(
                uri,
                f"the {split} data is {size:,} bytes; a data file may have at most "
                f"{MAX_DATASET_BYTES:,} bytes (1 GiB)",
            )
            continue
        files.append(DataFile(split, uri, str(head.get("ETag", ""))))
    return files


def read_files(
    files: Sequence[DataFile],
    storage: ObjectStore,
    customization_type: str,
    directory: Path,
    errors: ValidationErrors,
) -> dict[str, list[Example]]:
    loaded: dict[str, list[Example]] = {"training": [], "validation": []}
    for file in files:
        path = directory / f"{file.split}.jsonl"
        storage.download_file(parse_s3_uri(file.uri, field="s3Uri"), path)
        loaded[file.split] = data.read_jsonl(
            path, file.uri, customization_type, errors, max_records=MAX_RECORDS
        )
        log.info("read %d %s records from %s", len(loaded[file.split]), file.split, file.uri)
    return loaded


# -- token lengths and tokenization ---------------------------------------------------


@dataclass
class Tokenized:
    examples: list[TokenizedExample]
    lengths: list[int]  # tokens of each record before truncation
    truncated: list[str]  # where each truncated record is


def _tokenize_fine_tuning(
    examples: Sequence[Example], tokenizer: Any, max_length: int, errors: ValidationErrors
) -> Tokenized:
    result = Tokenized([], [], [])
    encoded = tokenization.encode_fine_tuning(examples, tokenizer) if examples else []
    for example, (input_ids, labels) in zip(examples, encoded, strict=True):
        result.lengths.append(len(input_ids))
        kept = tokenization.truncate(input_ids, labels, max_length)
        if kept is None:
            first_target = next(
                (i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
            )
            what = "the first assistant turn" if example.messages else "the completion"
            errors.add(
                example.where,
                f"{what} starts at token {first_target + 1} (counted with the base model's "
                f"tokenizer), past maxSequenceLength {max_length}: nothing of it would be "
                "learned; shorten the prompt or raise maxSequenceLength",
            )
            continue
        if len(input_ids) > max_length:
            result.truncated.append(example.where)
        result.examples.append(kept)
    return result


def _tokenize_documents(examples: Sequence[Example], tokenizer: Any, max_length: int) -> Tokenized:
    """Documents are split into chunks, never truncated: only their lengths are noted.
    Each is tokenized once; its lengths and chunks come from the same token ids."""
    documents = tokenization.encode_documents(examples, tokenizer)
    lengths = [len(ids) for ids in documents]
    return Tokenized(tokenization.chunk_documents(documents, max_length), lengths, [])


def _tokenize_classification(
    examples: Sequence[Example], tokenizer: Any, max_length: int, labels: Sequence[str]
) -> Tokenized:
    """Each text tokenized once: its length and its truncated tokens come from one pass."""
    tokenized, lengths = tokenization.encode_classification(examples, tokenizer, max_length, labels)
    truncated = [e.where for e, n in zip(examples, lengths, strict=True) if n > max_length]
    return Tokenized(tokenized, lengths, truncated)


def percentiles(lengths: Sequence[int]) -> TokenLengths | None:
    """Nearest-rank percentiles: p of the records are at most that long."""
    if not lengths:
        return None
    ordered = sorted(lengths)

    def rank(p: int) -> int:
        return ordered[max(0, -(-p * len(ordered) // 100) - 1)]

    return TokenLengths(p50=rank(50), p90=rank(90), p99=rank(99), max=ordered[-1])


# -- warnings ------------------------------------------------------------------------


def _content(example: Example) -> tuple[Any, ...]:
    """What makes two records the same record, whatever their JSON key order."""
    return (example.prompt, example.completion, example.label, example.messages)


def _lines(places: Sequence[str]) -> str:
    named = ", ".join(places[:LINES_NAMED_IN_A_WARNING])
    return named + (", ..." if len(places) > LINES_NAMED_IN_A_WARNING else "")


def find_warnings(
    loaded: dict[str, list[Example]], truncated: Sequence[str], max_length: int
) -> list[str]:
    warnings = []
    if truncated:
        warnings.append(
            f"{len(truncated)} record{'s are' if len(truncated) != 1 else ' is'} longer than "
            f"maxSequenceLength {max_length} tokens and will be truncated: {_lines(truncated)}"
        )
    for split, examples in loaded.items():
        first_seen: dict[tuple[Any, ...], str] = {}
        duplicates = []
        for example in examples:
            key = _content(example)
            if key in first_seen:
                duplicates.append(f"{example.where} (same as line {first_seen[key]})")
            else:
                first_seen[key] = example.where.rsplit(":", 1)[-1]
        if duplicates:
            warnings.append(
                f"{len(duplicates)} duplicate {split} record"
                f"{'s' if len(duplicates) != 1 else ''}: {_lines(duplicates)}"
            )
    training = {_content(e) for e in loaded["training"]}
    overlap = [e.where for e in loaded["validation"] if _content(e) in training]
    if overlap:
        warnings.append(
            f"{len(overlap)} validation record{'s are' if len(overlap) != 1 else ' is'} also "
            f"in the training data, so the validation loss overstates quality: {_lines(overlap)}"
        )
    return warnings


# -- the whole check -----------------------------------------------------------------


def _label_distribution(examples: Sequence[Example], labels: list[str] | None) -> dict[str, int]:
    """Training records per label, in class-id order; empty unless classification."""
    if labels is None:
        return {}
    counts = Counter(e.label for e in examples)
    return {label: counts[label] for label in labels}


@dataclass(frozen=True)
class CheckedRecords:
    """Phase 1's result: every record parsed and schema-checked, no tokenizer needed."""

    files: list[DataFile]
    loaded: dict[str, list[Example]]
    labels: list[str] | None


def check_records(
    spec: JobSpec, *, storage: ObjectStore, directory: Path, errors: ValidationErrors
) -> CheckedRecords:
    """Phase 1: the files exist and are within bounds, every record is well-formed, the
    labels agree; raise DataValidationError listing the problems if there are any."""
    data.check_customization_type(spec.customizationType)
    kind = spec.customizationType
    files = data_files(spec, storage, errors)
    loaded = read_files(files, storage, kind, directory, errors)
    labels = None
    if kind == data.CLASSIFICATION and not errors.total:
        labels = data.label_set(loaded["training"], loaded["validation"], errors)
    if errors.total:
        raise DataValidationError(errors.message())
    return CheckedRecords(files, loaded, labels)


def tokenize_checked(
    spec: JobSpec,
    checked: CheckedRecords,
    *,
    tokenizer: Any,
    max_length: int,
    errors: ValidationErrors,
) -> CachedData:
    """Phase 2: tokenize every record with the base model's tokenizer, check the lengths
    against maxSequenceLength, summarize and find the warnings."""
    kind, loaded, labels = spec.customizationType, checked.loaded, checked.labels
    tokenized: dict[str, Tokenized] = {}
    for split, examples in loaded.items():
        if kind == data.FINE_TUNING:
            tokenized[split] = _tokenize_fine_tuning(examples, tokenizer, max_length, errors)
        elif kind == data.CONTINUED_PRE_TRAINING:
            tokenized[split] = _tokenize_documents(examples, tokenizer, max_length)
        else:
            assert labels is not None
            tokenized[split] = _tokenize_classification(examples, tokenizer, max_length, labels)
    if errors.total:
        raise DataValidationError(errors.message())
    if not tokenized["training"].examples:
        raise DataValidationError(f"{spec.trainingDataConfig.s3Uri}: no tokens to train on")

    truncated = tokenized["training"].truncated + tokenized["validation"].truncated
    summary = DataSummary(
        trainingRecords=len(loaded["training"]),
        validationRecords=len(loaded["validation"]),
        tokenLengths=percentiles(tokenized["training"].lengths),
        truncatedRecords=len(truncated),
        labelDistribution=_label_distribution(loaded["training"], labels),
    )
    return CachedData(
        splits={split: t.examples for split, t in tokenized.items()},
        labels=labels,
        summary=summary,
        warnings=find_warnings(loaded, truncated, max_length),
    )


def run_preflight(
    spec: JobSpec,
    *,
    storage: ObjectStore,
    reporter: Reporter,
    model_dir: Path,
    directory: Path,
) -> PreparedData:
    """Check and tokenize the job's data, record the summary in the job's status and the
    warnings as events, and return the examples.

    Phase 1 needs no model. Meanwhile a background thread imports transformers and
    downloads the base model into `model_dir` and checks it (model.check_model_directory):
    start latency is the longer of the two, not their sum. A data problem is reported
    first, whatever the model; a model problem only once the data passed phase 1. Then
    only the tokenizer and config.json are read; phase 2 tokenizes, unless the cache
    holds this data tokenized the same way."""
    errors = ValidationErrors()
    model = ModelFetch(storage, spec.baseModelIdentifier, model_dir)
    model.start()
    checked = check_records(spec, storage=storage, directory=directory, errors=errors)
    log.info("every record is well-formed; counting tokens with the base model's tokenizer")

    model.result()
    tokenizer = load_tokenizer(model_dir, spec.baseModelIdentifier)
    if tokenizer.eos_token_id is None and spec.customizationType != data.CLASSIFICATION:
        raise ModelLoadError(
            f"base model {spec.baseModelIdentifier}: the tokenizer has no end-of-sequence token"
        )
    max_length = effective_max_length(model_dir, spec.hyperParameters.maxSequenceLength)
    template = (
        conversations.chat_template_of(tokenizer)
        if spec.customizationType == data.FINE_TUNING
        else None
    )
    cache = DatasetCache(storage, reporter.store.bucket)
    key = cache_key(
        datasets=[(f.split, f.uri, f.etag) for f in checked.files],
        tokenizer_hash=tokenizer_files_hash(model_dir),
        chat_template=template,
        max_length=max_length,
        customization_type=spec.customizationType,
    )
    prepared = cache.get(key)
    from_cache = prepared is not None
    if prepared is not None:
        log.info("tokenized data from cache %s", cache.location(key).uri)
    else:
        prepared = tokenize_checked(
            spec, checked, tokenizer=tokenizer, max_length=max_length, errors=errors
        )
        try:
            location = cache.put(
                key, prepared, classification=spec.customizationType == data.CLASSIFICATION
            )
            log.info("tokenized data cached in %s", location.uri)
        except (StorageError, StoreUnavailable) as error:
            # The cache saves a later job time; this job has its data and goes on.
            log.warning("could not cache the tokenized data: %s", error.message)

    summary = prepared.summary
    reporter.set_data_summary(summary)
    for warning in prepared.warnings:
        log.warning("data: %s", warning)
        reporter.event(WARNING_EVENT, warning)
    reporter.event(
        "DATA_VALIDATED",
        f"{summary.trainingRecords} training and {summary.validationRecords} validation "
        f"records{' (tokenized data from cache)' if from_cache else ''}",
    )
    return PreparedData(
        training=prepared.splits["training"],
        validation=prepared.splits["validation"],
        labels=prepared.labels,
        max_length=max_length,
        summary=summary,
        warnings=prepared.warnings,
        from_cache=from_cache,
    )
