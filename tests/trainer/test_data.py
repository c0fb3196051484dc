"""Data validation, tokenization with loss masking, and batching (no object store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.data import (
    IGNORE_INDEX,
    MAX_ERRORS_SHOWN,
    Example,
    TokenizedExample,
    ValidationErrors,
    batches,
    collate,
    epoch_generator,
    read_jsonl,
)
from trainer.tokenization import tokenize

URI = "s3://bucket/data/train.jsonl"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def validate(
    path: Path, customization_type: str = "FINE_TUNING"
) -> tuple[list[Example], ValidationErrors]:
    errors = ValidationErrors()
    examples = read_jsonl(path, URI, customization_type, errors)
    return examples, errors


def test_validation_collects_every_error_with_uri_and_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps({"prompt": "a", "completion": "b"}),
            '{"prompt": "a", "completion": ',  # 2: not JSON
            json.dumps(["prompt", "completion"]),  # 3: not an object
            json.dumps({"prompt": "a"}),  # 4: no completion
            json.dumps({"prompt": "", "completion": 7}),  # 5: two problems
            json.dumps({"prompt": "c", "completion": "d"}),
            "null",  # 7: not an object
        ],
    )
    examples, errors = validate(path)
    assert examples == [Example("a", "b"), Example("c", "d")]
    assert errors.total == 6
    assert errors.shown[0].startswith(f"{URI}:2: not valid JSON")
    assert errors.shown[1] == f"{URI}:3: expected a JSON object, got array"
    assert errors.shown[2] == f'{URI}:4: missing "completion"'
    assert errors.shown[3] == f'{URI}:5: "prompt" must be a non-empty string'
    assert errors.shown[4] == f'{URI}:5: "completion" must be a non-empty string'
    assert errors.shown[5] == f"{URI}:7: expected a JSON object, got null"
    assert errors.message().startswith("the data has 6 problems:\n")


def test_blank_lines_are_skipped_but_still_counted_in_line_numbers(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps({"prompt": "a", "completion": "b"}),
            "",
            "   \t ",
            "not json",
        ],
    )
    examples, errors = validate(path)
    assert examples == [Example("a", "b")]
    assert errors.total == 1
    assert errors.shown[0].startswith(f"{URI}:4: not valid JSON")


def test_an_empty_dataset_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "train.jsonl", ["", "  "])
    examples, errors = validate(path)
    assert examples == []
    assert errors.shown == [f"{URI}: no records (the file is empty or has only blank lines)"]


def test_only_the_first_errors_are_shown_but_all_are_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "train.jsonl", ["{}"] * 30)
    _, errors = validate(path)
    assert errors.total == 60  # each line misses both fields
    assert len(errors.shown) == MAX_ERRORS_SHOWN
    assert errors.message().startswith(f"the data has 60 problems (the first {MAX_ERRORS_SHOWN}")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    _, errors = validate(path)
    assert errors.total == 1 and errors.shown[0].startswith(f"{URI}:2: not valid UTF-8")


def test_continued_pretraining_takes_input_or_text(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [json.dumps({"input": "one"}), json.dumps({"text": "two"}), json.dumps({"prompt": "x"})],
    )
    examples, errors = validate(path, "CONTINUED_PRE_TRAINING")
    assert examples == [Example("", "one"), Example("", "two")]
    assert errors.shown == [f'{URI}:3: expected a non-empty string "input" or "text"']


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_labels_mask_exactly_the_prompt_tokens(tokenizer: Any) -> None:
    example = Example("What is 2 + 3?\nAnswer:", " 5")
    [tokenized], dropped = tokenize([example], tokenizer, max_length=512)
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id  # the tokenizer's special tokens stay
    assert tokenized.input_ids == [*prompt_ids, *completion_ids, tokenizer.eos_token_id]
    assert tokenized.labels == [IGNORE_INDEX] * len(prompt_ids) + [
        *completion_ids,
        tokenizer.eos_token_id,
    ]
    assert dropped == 0


def test_truncation_keeps_max_length_and_drops_examples_with_no_target(tokenizer: Any) -> None:
    keep = Example("Hi:", " a long answer that gets cut")
    lost = Example("A prompt far longer than the limit of ten tokens, surely", " x")
    tokenized, dropped = tokenize([keep, lost], tokenizer, max_length=10)
    assert dropped == 1
    [kept] = tokenized
    assert len(kept.input_ids) == len(kept.labels) == 10
    assert kept.labels[-1] != IGNORE_INDEX


def test_tokenizing_no_examples_gives_none(tokenizer: Any) -> None:
    assert tokenize([], tokenizer, max_length=16) == ([], 0)


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    batch = collate(
        [TokenizedExample([1, 5, 6], [-100, 5, 6]), TokenizedExample([1, 7], [-100, 7])], pad_id=0
    )
    assert batch.input_ids.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels.tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch.target_tokens == 3


def test_shuffle_is_fixed_per_seed_and_epoch_and_differs_between_epochs() -> None:
    examples = [TokenizedExample([i], [i]) for i in range(50)]

    def order(seed: int, epoch: int) -> list[int]:
        generated = batches(examples, 50, 0, generator=epoch_generator(seed, epoch))
        return torch.cat([b.input_ids for b in generated]).flatten().tolist()

    assert order(1, 1) == order(1, 1)
    assert order(1, 1) != order(1, 2)
    assert order(1, 1) != order(2, 1)
    assert sorted(order(1, 2)) == list(range(50))
