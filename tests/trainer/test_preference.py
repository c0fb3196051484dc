"""Preference (DPO) data and maths, without a store: the two record formats and their
errors by file and line, answers tokenized with the loss on the answer only, pairs
batched chosen-then-rejected, and the DPO loss and rewards against a hand computation."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.data import IGNORE_INDEX, PREFERENCE, TokenizedExample, ValidationErrors, read_jsonl
from trainer.preference import (
    PreferencePairs,
    collate_pairs,
    preference_sums,
    reference_log_probs,
    sequence_log_probs,
)
from trainer.tokenization import encode_fine_tuning

URI = "s3://bucket/data/preference.jsonl"


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_prompt_chosen_rejected_records_and_their_errors_by_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "train.jsonl",
        [
            {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "Say hi", "chosen": "Hello!"},  # 2
            {"prompt": "", "chosen": "a", "rejected": 3},  # 3: two problems
            {"input": {"messages": [{"role": "user", "content": "x"}]}},  # 4: another format
        ],
    )
    errors = ValidationErrors()
    examples = read_jsonl(path, URI, PREFERENCE, errors)
    assert [(e.prompt, e.completion, e.rejected) for e in examples] == [
        ("Say hi", "Hello!", "Go away.")
    ]
    assert errors.shown == [
        f'{URI}:2: missing "rejected"',
        f'{URI}:3: "prompt" must be a non-empty string',
        f'{URI}:3: "rejected" must be a non-empty string',
        f"{URI}:4: this record is openai-preference but the file's first record (line 1) is "
        "prompt-chosen-rejected; a file may not mix formats",
    ]


def test_openai_preference_records_and_their_errors_by_line(tmp_path: Path) -> None:
    good = {
        "input": {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hi"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "Hello, friend."}],
        "non_preferred_output": [{"role": "assistant", "content": "What?"}],
    }
    path = _write(
        tmp_path / "train.jsonl",
        [
            good,
            good | {"non_preferred_output": []},  # 2
            good | {"input": {"messages": [{"role": "assistant", "content": "x"}]}},  # 3
            good | {"preferred_output": [{"role": "assistant", "content": ""}]},  # 4
        ],
    )
    errors = ValidationErrors()
    examples = read_jsonl(path, URI, PREFERENCE, errors)
    assert len(examples) == 1
    chosen, rejected = examples[0].preference_sides()
    assert chosen.messages is not None and rejected.messages is not None
    assert [m.content for m in chosen.messages] == ["Be kind.", "Hi", "Hello, friend."]
    assert [m.content for m in rejected.messages] == ["Be kind.", "Hi", "What?"]
    assert errors.shown == [
        f'{URI}:2: "non_preferred_output" must be an array of one '
        '{"role": "assistant", "content": ...} message',
        f'{URI}:3: "input"."messages": roles must alternate user, assistant, user, ...: '
        "turn 1 is assistant, expected user",
        f'{URI}:4: "preferred_output"[0]."content" must be a non-empty string or array of '
        "text parts",
    ]


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_a_conversation_answer_is_learned_on_its_last_assistant_turn_only(
    tmp_path: Path, tokenizer: Any
) -> None:
    record = {
        "input": {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "four"}],
        "non_preferred_output": [{"role": "assistant", "content": "five"}],
    }
    (example,) = read_jsonl(
        _write(tmp_path / "t.jsonl", [record]), URI, PREFERENCE, ValidationErrors()
    )
    chosen, _ = example.preference_sides()
    (all_turns,) = encode_fine_tuning([chosen], tokenizer)
    (last_turn,) = encode_fine_tuning([chosen], tokenizer, last_turn_only=True)
    learned = [t for t in last_turn[1] if t != IGNORE_INDEX]
    assert (
        learned and "four" in tokenizer.decode(learned) and "two" not in tokenizer.decode(learned)
    )
    # Supervised training learns both assistant turns; the answer alone is its tail.
    everything = [t for t in all_turns[1] if t != IGNORE_INDEX]
    assert "two" in tokenizer.decode(everything) and everything[-len(learned) :] == learned


def _example(prompt: list[int], answer: list[int]) -> TokenizedExample:
    return TokenizedExample([*prompt, *answer], [IGNORE_INDEX] * len(prompt) + answer)


def test_pairs_are_batched_chosen_rows_first_then_rejected_rows() -> None:
    examples = [
        _example([1, 2], [3]),  # pair 0 chosen
        _example([1, 2], [4, 5]),  # pair 0 rejected
        _example([6], [7]),  # pair 1 chosen
        _example([6], [8]),  # pair 1 rejected
    ]
    pairs = PreferencePairs(examples, torch.tensor([-1.0, -2.0, -3.0, -4.0]))
    assert len(pairs) == 2 and pairs[1].reference == (-3.0, -4.0)
    batch = collate_pairs([pairs[1], pairs[0]], pad_id=0)
    assert batch.pairs == 2 and batch.input_ids.shape == (4, 4)
    assert batch.input_ids[:, 0].tolist() == [6, 1, 6, 1]  # chosen 1, chosen 0, rejected ...
    assert batch.reference.tolist() == [-3.0, -1.0, -4.0, -2.0]
    assert batch.target_tokens == 2  # pairs, both answers with targets


@pytest.fixture(scope="module")
def model(demo_model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True).eval()


def test_the_dpo_loss_and_rewards_match_the_formula(model: Any, tokenizer: Any) -> None:
    prompt = tokenizer("What is 2 + 3?\nAnswer:")["input_ids"]
    examples = [
        _example(prompt, tokenizer(" 5", add_special_tokens=False)["input_ids"]),
        _example(prompt, tokenizer(" 7", add_special_tokens=False)["input_ids"]),
        _example(prompt, tokenizer(" five", add_special_tokens=False)["input_ids"]),
        _example(prompt, tokenizer(" six", add_special_tokens=False)["input_ids"]),
    ]
    reference = reference_log_probs(
        model,
        model,
        examples,
        batch_size=3,
        pad_id=0,
        device=torch.device("cpu"),
        autocast=contextlib.nullcontext,
    )
    # Against itself as the reference every reward is 0: the loss is log 2 a pair.
    batch = collate_pairs(PreferencePairs(examples, reference), pad_id=0)
    with torch.no_grad():
        sums = preference_sums(model, batch, beta=0.1)
    assert float(sums.loss) == pytest.approx(2 * math.log(2), abs=1e-5)
    assert (float(sums.correct), float(sums.margin)) == (0.0, pytest.approx(0.0, abs=1e-5))

    # A reference that found the chosen answers 1 nat less likely, the rejected ones 2
    # nats more likely than the policy does: reward 0.1 * 1 and 0.1 * -2 per pair.
    shifted = reference + torch.tensor([-1.0, 2.0, -1.0, 2.0])
    batch = collate_pairs(PreferencePairs(examples, shifted), pad_id=0)
    with torch.no_grad():
        sums = preference_sums(model, batch, beta=0.1)
        policy = sequence_log_probs(model, batch)
    margin = 0.1 * 1.0 - 0.1 * -2.0
    assert float(sums.loss) == pytest.approx(2 * -math.log(1 / (1 + math.exp(-margin))), abs=1e-5)
    assert float(sums.correct) == 2.0
    assert float(sums.margin) == pytest.approx(2 * margin, abs=1e-5)
    assert float(sums.chosen) == pytest.approx(2 * 0.1, abs=1e-5)
    assert float(sums.rejected) == pytest.approx(2 * -0.2, abs=1e-5)
    # The policy's log-probabilities are sums over the answer tokens only.
    assert policy.shape == (4,) and bool((policy < 0).all())


def test_a_dpo_step_raises_the_chosen_answer_over_the_rejected_one(demo_model_dir: Path) -> None:
    model: Any = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    prompt = tokenizer("Greet me:")["input_ids"]
    examples = [
        _example(prompt, tokenizer(" Hello there", add_special_tokens=False)["input_ids"]),
        _example(prompt, tokenizer(" Go away", add_special_tokens=False)["input_ids"]),
    ]
    reference = reference_log_probs(
        model,
        model,
        examples,
        batch_size=2,
        pad_id=0,
        device=torch.device("cpu"),
        autocast=contextlib.nullcontext,
    )
    batch = collate_pairs(PreferencePairs(examples, reference), pad_id=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):
        preference_sums(model, batch, beta=0.1).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = preference_sums(model.eval(), batch, beta=0.1)
    assert float(after.margin) > 0 and float(after.correct) == 1.0
    assert float(after.loss) < math.log(2)
