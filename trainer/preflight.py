"""Preflight: every record of the training and validation data checked, then tokenized,
before any model weights are loaded (state VALIDATING, CPU only).
Long because both phases and their progress share one stream of the data.

Phase 1 needs no model: the files, JSON, schemas, empty fields, the order of conversation
roles, one format per file, the label set (CLASSIFICATION). The base model is downloaded
and checked meanwhile, in a background thread; a malformed dataset fails whatever the
model. Then only the tokenizer (and config.json, for its position limit) is loaded.
Phase 2 counts the tokens: a record with nothing left to learn within maxSequenceLength
is an error.

Both phases stream: the data file is downloaded to the job's directory and read line by
line, never whole. Phase 1 keeps per record only a fixed-size hash of its content (for
duplicates and train/validation overlap) and its line; phase 2 reads the file again,
tokenizes records in batches with the fast tokenizer's batch call (in Rust, on every
core) and appends their tokens straight to flat arrays on disk
(trainer/tokenized_data.py), which training maps. No per-record Python object outlives
its batch, so memory stays flat however many records a file has.

Problems are collected, not stopped at the first: the job fails with reason
DATA_VALIDATION and a message listing the first 20 as `s3://bucket/key:LINE: what is
wrong`, with the total count. Warnings do not fail the job; each kind is one
VALIDATION_WARNING job event: records that will be truncated, duplicate records,
validation records that are also in the training data.

Bounds (constants here; docs/data.md, "Data checks"):

    MAX_DATASET_BYTES  1 GiB per data file (checked before downloading it)
    MAX_RECORDS        1,000,000 records per data file
    maxSequenceLength  8-32768 (HyperParameters), and at most the model's positions
                       (config.json max_position_embeddings)

The result (the token arrays, label set, summary, warnings) is cached in the store
(trainer/dataset_cache.py); a job whose data, tokenizer and settings match a cached
entry downloads the arrays instead of tokenizing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jobstore.documents import DataCheck, DataSummary, JobSpec, TokenLengths
from jobstore.errors import InvalidArgument, StoreUnavailable
from jobstore.storage import ObjectStore, StorageError, parse_s3_uri
from trainer import conversations, data, tokenization, tokenized_data
from trainer.data import IGNORE_INDEX, Example, TokenizedExample, ValidationErrors
from trainer.dataset_cache import DatasetCache, cache_key, tokenizer_files_hash
from trainer.errors import DataValidationError, ModelLoadError
from trainer.model import check_model_directory, download_model
from trainer.reporting import Reporter
from trainer.tokenized_data import SplitWriter, TokenizedData, TokenizedMeta, TokenizedSplit

log = logging.getLogger(__name__)

WARNING_EVENT = "VALIDATION_WARNING"
MAX_DATASET_BYTES = 1 << 30
MAX_RECORDS = 1_000_000
LINES_NAMED_IN_A_WARNING = 10
# Records tokenized per call of the tokenizer: large enough that its Rust threads stay
# busy, small enough that a batch's Python objects (~40 bytes a token) stay megabytes.
TOKENIZE_BATCH_RECORDS = 4096
# Preflight's progress (progress.dataCheck) is published every this many records of
# phase 1 and after every batch of phase 2: a change in memory the heartbeat writes.
PROGRESS_RECORDS = 1024


@dataclass(frozen=True)
class PreparedData:
    training: TokenizedSplit
    validation: TokenizedSplit
    labels: list[str] | None  # CLASSIFICATION: class id -> label
    max_length: int  # maxSequenceLength, capped at the model's positions
    summary: DataSummary
    warnings: list[str]
    from_cache: bool
    cache_key: str  # names the tokenized data: other ranks find it by this
    cache_upload: threading.Thread | None = None  # writing the cache entry, if still busy


@dataclass(frozen=True)
class DataFile:
    split: str  # "training" or "validation"
    uri: str
    etag: str
    size: int = 0  # bytes


class CheckProgress:
    """Preflight's progress as the job shows it (progress.dataCheck, written by the next
    heartbeat): the phase, bytes and records done, the rate."""

    def __init__(self, reporter: Reporter | None, bytes_total: int) -> None:
        self.reporter = reporter
        self.bytes_total = bytes_total
        self.phase: Literal["checking", "tokenizing"] = "checking"
        self._done_bytes = 0  # of the files this phase finished
        self._done_records = 0
        self._started = time.monotonic()

    def start(self, phase: Literal["checking", "tokenizing"]) -> None:
        self.phase = phase
        self._done_bytes = self._done_records = 0
        self._started = time.monotonic()
        self.update(0, 0)

    def update(self, file_bytes: int, file_records: int) -> None:
        """Where this phase is in its current file: bytes read, records done."""
        if self.reporter is None:
            return
        now = time.monotonic()
        records = self._done_records + file_records
        elapsed = now - self._started
        self.reporter.set_data_check(
            DataCheck(
                phase=self.phase,
                bytesDone=self._done_bytes + file_bytes,
                bytesTotal=self.bytes_total,
                recordsDone=records,
                recordsPerSecond=round(records / elapsed, 1) if records and elapsed else None,
            )
        )

    def file_done(self, file_bytes: int, file_records: int) -> None:
        self._done_bytes += file_bytes
        self._done_records += file_records
        self.update(0, 0)


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
        files.append(DataFile(split, uri, str(head.get("ETag", "")), size))
    return files


# -- phase 1: every record checked, a hash of each kept -------------------------------


class RecordHashes:
    """A fixed-size hash of each record's content and its line, for one file: what finds
    duplicate records and validation records also in the training data, at 16 bytes a
    record instead of the record. 64-bit BLAKE2b: a chance collision among a million
    records is about 1 in 36 million (and only ever shows as a wrong warning)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._hashes = array("Q")
        self._lines = array("q")

    def add(self, example: Example) -> None:
        parts: tuple[Any, ...] = (
            example.prompt,
            example.completion,
            example.label,
            example.messages,
        )
        if example.rejected is not None or example.rejected_messages is not None:
            parts += (example.rejected, example.rejected_messages)  # a preference record
        content = repr(parts)
        digest = hashlib.blake2b(content.encode("utf-8"), digest_size=8).digest()
        self._hashes.append(int.from_bytes(digest, "little"))
        self._lines.append(int(example.where.rsplit(":", 1)[-1]))

    def __len__(self) -> int:
        return len(self._hashes)

    def hashes(self) -> np.ndarray[Any, Any]:
        return (
            np.frombuffer(self._hashes, dtype=np.uint64) if self._hashes else np.empty(0, np.uint64)
        )

    def lines(self) -> np.ndarray[Any, Any]:
        return np.frombuffer(self._lines, dtype=np.int64) if self._lines else np.empty(0, np.int64)

    def duplicates(self) -> tuple[int, list[str]]:
        """How many records repeat an earlier one, and the first few, in file order, as
        `uri:LINE (same as line FIRST)`."""
        hashes, lines = self.hashes(), self.lines()
        if len(hashes) < 2:
            return 0, []
        order = np.argsort(hashes, kind="stable")  # equal hashes keep file order
        ordered = hashes[order]
        starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        group_start = np.maximum.accumulate(np.where(starts_group, np.arange(len(order)), 0))
        repeats = order[~starts_group]
        firsts = order[group_start[~starts_group]]
        in_file_order = np.argsort(repeats, kind="stable")[:LINES_NAMED_IN_A_WARNING]
        named = [
            f"{self.uri}:{lines[repeats[i]]} (same as line {lines[firsts[i]]})"
            for i in in_file_order
        ]
        return len(repeats), named

    def also_in(self, other: RecordHashes) -> tuple[int, list[str]]:
        """How many of these records `other` has too, and the first few, as `uri:LINE`."""
        found = np.flatnonzero(np.isin(self.hashes(), other.hashes()))
        lines = self.lines()
        return len(found), [f"{self.uri}:{lines[i]}" for i in found[:LINES_NAMED_IN_A_WARNING]]


@dataclass
class CheckedFile:
    """Phase 1's result for one file: downloaded, every record well-formed."""

    file: DataFile
    path: Path
    hashes: RecordHashes
    label_counts: Counter[str] = field(default_factory=Counter)

    @property
    def records(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True)
class CheckedRecords:
    """Phase 1's result: every record parsed and schema-checked, no tokenizer needed."""

    files: list[CheckedFile]
    labels: list[str] | None

    def split(self, name: str) -> CheckedFile | None:
        return next((checked for checked in self.files if checked.file.split == name), None)


def _check_file(
    checked: CheckedFile,
    customization_type: str,
    errors: ValidationErrors,
    progress: CheckProgress | None = None,
) -> None:
    """Read the file once, line by line: problems into `errors`, a hash of each record
    (and its label) into `checked`."""
    progress = progress or CheckProgress(None, 0)
    position = data.ReadPosition()
    records = data.iter_jsonl(
        checked.path,
        checked.file.uri,
        customization_type,
        errors,
        max_records=MAX_RECORDS,
        position=position,
    )
    for example in records:
        checked.hashes.add(example)
        if example.label is not None:
            checked.label_counts[example.label] += 1
        if len(checked.hashes) % PROGRESS_RECORDS == 0:
            progress.update(position.bytes_read, len(checked.hashes))
    progress.file_done(position.bytes_read, len(checked.hashes))
    log.info("checked %d %s records of %s", checked.records, checked.file.split, checked.file.uri)


def _check_labels(checked: list[CheckedFile], errors: ValidationErrors) -> list[str]:
    """The sorted labels of the training data (index = class id); a validation label the
    training data never has is an error naming its line, which takes the validation
    file read again (labels only)."""
    training = next(c for c in checked if c.file.split == "training")
    labels = sorted(training.label_counts, key=data._label_order)
    known = set(labels)
    shown = ", ".join(json.dumps(label) for label in labels[:20])
    for other in checked:
        if other.file.split != "validation" or set(other.label_counts) <= known:
            continue
        for example in data.iter_jsonl(
            other.path, other.file.uri, data.CLASSIFICATION, ValidationErrors()
        ):
            if example.label not in known:
                errors.add(
                    example.where,
                    f"label {json.dumps(example.label)} is not a label of the training data "
                    f"(those are {shown}{', ...' if len(labels) > 20 else ''})",
                )
    if training.records and len(labels) < 2:
        errors.add(
            training.file.uri,
            f"classification needs at least two labels; the training data has only {shown}",
        )
    return labels


def check_records(
    spec: JobSpec,
    *,
    storage: ObjectStore,
    directory: Path,
    errors: ValidationErrors,
    reporter: Reporter | None = None,
) -> tuple[CheckedRecords, CheckProgress]:
    """Phase 1: the files exist and are within bounds, every record is well-formed, the
    labels agree; raise DataValidationError listing the problems if there are any.
    Progress goes to `reporter` (and on to phase 2 through the CheckProgress)."""
    checked, progress = read_records(
        spec, storage=storage, directory=directory, errors=errors, reporter=reporter
    )
    if errors.total:
        raise DataValidationError(errors.message())
    return checked, progress


def read_records(
    spec: JobSpec,
    *,
    storage: ObjectStore,
    directory: Path,
    errors: ValidationErrors,
    reporter: Reporter | None = None,
) -> tuple[CheckedRecords, CheckProgress]:
    """Phase 1 without the verdict: every problem into `errors`, the well-formed records'
    hashes and labels kept (check_records raises on the problems; a dry run reports
    them)."""
    data.check_customization_type(spec.customizationType)
    kind = spec.customizationType
    files = data_files(spec, storage, errors)
    progress = CheckProgress(reporter, sum(file.size for file in files))
    progress.start("checking")
    checked = []
    for file in files:
        path = directory / f"{file.split}.jsonl"
        storage.download_file(parse_s3_uri(file.uri, field="s3Uri"), path)
        one = CheckedFile(file, path, RecordHashes(file.uri))
        _check_file(one, kind, errors, progress)
        checked.append(one)
    labels = None
    if kind == data.CLASSIFICATION and not errors.total:
        labels = _check_labels(checked, errors)
    return CheckedRecords(checked, labels), progress


# -- phase 2: tokenized, batch by batch, into the arrays ------------------------------


@dataclass
class Tokenized:
    examples: list[TokenizedExample]
    lengths: list[int]  # tokens of each record before truncation
    truncated: list[str]  # where each truncated record is
    flat: tokenization.FlatPairs | None = None  # the examples, flat (prompt/completion)


def _tokenize_fine_tuning(
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int,
    errors: ValidationErrors,
    *,
    last_turn_only: bool = False,
    answer: str | None = None,
) -> Tokenized:
    if isinstance(tokenizer, tokenization.BatchTokenizer) and all(
        e.messages is None for e in examples
    ):
        return _tokenize_pairs(examples, tokenizer, max_length, errors, answer=answer)
    result = Tokenized([], [], [])
    encoded = (
        tokenization.encode_fine_tuning(examples, tokenizer, last_turn_only=last_turn_only)
        if examples
        else []
    )
    for example, (input_ids, labels) in zip(examples, encoded, strict=True):
        result.lengths.append(len(input_ids))
        kept = tokenization.truncate(input_ids, labels, max_length)
        if kept is None:
            first_target = next(
                (i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels)
            )
            what = answer or ("the first assistant turn" if example.messages else "the completion")
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


def _tokenize_pairs(
    examples: Sequence[Example],
    tokenizer: tokenization.BatchTokenizer,
    max_length: int,
    errors: ValidationErrors,
    *,
    answer: str | None = None,
) -> Tokenized:
    """prompt/completion records, tokenized straight into flat arrays: the same tokens,
    errors and truncations as the record-by-record path, without its lists."""
    flat = tokenization.encode_pairs_flat(
        [e.prompt for e in examples], [e.completion for e in examples], tokenizer, max_length
    )
    for index in np.flatnonzero(~flat.kept).tolist():
        errors.add(
            examples[index].where,
            f"{answer or 'the completion'} starts at token "
            f"{int(flat.prompt_lengths[index]) + 1} (counted "
            f"with the base model's tokenizer), past maxSequenceLength {max_length}: nothing "
            "of it would be learned; shorten the prompt or raise maxSequenceLength",
        )
    truncated = np.flatnonzero(flat.kept & (flat.full_lengths > max_length))
    return Tokenized(
        [],
        flat.full_lengths.tolist(),
        [examples[index].where for index in truncated.tolist()],
        flat=flat,
    )


def _tokenize_preference(
    examples: Sequence[Example], tokenizer: Any, max_length: int, errors: ValidationErrors
) -> Tokenized:
    """Each record as two examples, its chosen answer then its rejected one, tokenized as
    prompt/completion records or conversations are; the loss (the log-probability DPO
    compares) is on the answer only, for a conversation its last assistant turn. A
    record's length is its longer answer's."""
    sides = [side for example in examples for side in example.preference_sides()]
    found = ValidationErrors(limit=2 * errors.limit)  # a record's two answers, each said
    result = _tokenize_fine_tuning(
        sides, tokenizer, max_length, found, last_turn_only=True, answer="the answer"
    )
    # Both answers follow the same prompt, so a prompt too long fails both: said once.
    errors.extend(
        ValidationErrors(
            shown=list(dict.fromkeys(found.shown)),
            total=(found.total + 1) // 2,
            limit=errors.limit,
        )
    )
    lengths = result.lengths
    result.lengths = [
        max(chosen, rejected) for chosen, rejected in zip(lengths[::2], lengths[1::2], strict=True)
    ]
    result.truncated = list(dict.fromkeys(result.truncated))  # a record named once
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


def percentiles(lengths: Sequence[int] | np.ndarray[Any, Any]) -> TokenLengths | None:
    """Nearest-rank percentiles: p of the records are at most that long."""
    if len(lengths) == 0:
        return None
    ordered = np.sort(np.asarray(lengths, dtype=np.int64))

    def rank(p: int) -> int:
        return int(ordered[max(0, -(-p * len(ordered) // 100) - 1)])

    return TokenLengths(p50=rank(50), p90=rank(90), p99=rank(99), max=int(ordered[-1]))


@dataclass
class SplitTokens:
    """What phase 2 keeps of a split besides its arrays: counts, never records."""

    lengths: array[int] = field(default_factory=lambda: array("q"))
    truncated: int = 0
    truncated_named: list[str] = field(default_factory=list)


def _batched(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
    while batch := list(itertools.islice(examples, size)):
        yield batch


def _tokenize_file(
    checked: CheckedFile,
    writer: SplitWriter,
    *,
    kind: str,
    tokenizer: Any,
    max_length: int,
    labels: list[str] | None,
    errors: ValidationErrors,
    progress: CheckProgress,
) -> SplitTokens:
    """Read the checked file again, batch by batch: tokenize, check the lengths, append
    the examples to the split's arrays.

    A pipeline of two: one thread tokenizes a batch while this one reads the next and
    writes the one before. The tokenizer's Rust code runs without the GIL, so reading
    JSON costs no time beside it. Batches are kept in file order."""

    def tokenize(batch: list[Example]) -> tuple[Tokenized, ValidationErrors]:
        found = ValidationErrors(limit=errors.limit)
        if kind == data.FINE_TUNING:
            return _tokenize_fine_tuning(batch, tokenizer, max_length, found), found
        if kind == data.PREFERENCE:
            return _tokenize_preference(batch, tokenizer, max_length, found), found
        if kind == data.CONTINUED_PRE_TRAINING:
            return _tokenize_documents(batch, tokenizer, max_length), found
        assert labels is not None
        return _tokenize_classification(batch, tokenizer, max_length, labels), found

    result = SplitTokens()
    position = data.ReadPosition()
    records_done = 0

    def keep(done: Future[tuple[Tokenized, ValidationErrors]], bytes_read: int) -> None:
        nonlocal records_done
        tokenized, found = done.result()
        records_done += len(tokenized.lengths)
        progress.update(bytes_read, records_done)
        errors.extend(found)
        if errors.total:
            pass  # past the first problem the arrays are discarded anyway
        elif tokenized.flat is not None:
            writer.add_flat(tokenized.flat.tokens, tokenized.flat.trained, tokenized.flat.lengths)
        else:
            writer.add(tokenized.examples)
        result.lengths.extend(tokenized.lengths)
        result.truncated += len(tokenized.truncated)
        room = LINES_NAMED_IN_A_WARNING + 1 - len(result.truncated_named)
        result.truncated_named += tokenized.truncated[: max(room, 0)]

    records = data.iter_jsonl(
        checked.path, checked.file.uri, kind, ValidationErrors(), position=position
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending: tuple[Future[tuple[Tokenized, ValidationErrors]], int] | None = None
        for batch in _batched(records, TOKENIZE_BATCH_RECORDS):
            submitted = (pool.submit(tokenize, batch), position.bytes_read)
            if pending is not None:
                keep(*pending)
            pending = submitted
        if pending is not None:
            keep(*pending)
    progress.file_done(position.bytes_read, records_done)
    return result


# -- warnings ------------------------------------------------------------------------


def _lines(count: int, places: Sequence[str]) -> str:
    named = ", ".join(places[:LINES_NAMED_IN_A_WARNING])
    return named + (", ..." if count > LINES_NAMED_IN_A_WARNING else "")


def find_warnings(
    checked: CheckedRecords, truncated: int, truncated_named: Sequence[str], max_length: int
) -> list[str]:
    """Records that will be truncated, duplicate records per split, validation records
    also in the training data: each kind one warning naming the first lines."""
    warnings = []
    if truncated:
        warnings.append(
            f"{truncated} record{'s are' if truncated != 1 else ' is'} longer than "
            f"maxSequenceLength {max_length} tokens and will be truncated: "
            f"{_lines(truncated, truncated_named)}"
        )
    for one in checked.files:
        count, named = one.hashes.duplicates()
        if count:
            warnings.append(
                f"{count} duplicate {one.file.split} record{'s' if count != 1 else ''}: "
                f"{_lines(count, named)}"
            )
    training, validation = checked.split("training"), checked.split("validation")
    if training is not None and validation is not None:
        count, named = validation.hashes.also_in(training.hashes)
        if count:
            warnings.append(
                f"{count} validation record{'s are' if count != 1 else ' is'} also in the "
                "training data, so the validation loss overstates quality: "
                f"{_lines(count, named)}"
            )
    return warnings


# -- the whole check -----------------------------------------------------------------


def tokenize_checked(
    spec: JobSpec,
    checked: CheckedRecords,
    *,
    tokenizer: Any,
    max_length: int,
    directory: Path,
    errors: ValidationErrors,
    progress: CheckProgress | None = None,
    splits: dict[str, SplitTokens] | None = None,
) -> TokenizedData:
    """Phase 2: tokenize every record with the base model's tokenizer into the arrays of
    `directory`, check the lengths against maxSequenceLength, summarize and find the
    warnings; commit the directory (meta.json) once all of it passed. `splits`, if
    given, gets each split's lengths and truncated records (a dry run's report)."""
    kind, labels = spec.customizationType, checked.labels
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    dtype = tokenized_data.token_dtype(vocabulary_size(tokenizer))
    classification = kind == data.CLASSIFICATION
    counts: dict[str, tuple[int, int]] = {}
    results: dict[str, SplitTokens] = {} if splits is None else splits
    progress = progress or CheckProgress(None, 0)
    progress.start("tokenizing")
    for split in tokenized_data.SPLITS:
        writer = SplitWriter(directory, split, dtype, classification=classification)
        try:
            one = checked.split(split)
            if one is not None:
                results[split] = _tokenize_file(
                    one,
                    writer,
                    kind=kind,
                    tokenizer=tokenizer,
                    max_length=max_length,
                    labels=labels,
                    errors=errors,
                    progress=progress,
                )
        finally:
            counts[split] = writer.close()
    if errors.total:
        raise DataValidationError(errors.message())
    if not counts["training"][0]:
        raise DataValidationError(f"{spec.trainingDataConfig.s3Uri}: no tokens to train on")

    training, validation = results["training"], results.get("validation", SplitTokens())
    truncated = training.truncated + validation.truncated
    named = (training.truncated_named + validation.truncated_named)[:LINES_NAMED_IN_A_WARNING]
    training_file, validation_file = checked.split("training"), checked.split("validation")
    summary = DataSummary(
        trainingRecords=training_file.records if training_file else 0,
        validationRecords=validation_file.records if validation_file else 0,
        tokenLengths=percentiles(np.frombuffer(training.lengths, dtype=np.int64)),
        truncatedRecords=truncated,
        labelDistribution=(
            {label: training_file.label_counts[label] for label in labels}
            if labels is not None and training_file is not None
            else {}
        ),
    )
    meta = TokenizedMeta(
        token_dtype=str(dtype),
        classification=classification,
        counts=counts,
        labels=labels,
        summary=summary,
        warnings=find_warnings(checked, truncated, named, max_length),
    )
    tokenized_data.write_meta(directory, meta)
    opened = tokenized_data.open_tokenized(directory)
    assert opened is not None  # just written
    return opened


def vocabulary_size(tokenizer: Any) -> int:
    """One more than the largest token id the tokenizer can give (added tokens' ids may
    leave gaps past len(tokenizer))."""
    ids = [len(tokenizer), *(tokenizer.get_vocab() or {}).values()]
    return max(ids) + 1 if ids else 0


def _upload_in_background(cache: DatasetCache, key: str, directory: Path) -> threading.Thread:
    """Write the cache entry while training starts; `PreparedData.cache_upload` is
    joined before the trainer exits."""

    def upload() -> None:
        try:
            location = cache.put(key, directory)
            log.info("tokenized data cached in %s", location.uri)
        except (StorageError, StoreUnavailable) as error:
            # The cache saves a later job time; this job has its data and goes on.
            log.warning("could not cache the tokenized data: %s", error.message)
        except Exception:
            log.exception("could not cache the tokenized data")

    thread = threading.Thread(target=upload, name="dataset-cache-upload", daemon=True)
    thread.start()
    return thread


def run_preflight(
    spec: JobSpec,
    *,
    storage: ObjectStore,
    reporter: Reporter,
    model_dir: Path,
    directory: Path,
    wait_for_cache: bool = False,
) -> PreparedData:
    """Check and tokenize the job's data, record the summary in the job's status and the
    warnings as events, and return the examples (mapped from `directory`/tokenized-<key>).

    Phase 1 needs no model. Meanwhile a background thread imports transformers and
    downloads the base model into `model_dir` and checks it (model.check_model_directory):
    start latency is the longer of the two, not their sum. A data problem is reported
    first, whatever the model; a model problem only once the data passed phase 1. Then
    only the tokenizer and config.json are read; phase 2 tokenizes, unless the cache
    holds this data tokenized the same way. The cache entry is written in the
    background unless `wait_for_cache` (other hosts' ranks read it from the store)."""
    errors = ValidationErrors()
    model = ModelFetch(storage, spec.baseModelIdentifier, model_dir)
    model.start()
    checked, progress = check_records(
        spec, storage=storage, directory=directory, errors=errors, reporter=reporter
    )
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
        if spec.customizationType in (data.FINE_TUNING, data.PREFERENCE)
        else None
    )
    cache = DatasetCache(storage, reporter.store.bucket)
    key = cache_key(
        datasets=[(c.file.split, c.file.uri, c.file.etag) for c in checked.files],
        tokenizer_hash=tokenizer_files_hash(model_dir),
        chat_template=template,
        max_length=max_length,
        customization_type=spec.customizationType,
    )
    tokenized_dir = tokenized_directory(directory, key)
    prepared = tokenized_data.open_tokenized(tokenized_dir)
    if prepared is not None:
        log.info("tokenized data already in %s", tokenized_dir)
    else:
        prepared = cache.get(key, tokenized_dir)
        if prepared is not None:
            log.info("tokenized data from cache %s", cache.location(key).uri)
    from_cache = prepared is not None
    upload: threading.Thread | None = None
    if prepared is None:
        prepared = tokenize_checked(
            spec,
            checked,
            tokenizer=tokenization.fast_batch_tokenizer(tokenizer),
            max_length=max_length,
            directory=tokenized_dir,
            errors=errors,
            progress=progress,
        )
        upload = _upload_in_background(cache, key, tokenized_dir)
        if wait_for_cache:
            upload.join()
    for one in checked.files:  # the arrays hold everything training needs of them
        one.path.unlink(missing_ok=True)

    summary = prepared.meta.summary
    reporter.set_data_summary(summary)
    for warning in prepared.meta.warnings:
        log.warning("data: %s", warning)
        reporter.event(WARNING_EVENT, warning)
    reporter.event(
        "DATA_VALIDATED",
        f"{summary.trainingRecords} training and {summary.validationRecords} validation "
        f"records{' (tokenized data from cache)' if from_cache else ''}",
    )
    return prepared_data(prepared, max_length, key, from_cache=from_cache, upload=upload)


def tokenized_directory(data_directory: Path, key: str) -> Path:
    """Where a job's tokenized data lives on its host, named by its cache key."""
    return data_directory / f"tokenized-{key}"


def prepared_data(
    tokenized: TokenizedData,
    max_length: int,
    key: str,
    *,
    from_cache: bool,
    upload: threading.Thread | None = None,
) -> PreparedData:
    return PreparedData(
        training=tokenized.training,
        validation=tokenized.validation,
        labels=tokenized.meta.labels,
        max_length=max_length,
        summary=tokenized.meta.summary,
        warnings=tokenized.meta.warnings,
        from_cache=from_cache,
        cache_key=key,
        cache_upload=upload,
    )


def shared_data(
    key: str,
    *,
    cache: DatasetCache,
    host_directory: Path,
    own_directory: Path,
    local_rank_zero: bool,
    barrier: Callable[[], None],
) -> TokenizedData | None:
    """A rank's view of the tokenized data rank 0 prepared under `key`: the host's one
    copy (`host_directory`, rank 0's data directory where rank 0 runs). On another host
    its local rank 0 downloads the cache entry there first; every rank of the job calls
    `barrier` once, as rank 0 does after its preflight. None if there is no copy and
    the cache has none either."""
    cache.location(key)  # raises ValueError unless a cache key (a sha256 hex digest)
    host_copy = tokenized_directory(host_directory, key)
    if local_rank_zero and tokenized_data.open_tokenized(host_copy) is None:
        cache.get(key, host_copy)
    barrier()
    mapped = tokenized_data.open_tokenized(host_copy)
    if mapped is None:  # a host directory the ranks do not share: a copy of its own
        mapped = cache.get(key, tokenized_directory(own_directory, key))
    if mapped is not None:
        log.info("mapped the tokenized data in %s", mapped.directory)
    return mapped
