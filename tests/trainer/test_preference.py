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
        f'{URI}:3: "input"."messages" must end with a user message (the answers follow '
        "it); its last one is the assistant's",
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


def _pairs_of(tokenizer: Any, count: int) -> list[TokenizedExample]:
    examples = []
    for n in range(count):
        prompt = tokenizer(f"Item {n}:")["input_ids"]
        for answer in (f" yes {n}", " no"):
            examples.append(
                _example(prompt, tokenizer(answer, add_special_tokens=False)["input_ids"])
            )
    return examples


def test_accumulated_micro_batches_give_the_gradients_of_one_batch(
    demo_model_dir: Path, tokenizer: Any
) -> None:
    """Each micro-batch's summed loss is divided by the pairs of the whole window, so two
    micro-batches of one pair step exactly as one batch of two pairs."""
    from trainer.preference import backward_preference_window

    model: Any = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    examples = _pairs_of(tokenizer, 2)
    reference = torch.tensor([-5.0, -6.0, -7.0, -4.0])
    pairs = PreferencePairs(examples, reference)
    cpu = torch.device("cpu")

    def gradients(window: list[Any]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        totals = backward_preference_window(
            model, window, cpu, contextlib.nullcontext, beta=0.1, pairs=2
        )
        assert totals.pairs == 2
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole = gradients([collate_pairs([pairs[0], pairs[1]], pad_id=0)])
    split = gradients([collate_pairs([pairs[0]], pad_id=0), collate_pairs([pairs[1]], pad_id=0)])
    assert len(whole) == len(split) > 0
    for one, other in zip(whole, split, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-6)


def test_a_ranks_empty_share_of_the_last_batch_is_a_pair_batch_with_no_loss(
    tokenizer: Any,
) -> None:
    from trainer.preference import PreferenceBatch
    from trainer.sharding import rank_batches

    pairs = PreferencePairs(_pairs_of(tokenizer, 3), torch.zeros(6))  # 3 pairs, 2 ranks
    shares = [
        list(
            rank_batches(
                pairs,
                1,
                0,
                generator=torch.Generator().manual_seed(1),
                rank=rank,
                world_size=2,
                collate=collate_pairs,
            )
        )
        for rank in (0, 1)
    ]
    assert [len(batches) for batches in shares] == [2, 2]  # the same forwards on each rank
    assert all(isinstance(b, PreferenceBatch) for batches in shares for b in batches)
    assert [b.target_tokens for b in shares[0]] == [1, 1]
    assert [b.target_tokens for b in shares[1]] == [1, 0]  # its share of the last is empty
    empty = shares[1][1]
    assert empty.pairs == 1 and bool((empty.labels == IGNORE_INDEX).all())


def test_a_lora_models_reference_is_its_base_with_the_adapters_disabled(
    demo_model_dir: Path, tokenizer: Any
) -> None:
    from peft import LoraConfig, get_peft_model

    base: Any = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    examples = _pairs_of(tokenizer, 2)
    arguments: dict[str, Any] = {
        "batch_size": 4,
        "pad_id": 0,
        "device": torch.device("cpu"),
        "autocast": contextlib.nullcontext,
    }
    of_base = reference_log_probs(base, base, examples, **arguments)
    adapted: Any = get_peft_model(
        AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():  # adapters that change the model (B starts at zero)
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.5)
    with_adapters = reference_log_probs(adapted, None, examples, **arguments)
    disabled = reference_log_probs(adapted, adapted, examples, **arguments)
    assert not torch.allclose(with_adapters, of_base, atol=1e-3)
    torch.testing.assert_close(disabled, of_base, rtol=1e-5, atol=1e-5)


def test_a_prompt_too_long_for_both_answers_is_one_error_naming_the_answer(
    tmp_path: Path, tokenizer: Any
) -> None:
    from trainer.preflight import _tokenize_preference

    long_prompt = " ".join(["word"] * 80)
    path = _write(
        tmp_path / "long.jsonl",
        [
            {"prompt": "short", "chosen": "a", "rejected": "b"},
            {"prompt": long_prompt, "chosen": "a", "rejected": "b"},
        ],
    )
    examples = read_jsonl(path, URI, PREFERENCE, ValidationErrors())
    errors = ValidationErrors()
    tokenized = _tokenize_preference(examples, tokenizer, 16, errors)
    assert errors.total == 1, errors.shown
    assert errors.shown[0].startswith(f"{URI}:2: the answer starts at token ")
    assert len(tokenized.lengths) == 2  # a record's length: its longer answer's
