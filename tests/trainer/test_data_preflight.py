"""Preflight's parts without a store: token-length checks, summary percentiles, warnings,
and the tokenized-data cache's encoding and key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jobstore.documents import TokenLengths
from trainer.conversations import Message
from trainer.data import (
    Example,
    ValidationErrors,
)
from trainer.dataset_cache import DatasetCache, cache_key, tokenizer_files_hash
from trainer.preflight import (
    CheckedFile,
    CheckedRecords,
    DataFile,
    RecordHashes,
    _tokenize_classification,
    _tokenize_fine_tuning,
    find_warnings,
    percentiles,
)
from trainer.tokenization import special_token_frame

URI = "s3://bucket/train.jsonl"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) is None
    assert percentiles([7]) == TokenLengths(p50=7, p90=7, p99=7, max=7)
    lengths = list(range(1, 101))  # 1..100
    assert percentiles(lengths[::-1]) == TokenLengths(p50=50, p90=90, p99=99, max=100)


def test_a_record_with_nothing_to_learn_within_the_length_is_an_error_others_truncated(
    tokenizer: Any,
) -> None:
    long_prompt = Example("word " * 100, " ok", where=f"{URI}:2")
    long_answer = Example("Say it:", " word" * 100, where=f"{URI}:3")
    long_chat = Example(
        "",
        "",
        where=f"{URI}:4",
        messages=(Message("user", "word " * 100), Message("assistant", "ok")),
    )
    short = Example("What is 1 + 1?\nAnswer:", " 2", where=f"{URI}:1")
    errors = ValidationErrors()
    result = _tokenize_fine_tuning(
        [short, long_prompt, long_answer, long_chat], tokenizer, 32, errors
    )
    assert errors.total == 2
    assert errors.shown[0].startswith(f"{URI}:2: the completion starts at token ")
    assert "past maxSequenceLength 32" in errors.shown[0]
    assert errors.shown[1].startswith(f"{URI}:4: the first assistant turn starts at token ")
    assert result.truncated == [f"{URI}:3"]
    assert [len(e.input_ids) <= 32 for e in result.examples] == [True, True]
    assert result.lengths[2] > 32  # counted before truncation


SST2_TRAIN = Path(os.environ.get("TUNEFORGE_SST2_DIR", "/work/shared/data/sst2")) / "train.jsonl"


class CountingTokenizer:
    """A tokenizer that counts the texts it is asked to encode."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts = 0

    def __call__(self, text: str | list[str], **options: Any) -> Any:
        self.texts += 1 if isinstance(text, str) else len(text)
        return self.tokenizer(text, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


class FramelessTokenizer(CountingTokenizer):
    """One whose special tokens are not a fixed frame around the text: its bare
    encoding of the probe is found nowhere in its full one."""

    def __call__(self, text: str | list[str], **options: Any) -> Any:
        if options.get("add_special_tokens") is False:
            self.texts += 1
            return {"input_ids": [10**9]}
        return super().__call__(text, **options)


@pytest.mark.parametrize("which", ["minilm", "minilm-left", "demo", "frameless"])
def test_classification_texts_are_tokenized_once_with_the_tokenizers_own_truncation(
    which: str, demo_model_dir: Path
) -> None:
    """Lengths, truncated tokens and the truncation warnings equal those of tokenizing
    every text untruncated and again with the tokenizer's truncation (the two passes
    this replaces), on real SST-2 phrases of which many are cut at 12 tokens."""
    from transformers import AutoTokenizer

    from tests.conftest import minilm_model_dir

    directory = demo_model_dir if which == "demo" else minilm_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if which == "minilm-left":
        tokenizer.truncation_side = "left"
    records = [json.loads(line) for line in SST2_TRAIN.read_text("utf-8").splitlines()[:600]]
    examples = [
        Example("", r["text"], label=r["label"], where=f"{URI}:{n}")
        for n, r in enumerate(records, start=1)
    ]
    texts = [e.completion for e in examples]
    max_length = 12

    counting = (FramelessTokenizer if which == "frameless" else CountingTokenizer)(tokenizer)
    result = _tokenize_classification(examples, counting, max_length, ["negative", "positive"])

    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    long_texts = sum(n > max_length for n in lengths)
    probe_texts = 2  # special_token_frame's two encodings of one short text
    if which == "frameless":  # the tokenizer truncates the long texts itself, again
        assert counting.texts == len(examples) + probe_texts + long_texts
    else:
        assert counting.texts == len(examples) + probe_texts
        frame = (1, 0) if which == "demo" else (1, 1)  # BOS; [CLS] ... [SEP]
        assert special_token_frame(tokenizer) == frame
    truncated = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    assert result.lengths == lengths
    assert [e.input_ids for e in result.examples] == [list(ids) for ids in truncated]
    where = [e.where for e, n in zip(examples, lengths, strict=True) if n > max_length]
    assert result.truncated == where
    assert 100 < long_texts < len(examples)  # the test cuts many texts, not all
    assert [e.labels for e in result.examples] == [[int(e.label == "positive")] for e in examples]
    checked = checked_records({"training": examples})
    warning = find_warnings(checked, len(result.truncated), result.truncated, 12)[0]
    assert warning.startswith(f"{long_texts} records are longer than maxSequenceLength 12")


def checked_records(splits: dict[str, list[Example]]) -> CheckedRecords:
    """Phase 1's result for examples already parsed: their hashes, no file."""
    files = []
    for split, examples in splits.items():
        uri = examples[0].where.rsplit(":", 1)[0] if examples else URI
        hashes = RecordHashes(uri)
        for example in examples:
            hashes.add(example)
        files.append(CheckedFile(DataFile(split, uri, ""), Path("unused"), hashes))
    return CheckedRecords(files, None)


def test_warnings_name_truncated_duplicate_and_overlapping_records() -> None:
    a = Example("p", "a", where=f"{URI}:1")
    b = Example("p", "b", where=f"{URI}:2")
    a_again = Example("p", "a", where=f"{URI}:3")
    validation = [Example("p", "b", where="s3://bucket/valid.jsonl:1")]
    checked = checked_records({"training": [a, b, a_again], "validation": validation})
    assert find_warnings(checked, 1, [f"{URI}:2"], 16) == [
        f"1 record is longer than maxSequenceLength 16 tokens and will be truncated: {URI}:2",
        f"1 duplicate training record: {URI}:3 (same as line 1)",
        "1 validation record is also in the training data, so the validation loss overstates "
        "quality: s3://bucket/valid.jsonl:1",
    ]
    assert find_warnings(checked_records({"training": [a, b]}), 0, [], 16) == []


def test_duplicates_are_found_by_content_in_file_order_and_counted_past_the_named() -> None:
    """Hashes, not stored records: the conversation's turns and the label count as
    content; the first ten repeats are named in file order with the line each
    repeats, all are counted."""
    records = [Example("p", f"c{n % 3}", where=f"{URI}:{n + 1}") for n in range(30)]
    records.append(
        Example(
            "",
            "",
            where=f"{URI}:31",
            messages=(Message("user", "p"), Message("assistant", "c0")),
        )
    )
    records.append(Example("", "t", label="1", where=f"{URI}:32"))
    records.append(Example("", "t", label="2", where=f"{URI}:33"))
    count, named = checked_records({"training": records}).files[0].hashes.duplicates()
    assert count == 27  # lines 4..30 repeat lines 1..3; the rest are all distinct
    assert named == [f"{URI}:{n} (same as line {(n - 1) % 3 + 1})" for n in range(4, 14)]
    warning = find_warnings(checked_records({"training": records}), 0, [], 16)[0]
    assert warning.startswith("27 duplicate training records: ") and warning.endswith(", ...")


def test_the_cache_key_changes_with_each_input(demo_model_dir: Path, tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "datasets": [("training", "s3://b/t.jsonl", '"etag-1"')],
        "tokenizer_hash": tokenizer_files_hash(demo_model_dir),
        "chat_template": "{{ x }}",
        "max_length": 64,
        "customization_type": "FINE_TUNING",
    }
    key = cache_key(**base)
    assert key == cache_key(**base) and len(key) == 64
    changes: list[dict[str, Any]] = [
        {"datasets": [("training", "s3://b/t.jsonl", '"etag-2"')]},
        {"datasets": [("validation", "s3://b/t.jsonl", '"etag-1"')]},
        {"tokenizer_hash": "0" * 64},
        {"chat_template": None},
        {"max_length": 65},
        {"customization_type": "CONTINUED_PRE_TRAINING"},
    ]
    assert len({cache_key(**(base | change)) for change in changes} | {key}) == len(changes) + 1
    # The tokenizer hash follows the tokenizer files, not the weights.
    copy = tmp_path / "model"
    copy.mkdir()
    for path in demo_model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert tokenizer_files_hash(copy) == base["tokenizer_hash"]
    (copy / "tokenizer_config.json").write_text('{"changed": true}')
    assert tokenizer_files_hash(copy) != base["tokenizer_hash"]


def test_cache_keys_are_checked_before_they_name_an_object() -> None:
    cache = DatasetCache(storage=None, bucket="state")  # type: ignore[arg-type]
    assert cache.location("a" * 64).key == f"cache/tokenized/{'a' * 64}/"
    with pytest.raises(ValueError):
        cache.location("../jobs/x")
