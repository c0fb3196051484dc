"""Tokenized data on disk and in the store: what is written is what training reads, the
fast tokenization path equals the record-by-record one, and preflight's memory does
not grow with the number of records."""

from __future__ import annotations

import json
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobstore.storage import ObjectStore
from trainer import preflight, tokenization, tokenized_data
from trainer.data import IGNORE_INDEX, Example, TokenizedExample, ValidationErrors
from trainer.dataset_cache import DatasetCache
from trainer.preflight import CheckedFile, CheckedRecords, DataFile, RecordHashes
from trainer.tokenized_data import SplitWriter, TokenizedMeta, open_tokenized

URI = "s3://bucket/train.jsonl"
SST2_TRAIN = Path(os.environ.get("TUNEFORGE_SST2_DIR", "/work/shared/data/sst2")) / "train.jsonl"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def write(
    directory: Path,
    splits: dict[str, list[TokenizedExample]],
    *,
    classification: bool = False,
    vocabulary: int = 512,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    dtype = tokenized_data.token_dtype(vocabulary)
    counts = {}
    for split in tokenized_data.SPLITS:
        writer = SplitWriter(directory, split, dtype, classification=classification)
        examples = splits.get(split, [])
        for start in range(0, len(examples), 2):  # several batches
            writer.add(examples[start : start + 2])
        counts[split] = writer.close()
    meta = TokenizedMeta(
        token_dtype=str(dtype),
        classification=classification,
        counts=counts,
        labels=["a", "b"] if classification else None,
        summary=preflight.DataSummary(trainingRecords=len(splits.get("training", []))),
        warnings=["a warning"],
    )
    tokenized_data.write_meta(directory, meta)


CAUSAL = [
    TokenizedExample([1, 2, 3], [IGNORE_INDEX, 2, 3]),
    TokenizedExample([4], [4]),
    TokenizedExample([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8]),
    TokenizedExample([9, 10], [IGNORE_INDEX, 10]),
    TokenizedExample([11, 12, 13], [11, 12, 13]),
]


def test_written_examples_read_back_equal_by_index_slice_and_iteration(tmp_path: Path) -> None:
    write(tmp_path / "data", {"training": CAUSAL, "validation": CAUSAL[:1]})
    opened = open_tokenized(tmp_path / "data")
    assert opened is not None
    assert len(opened.training) == 5 and len(opened.validation) == 1
    assert [opened.training[i] for i in range(5)] == CAUSAL
    assert list(opened.training) == CAUSAL
    assert opened.training[1:4] == CAUSAL[1:4]
    assert opened.training[-1] == CAUSAL[-1]
    assert opened.validation[0] == CAUSAL[0]
    assert opened.meta.warnings == ["a warning"]
    with pytest.raises(IndexError):
        opened.training[5]
    assert opened.training.lengths().tolist() == [3, 1, 4, 2, 3]


def test_classification_examples_keep_their_class_ids(tmp_path: Path) -> None:
    examples = [
        TokenizedExample([1, 2], [0], classification=True),
        TokenizedExample([3], [1], classification=True),
        TokenizedExample([4, 5, 6], [1], classification=True),
    ]
    write(tmp_path / "data", {"training": examples}, classification=True)
    opened = open_tokenized(tmp_path / "data")
    assert opened is not None
    assert list(opened.training) == examples and len(opened.validation) == 0
    assert opened.meta.labels == ["a", "b"]


def test_token_ids_take_two_bytes_when_the_vocabulary_fits_else_four(tmp_path: Path) -> None:
    big = [TokenizedExample([70_000, 1], [IGNORE_INDEX, 1])]
    write(tmp_path / "small", {"training": CAUSAL})
    write(tmp_path / "big", {"training": big}, vocabulary=128_256)
    assert (tmp_path / "small" / "training.tokens").stat().st_size == 13 * 2
    assert (tmp_path / "big" / "training.tokens").stat().st_size == 2 * 4
    opened = open_tokenized(tmp_path / "big")
    assert opened is not None and list(opened.training) == big
    writer = SplitWriter(tmp_path, "x", tokenized_data.token_dtype(512), classification=False)
    with pytest.raises(ValueError, match="outside"):
        writer.add(big)  # 70,000 does not fit in uint16


def test_a_directory_is_tokenized_data_only_once_committed_and_whole(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    write(directory, {"training": CAUSAL})
    assert open_tokenized(directory) is not None
    tokens = directory / "training.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-2])  # a token short
    assert open_tokenized(directory) is None
    write(directory, {"training": CAUSAL})
    (directory / "meta.json").unlink()  # never committed
    assert open_tokenized(directory) is None
    assert open_tokenized(tmp_path / "nothing") is None


def test_a_label_that_is_neither_its_token_nor_ignored_is_refused(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, "x", tokenized_data.token_dtype(512), classification=False)
    with pytest.raises(ValueError, match="neither"):
        writer.add([TokenizedExample([1, 2], [IGNORE_INDEX, 3])])


def test_the_batch_tokenizer_encodes_as_the_tokenizers_own_call(
    tokenizer: Any, demo_model_dir: Path
) -> None:
    """On real SST-2 phrases, the demo (byte-level BPE) and MiniLM (WordPiece, [CLS]
    ... [SEP]; its tokenizer.json pads and truncates to 128) tokenizers: the same ids
    with and without special tokens, also after a call that truncates."""
    from transformers import AutoTokenizer

    from tests.conftest import minilm_model_dir

    texts = [json.loads(line)["text"] for line in SST2_TRAIN.read_text().splitlines()[:500]]
    for loaded in (tokenizer, AutoTokenizer.from_pretrained(minilm_model_dir())):
        fast = tokenization.fast_batch_tokenizer(loaded)
        assert isinstance(fast, tokenization.BatchTokenizer)
        loaded(texts[:3], truncation=True, max_length=4)  # sets the backend's truncation
        for special in (True, False):
            expected = [list(ids) for ids in loaded(texts, add_special_tokens=special)["input_ids"]]
            assert fast(texts, add_special_tokens=special)["input_ids"] == expected
        assert len(fast) == len(loaded) and fast.eos_token_id == loaded.eos_token_id


def _pairs(count: int) -> list[Example]:
    generator = np.random.default_rng(5)
    words = ["apple", "bread", "chair", "Crème", "東京", "\n", "42", "  "]
    examples = []
    for number in range(count):
        prompt = " ".join(generator.choice(words, int(generator.integers(1, 40))))
        completion = " " + " ".join(generator.choice(words, int(generator.integers(1, 30))))
        examples.append(Example(prompt, completion, where=f"{URI}:{number + 1}"))
    return examples


def test_the_flat_pair_path_gives_the_record_by_record_tokens_errors_and_truncations(
    tokenizer: Any, tmp_path: Path
) -> None:
    """Some records fit, some are truncated, some have no completion left: the fast path
    (flat arrays) and the per-record path (lists, truncate) agree on all of it."""
    examples = _pairs(400)
    results = {}
    for name, used in (
        ("lists", tokenizer),
        ("flat", tokenization.fast_batch_tokenizer(tokenizer)),
    ):
        errors = ValidationErrors()
        tokenized = preflight._tokenize_fine_tuning(examples, used, 48, errors)
        writer = SplitWriter(tmp_path, name, tokenized_data.token_dtype(512), classification=False)
        if tokenized.flat is not None:
            flat = tokenized.flat
            writer.add_flat(flat.tokens, flat.trained, flat.lengths)
        else:
            writer.add(tokenized.examples)
        writer.close()
        files = {a: (tmp_path / f"{name}.{a}").read_bytes() for a in ("tokens", "trained")}
        results[name] = (errors.total, errors.shown, tokenized.lengths, tokenized.truncated, files)
    assert results["flat"] == results["lists"]
    total, shown, _, truncated, _ = results["flat"]
    assert 0 < total < 400 and 0 < len(truncated) < 400  # the test has both
    assert shown[0].endswith("shorten the prompt or raise maxSequenceLength")


def _write_jsonl(path: Path, records: int) -> None:
    with path.open("w") as file:
        for number in range(records):
            prompt = f"{number} " + "apple bread chair " * 5
            file.write(json.dumps({"prompt": prompt, "completion": " ok " * 4}) + "\n")


def _preflight_peak(tmp_path: Path, tokenizer: Any, records: int) -> int:
    """Peak Python memory (tracemalloc, numpy's arrays included) of checking and
    tokenizing a file of `records` records."""
    path = tmp_path / f"{records}.jsonl"
    _write_jsonl(path, records)
    spec: Any = type(
        "Spec",
        (),
        {
            "customizationType": "FINE_TUNING",
            "trainingDataConfig": type("Data", (), {"s3Uri": URI}),
        },
    )
    fast = tokenization.fast_batch_tokenizer(tokenizer)
    tracemalloc.start()
    try:
        checked = CheckedFile(DataFile("training", URI, ""), path, RecordHashes(URI))
        preflight._check_file(checked, "FINE_TUNING", ValidationErrors())
        preflight.tokenize_checked(
            spec,
            CheckedRecords([checked], None),
            tokenizer=fast,
            max_length=64,
            directory=tmp_path / f"tokenized-{records}",
            errors=ValidationErrors(),
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preflight_memory_does_not_grow_with_the_records(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten times the records, the same peak memory but for 24 bytes a record (a hash,
    a line number and a length): no record outlives its batch."""
    monkeypatch.setattr(preflight, "TOKENIZE_BATCH_RECORDS", 256)
    small = _preflight_peak(tmp_path, tokenizer, 3_000)
    large = _preflight_peak(tmp_path, tokenizer, 30_000)
    per_record_arrays = 24 * 27_000 * 2  # arrays grow by doubling: up to twice that
    assert large - small < per_record_arrays + 512 * 1024, (small, large)
    opened = open_tokenized(tmp_path / "tokenized-30000")
    assert opened is not None and len(opened.training) == 30_000


def test_the_cache_gives_back_the_files_and_ignores_an_uncommitted_entry(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    bucket = f"cache-{uuid.uuid4().hex[:8]}"
    object_store.ensure_bucket(bucket)
    cache = DatasetCache(object_store, bucket)
    write(tmp_path / "written", {"training": CAUSAL, "validation": CAUSAL[2:]})
    key = "b" * 64
    assert cache.get(key, tmp_path / "nothing") is None
    cache.put(key, tmp_path / "written")
    fetched = cache.get(key, tmp_path / "fetched")
    assert fetched is not None
    assert list(fetched.training) == CAUSAL and list(fetched.validation) == CAUSAL[2:]
    for name in [*tokenized_data.array_files(), tokenized_data.META]:
        assert (tmp_path / "fetched" / name).read_bytes() == (
            tmp_path / "written" / name
        ).read_bytes()
    # An entry whose upload stopped before meta.json is not an entry.
    other = "c" * 64
    for name in tokenized_data.array_files():
        path = tmp_path / "written" / name
        if path.stat().st_size:
            object_store.upload_file(path, cache.location(other).child(name))
    assert cache.get(other, tmp_path / "partial") is None
    # An entry whose array is short of what meta.json says is ignored, its copy removed.
    object_store.put_bytes(cache.location(key).child("training.tokens"), b"\0\0")
    assert cache.get(key, tmp_path / "short") is None
    assert not (tmp_path / "short").exists()
