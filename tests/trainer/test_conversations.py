"""Conversations: both formats parsed and checked, rendered with the tokenizer's chat
template or the default one, and the loss mask on exactly the assistant text."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from trainer.conversations import (
    BEDROCK,
    BEDROCK_SCHEMA_VERSION,
    DEFAULT_CHAT_TEMPLATE,
    OPENAI,
    Message,
    RenderedConversation,
    chat_template_of,
    record_format,
    render_conversation,
)
from trainer.data import IGNORE_INDEX, Example, ValidationErrors, read_jsonl
from trainer.tokenization import tokenize

URI = "s3://bucket/data/chat.jsonl"

# ChatML, as Qwen and many others ship it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATION = (
    Message("system", "You answer briefly."),
    Message("user", "What is 2 + 3?"),
    Message("assistant", "5"),
    Message("user", "And 4 + 4?"),
    Message("assistant", "It is 8."),
)


@pytest.fixture(scope="module")
def plain_tokenizer(demo_model_dir: Path) -> Any:
    """The demo tokenizer: no chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert not getattr(tokenizer, "chat_template", None)
    return tokenizer


@pytest.fixture(scope="module")
def chat_tokenizer(plain_tokenizer: Any) -> Any:
    """The demo tokenizer with a ChatML template and its two special tokens."""
    tokenizer = copy.deepcopy(plain_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def labels_of(rendered: RenderedConversation) -> list[int]:
    return [
        token if trained else IGNORE_INDEX
        for token, trained in zip(rendered.input_ids, rendered.trained, strict=True)
    ]


def trained_runs(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each contiguous run of tokens that carry a loss."""
    runs: list[list[int]] = []
    previous_trained = False
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token  # a label is the token itself (shifted later)
            if not previous_trained:
                runs.append([])
            runs[-1].append(token)
        previous_trained = trained
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def test_chat_template_of_prefers_the_tokenizers_own(
    plain_tokenizer: Any, chat_tokenizer: Any
) -> None:
    assert chat_template_of(chat_tokenizer) == CHATML_TEMPLATE
    assert chat_template_of(plain_tokenizer) == DEFAULT_CHAT_TEMPLATE


def test_loss_mask_is_exactly_every_assistant_turn_with_a_chat_template(
    chat_tokenizer: Any,
) -> None:
    rendered = render_conversation(chat_tokenizer, CONVERSATION, CHATML_TEMPLATE)
    labels = labels_of(rendered)
    # Each assistant turn with the template's end-of-turn marker, nothing else.
    assert trained_runs(chat_tokenizer, rendered.input_ids, labels) == [
        "5<|im_end|>\n",
        "It is 8.<|im_end|>\n",
    ]
    # The tokens are the whole rendered conversation, in order.
    expected_text = chat_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CONVERSATION], tokenize=False
    )
    assert chat_tokenizer.decode(rendered.input_ids, skip_special_tokens=False) == expected_text
    # The special tokens are single tokens, as the model's own tokenizer encodes them.
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert rendered.input_ids.count(im_end) == len(CONVERSATION)


def test_loss_mask_with_the_default_template_when_the_tokenizer_has_none(
    plain_tokenizer: Any,
) -> None:
    example = Example("", "", messages=CONVERSATION)
    [tokenized], dropped = tokenize([example], plain_tokenizer, max_length=512)
    assert dropped == 0
    eos = plain_tokenizer.eos_token
    assert trained_runs(plain_tokenizer, tokenized.input_ids, tokenized.labels) == [
        f"5{eos}",
        f"It is 8.{eos}",
    ]
    text = plain_tokenizer.decode(tokenized.input_ids, skip_special_tokens=False)
    assert text == (
        f"{plain_tokenizer.bos_token}### System:\nYou answer briefly.\n"
        f"### User:\nWhat is 2 + 3?\n### Assistant:\n5{eos}"
        f"### User:\nAnd 4 + 4?\n### Assistant:\nIt is 8.{eos}"
    )


def test_the_prompt_tokens_are_those_a_model_sees_at_inference(chat_tokenizer: Any) -> None:
    """Up to the last assistant turn, the tokens equal the tokenized generation prompt."""
    rendered = render_conversation(chat_tokenizer, CONVERSATION, CHATML_TEMPLATE)
    prompt = chat_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in CONVERSATION[:-1]],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt_ids = chat_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert rendered.input_ids[: len(prompt_ids)] == prompt_ids
    assert not rendered.trained[len(prompt_ids) - 1] and rendered.trained[len(prompt_ids)]


def test_a_template_that_rewrites_earlier_turns_still_masks_the_assistant_text(
    chat_tokenizer: Any,
) -> None:
    """A template that renders history differently from the last turn (not a prefix):
    each assistant content is found in the full text instead."""
    rewriting = (
        "{% for message in messages %}"
        "{% if loop.last %}{{ '[last] ' }}{% endif %}"
        "{{ message['role'] + ': ' + message['content'] + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    rendered = render_conversation(chat_tokenizer, CONVERSATION, rewriting)
    labels = labels_of(rendered)
    assert trained_runs(chat_tokenizer, rendered.input_ids, labels) == ["5", "It is 8."]


def test_truncation_keeps_a_prefix_and_drops_conversations_with_nothing_to_learn(
    plain_tokenizer: Any,
) -> None:
    whole = render_conversation(plain_tokenizer, CONVERSATION, DEFAULT_CHAT_TEMPLATE)
    first_trained = whole.trained.index(True)
    max_length = first_trained + 2  # two tokens of the first answer fit
    long_user = Message("user", "word " * 200)
    examples = [
        Example("", "", messages=(long_user, Message("assistant", "ok"))),
        Example("", "", messages=CONVERSATION),
    ]
    tokenized, dropped = tokenize(examples, plain_tokenizer, max_length=max_length)
    assert dropped == 1
    [kept] = tokenized
    assert kept.input_ids == whole.input_ids[:max_length]
    assert [label != IGNORE_INDEX for label in kept.labels] == whole.trained[:max_length]


# -- the two formats in files ------------------------------------------------------


def bedrock_record(*turns: str, system: str | None = "Be brief.") -> dict[str, Any]:
    record: dict[str, Any] = {"schemaVersion": BEDROCK_SCHEMA_VERSION}
    if system is not None:
        record["system"] = [{"text": system}]
    record["messages"] = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": text}]}
        for i, text in enumerate(turns)
    ]
    return record


def openai_record(*turns: str, system: str | None = "Be brief.") -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(turns)
    ]
    return {"messages": messages}


def read(tmp_path: Path, records: list[Any]) -> tuple[list[Example], ValidationErrors]:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    errors = ValidationErrors()
    return read_jsonl(path, URI, "FINE_TUNING", errors), errors


@pytest.mark.parametrize("make", [bedrock_record, openai_record])
def test_both_formats_give_the_same_messages(tmp_path: Path, make: Any) -> None:
    [example], errors = read(tmp_path, [make("Hi", "Hello", "Bye", "Bye now")])
    assert errors.total == 0
    assert example.messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "Bye"),
        Message("assistant", "Bye now"),
    )
    assert example.where == f"{URI}:1"


def test_a_file_may_not_mix_formats(tmp_path: Path) -> None:
    _, errors = read(
        tmp_path,
        [openai_record("a", "b"), bedrock_record("a", "b"), {"prompt": "p", "completion": "c"}],
    )
    assert errors.shown == [
        f"{URI}:2: this record is bedrock-conversation-2024 but the file's first record "
        "(line 1) is openai-messages; a file may not mix formats",
        f"{URI}:3: this record is prompt-completion but the file's first record (line 1) "
        "is openai-messages; a file may not mix formats",
    ]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (openai_record("a"), "must end with an assistant message"),
        (openai_record("a", "b", "c", system=None), "must end with an assistant message"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "turn 1 is assistant"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]},
            "a system message may only come first",
        ),
        ({"messages": [{"role": "user", "content": "  "}]}, '"content" must be a non-empty'),
        ({"messages": [{"role": "bot", "content": "x"}]}, '"role" must be'),
        ({"messages": []}, '"messages" must be a non-empty array'),
        ({"messages": [{"role": "system", "content": "s"}]}, "no user or assistant message"),
        (
            {**bedrock_record("a", "b"), "schemaVersion": "v0"},
            '"schemaVersion" must be "bedrock-conversation-2024"',
        ),
        ({**bedrock_record("a", "b"), "system": [{"txt": "s"}]}, '"system"[0] must be'),
        (
            {
                "schemaVersion": BEDROCK_SCHEMA_VERSION,
                "messages": [{"role": "user", "content": []}],
            },
            '"messages"[0]."content" must be a non-empty array',
        ),
    ],
)
def test_each_conversation_problem_is_named(
    tmp_path: Path, record: dict[str, Any], problem: str
) -> None:
    examples, errors = read(tmp_path, [record])
    assert examples == []
    assert errors.total >= 1
    assert errors.shown[0].startswith(f"{URI}:1: ")
    assert problem in errors.shown[0], errors.shown


def openai_parts_record(*turns: str, system: str | None = "Be brief.") -> dict[str, Any]:
    """OpenAI's chat format with contents as lists of typed parts (two text parts for the
    first user turn, so the joining is exercised)."""
    record = openai_record(*turns, system=system)
    for message in record["messages"]:
        message["content"] = [{"type": "text", "text": message["content"]}]
    record["messages"][1 if system else 0]["content"].append({"type": "text", "text": "More."})
    return record


def test_openai_text_parts_are_read_as_openai_messages(tmp_path: Path) -> None:
    record = openai_parts_record("Hi", "Hello")
    assert record_format(record) == OPENAI
    assert record_format({"messages": [{"role": "user", "content": [{"text": "x"}]}]}) == BEDROCK
    [example, _], errors = read(tmp_path, [record, openai_record("a", "b")])
    assert errors.total == 0, errors.shown
    assert example.messages == (
        Message("system", "Be brief."),
        Message("user", "Hi\nMore."),
        Message("assistant", "Hello"),
    )


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            """"messages"[1]."content"[1] is a 'image_url' part; only text parts""",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            """"messages"[1]."content"[1] is a 'input_audio' part; only text parts""",
        ),
        (
            {"type": "text", "text": " "},
            """"messages"[1]."content"[1] must be {"type": "text", "text": <non-empty""",
        ),
    ],
)
def test_a_non_text_openai_part_is_named_with_file_and_line(
    tmp_path: Path, part: dict[str, Any], problem: str
) -> None:
    record = openai_parts_record("Hi", "Hello")
    record["messages"][1]["content"][1] = part
    examples, errors = read(tmp_path, [openai_record("a", "b"), record])
    assert len(examples) == 1
    assert len(errors.shown) == 1
    assert errors.shown[0].startswith(f"{URI}:2: {problem}"), errors.shown
