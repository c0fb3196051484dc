"""Conversations: the two accepted formats, their checks, and rendering with a loss mask.

Two JSONL record formats hold a conversation (FINE_TUNING):

    Bedrock  {"schemaVersion": "bedrock-conversation-2024",
              "system": [{"text": ...}],                          (optional)
              "messages": [{"role": "user" | "assistant", "content": [{"text": ...}]}]}
    OpenAI   {"messages": [{"role": "system" | "user" | "assistant", "content": ...}]}
             where "content" is a string or a list of content parts
             [{"type": "text", "text": ...}, ...]

Both become one list of `Message`s: an optional system message first, then user and
assistant turns alternating, starting with the user and ending with the assistant.
Several text blocks of one Bedrock message, or text parts of one OpenAI message, are
joined with a newline. OpenAI parts of any other type (image_url, input_audio, file)
are refused: the trainer trains text models only.

Rendering: the base model tokenizer's own `chat_template` when it has one, otherwise
`DEFAULT_CHAT_TEMPLATE` (documented in docs/data.md, "Data formats: conversations").
Templates run in transformers' sandboxed Jinja environment (`apply_chat_template`);
nothing else of a model's files is ever executed.

Loss mask, by incremental rendering: for assistant turn i, the text of the conversation
up to the turn with the generation prompt (what a model sees at inference) is a prefix
of the text through the turn; the difference is the assistant's text plus whatever the
template closes the turn with (its end-of-turn token), and that is what the model
learns. The text is tokenized segment by segment at those boundaries, so the labels
cover exactly the assistant segments (every assistant turn), and the tokens of the
prompt part are the ones the model sees at inference. A template that does not render
incrementally (it rewrites earlier turns) falls back to locating each assistant content
in the full text: the turn's text is learned, its end-of-turn marker is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BEDROCK_SCHEMA_VERSION = "bedrock-conversation-2024"

# The template for a base model whose tokenizer has none. Plain-text role headers that
# any tokenizer can encode; each assistant turn ends with the EOS token, so the model
# learns to stop. Rendered, a two-turn conversation with a system prompt reads:
#
#   <s>### System:
#   You are terse.
#   ### User:
#   Hi
#   ### Assistant:
#   Hello.</s>### User:
#   ...
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Assistant:\\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}"
    "{{ '### System:\\n' + message['content'] + '\\n' }}"
    "{% else %}"
    "{{ '### User:\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
BEDROCK, OPENAI = "bedrock-conversation-2024", "openai-messages"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class RenderedConversation:
    """Token ids and, per token, whether the loss is taken on it (an assistant token)."""

    input_ids: list[int]
    trained: list[bool]


# -- parsing and checks --------------------------------------------------------------


def record_format(record: dict[str, Any]) -> str | None:
    """BEDROCK or OPENAI for a conversation record, None for any other record.

    Bedrock's records say so (`schemaVersion`), or carry `system` or message contents
    as lists of untyped `{"text": ...}` blocks. OpenAI's content parts always carry a
    `"type"`, so a list content with a typed part is OpenAI's; a `messages` record with
    string contents is OpenAI's too. (A list of untyped blocks without `schemaVersion`
    stays Bedrock's, so its error says the schemaVersion is missing.)"""
    if "schemaVersion" in record or isinstance(record.get("system"), list):
        return BEDROCK
    if "messages" not in record:
        return None
    messages = record["messages"]
    if not isinstance(messages, list):
        return OPENAI
    contents = [m.get("content") for m in messages if isinstance(m, dict)]
    list_contents = [c for c in contents if isinstance(c, list)]
    typed_part = any(
        isinstance(part, dict) and "type" in part for content in list_contents for part in content
    )
    if list_contents and not typed_part:
        return BEDROCK
    return OPENAI


def _text_blocks(value: Any, where: str) -> tuple[str | None, list[str]]:
    """Bedrock content: a non-empty list of {"text": non-empty string}, joined by "\\n"."""
    if not isinstance(value, list) or not value:
        return None, [f'{where} must be a non-empty array of {{"text": ...}} blocks']
    texts, problems = [], []
    for index, block in enumerate(value):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f'{where}[{index}] must be {{"text": <non-empty string>}}')
        else:
            texts.append(text)
    return ("\n".join(texts) if not problems else None), problems


def parse_bedrock(record: dict[str, Any]) -> tuple[list[Message], list[str]]:
    problems = []
    if record.get("schemaVersion") != BEDROCK_SCHEMA_VERSION:
        problems.append(f'"schemaVersion" must be "{BEDROCK_SCHEMA_VERSION}"')
    messages: list[Message] = []
    if "system" in record:
        system, found = _text_blocks(record["system"], '"system"')
        problems += found
        if system is not None:
            messages.append(Message(SYSTEM, system))
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        return [], [*problems, '"messages" must be a non-empty array']
    for index, message in enumerate(raw):
        where = f'"messages"[{index}]'
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object")
            continue
        role = message.get("role")
        if role not in (USER, ASSISTANT):
            problems.append(f'{where}: "role" must be "user" or "assistant", got {role!r}')
            continue
        content, found = _text_blocks(message.get("content"), f'{where}."content"')
        problems += found
        if content is not None:
            messages.append(Message(role, content))
    return messages, problems


def parse_openai(record: dict[str, Any]) -> tuple[list[Message], list[str]]:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        return [], ['"messages" must be a non-empty array']
    messages, problems = [], []
    for index, message in enumerate(raw):
        where = f'"messages"[{index}]'
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object")
            continue
        role = message.get("role")
        if role not in (SYSTEM, USER, ASSISTANT):
            problems.append(
                f'{where}: "role" must be "system", "user" or "assistant", got {role!r}'
            )
            continue
        content, found = openai_content(message.get("content"), f'{where}."content"')
        problems += found
        if content is not None:
            messages.append(Message(role, content))
    return messages, problems


def openai_content(value: Any, where: str) -> tuple[str | None, list[str]]:
    """OpenAI content: a non-empty string, or a non-empty list of text parts
    `{"type": "text", "text": <non-empty string>}` joined by "\n"."""
    if isinstance(value, str):
        if value.strip():
            return value, []
        return None, [f"{where} must be a non-empty string or array of text parts"]
    if not isinstance(value, list) or not value:
        return None, [f"{where} must be a non-empty string or array of text parts"]
    texts, problems = [], []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text") if isinstance(part, dict) else None
        if kind is not None and kind != "text":
            problems.append(
                f"{where}[{index}] is a {kind!r} part; only text parts are supported "
                "(the trainer fine-tunes text models)"
            )
        elif kind is None or not isinstance(text, str) or not text.strip():
            problems.append(
                f'{where}[{index}] must be {{"type": "text", "text": <non-empty string>}}'
            )
        else:
            texts.append(text)
    return ("\n".join(texts) if not problems else None), problems


def role_order_problem(messages: Sequence[Message]) -> str | None:
    """What is wrong with the order of the roles, or None: a system message only first,
    then user and assistant alternating, starting with user, ending with assistant."""
    roles = [m.role for m in messages]
    turns = roles[1:] if roles and roles[0] == SYSTEM else roles
    if not turns:
        return "the conversation has no user or assistant message"
    if SYSTEM in turns:
        return "a system message may only come first"
    for index, role in enumerate(turns):
        expected = USER if index % 2 == 0 else ASSISTANT
        if role != expected:
            return (
                f"roles must alternate user, assistant, user, ...: turn {index + 1} is "
                f"{role}, expected {expected}"
            )
    if turns[-1] != ASSISTANT:
        return "the conversation must end with an assistant message (nothing to learn)"
    return None


def parse_conversation(
    record: dict[str, Any], record_kind: str
) -> tuple[tuple[Message, ...] | None, list[str]]:
    """The messages of a BEDROCK or OPENAI record, or what is wrong with it."""
    if record_kind == BEDROCK:
        messages, problems = parse_bedrock(record)
    else:
        messages, problems = parse_openai(record)
    if problems:
        return None, problems
    order = role_order_problem(messages)
    if order is not None:
        return None, [order]
    return tuple(messages), []


# -- rendering -----------------------------------------------------------------------


def chat_template_of(tokenizer: Any) -> str:
    """The template conversations are rendered with: the tokenizer's, else the default."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template.strip():
        return template
    if isinstance(template, dict) and isinstance(template.get("default"), str):
        return str(template["default"])
    return DEFAULT_CHAT_TEMPLATE


def _render(
    tokenizer: Any, messages: Sequence[Message], template: str, *, generation_prompt: bool
) -> str:
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(
        conversation,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    return str(text)


def assistant_spans(
    tokenizer: Any, messages: Sequence[Message], template: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss is taken on."""
    full = _render(tokenizer, messages, template, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    incremental = True
    for index, message in enumerate(messages):
        if message.role != ASSISTANT:
            continue
        before = _render(tokenizer, messages[:index], template, generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], template, generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            incremental = False
            break
        spans.append((len(before), len(through)))
    if incremental:
        return full, spans
    # The template rewrites earlier turns: find each assistant text, in order.
    spans, cursor = [], 0
    for message in messages:
        if message.role != ASSISTANT:
            continue
        start = full.find(message.content, cursor)
        if start < 0:
            raise ValueError("the chat template does not render the assistant's text verbatim")
        spans.append((start, start + len(message.content)))
        cursor = start + len(message.content)
    return full, spans


def render_conversation(
    tokenizer: Any, messages: Sequence[Message], template: str
) -> RenderedConversation:
    """Tokens of the rendered conversation, each marked trained or not.

    The text is tokenized in segments cut at the assistant spans, without adding special
    tokens (a chat template writes its own, e.g. BOS), so every token lies wholly in or
    wholly out of an assistant span."""
    text, spans = assistant_spans(tokenizer, messages, template)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in spans:
        segments.append((text[cursor:start], False))
        segments.append((text[start:end], True))
        cursor = end
    segments.append((text[cursor:], False))
    segments = [(piece, trained) for piece, trained in segments if piece]
    encoded = tokenizer([piece for piece, _ in segments], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    trained_flags: list[bool] = []
    for ids, (_, trained) in zip(encoded, segments, strict=True):
        input_ids += ids
        trained_flags += [trained] * len(ids)
    return RenderedConversation(input_ids, trained_flags)
