"""Tokenizing training examples, per customization type, with loss masking.

FINE_TUNING: prompt/completion pairs and conversations, labels IGNORE_INDEX where no loss
is taken (the prompt; every turn but the assistant's). CONTINUED_PRE_TRAINING: documents
split into chunks of the sequence length, nothing truncated away. CLASSIFICATION: the
text, truncated as the tokenizer truncates, and its class id. Each returns the
`TokenizedExample`s batching and packing take (trainer/data.py, trainer/packing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer import conversations
from trainer.data import IGNORE_INDEX, Example, TokenizedExample


def encode_fine_tuning(
    examples: Sequence[Example], tokenizer: Any, template: str | None = None
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each example, whole (not truncated).

    prompt/completion: the prompt with the tokenizer's special tokens (e.g. BOS), the
    completion, EOS; labels IGNORE_INDEX on the prompt. A conversation: rendered with
    `template` (default: the tokenizer's chat template, else DEFAULT_CHAT_TEMPLATE);
    labels on the assistant turns only (trainer/conversations.py).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    encoded: list[tuple[list[int], list[int]]] = [([], [])] * len(examples)
    pairs = [i for i, e in enumerate(examples) if e.messages is None]
    if pairs:  # whole lists at once: the fast tokenizer encodes them in parallel
        prompts = tokenizer([examples[i].prompt for i in pairs], add_special_tokens=True)
        completions = tokenizer([examples[i].completion for i in pairs], add_special_tokens=False)
        for index, prompt_ids, completion_ids in zip(
            pairs, prompts["input_ids"], completions["input_ids"], strict=True
        ):
            target = [*completion_ids, eos]
            encoded[index] = ([*prompt_ids, *target], [IGNORE_INDEX] * len(prompt_ids) + target)
    chat_template = template or conversations.chat_template_of(tokenizer)
    for index, example in enumerate(examples):
        if example.messages is None:
            continue
        rendered = conversations.render_conversation(tokenizer, example.messages, chat_template)
        labels = [
            token if trained else IGNORE_INDEX
            for token, trained in zip(rendered.input_ids, rendered.trained, strict=True)
        ]
        encoded[index] = (rendered.input_ids, labels)
    return encoded


def truncate(input_ids: list[int], labels: list[int], max_length: int) -> TokenizedExample | None:
    """The example cut to `max_length` tokens, or None when no target token is left.

    Position 0 is never predicted (nothing comes before it), so it does not count."""
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return TokenizedExample(input_ids, labels)


def tokenize(
    examples: Sequence[Example], tokenizer: Any, max_length: int, template: str | None = None
) -> tuple[list[TokenizedExample], int]:
    """FINE_TUNING examples (see `encode_fine_tuning`) cut to `max_length` tokens.

    Returns the examples and how many were dropped because truncation to `max_length`
    left no completion (assistant) token to learn from.
    """
    if not examples:
        return [], 0  # (a fast tokenizer fails on an empty list)
    tokenized, dropped = [], 0
    for input_ids, labels in encode_fine_tuning(examples, tokenizer, template):
        example = truncate(input_ids, labels, max_length)
        if example is None:
            dropped += 1
        else:
            tokenized.append(example)
    return tokenized, dropped


def tokenize_documents(
    examples: Sequence[Example], tokenizer: Any, max_length: int
) -> list[TokenizedExample]:
    """Continued pre-training: each document (with the tokenizer's special tokens and
    EOS) split into consecutive chunks of at most `max_length` tokens, loss on every token
    (encode_documents, then chunk_documents)."""
    return chunk_documents(encode_documents(examples, tokenizer), max_length)


def encode_documents(examples: Sequence[Example], tokenizer: Any) -> list[list[int]]:
    """Each document's token ids: with the tokenizer's special tokens, and EOS last."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    if not examples:
        return []
    encoded = tokenizer([e.completion for e in examples], add_special_tokens=True)["input_ids"]
    return [[*ids, eos] for ids in encoded]


def chunk_documents(documents: Sequence[list[int]], max_length: int) -> list[TokenizedExample]:
    """Encoded documents split into chunks of at most `max_length` tokens.

    Nothing is truncated away. Chunks overlap by one token: the first token of a chunk
    is never predicted (nothing comes before it in the chunk), so starting each chunk on
    the previous chunk's last token makes every token of the document after the first a
    training target exactly once.
    """
    if max_length < 2:
        raise ValueError("maxSequenceLength must be at least 2 to split documents")
    stride = max_length - 1
    chunks = []
    for ids in documents:
        for start in range(0, max(len(ids) - 1, 1), stride):
            chunk = ids[start : start + max_length]
            chunks.append(TokenizedExample(chunk, list(chunk)))
    return chunks


def tokenize_classification(
    examples: Sequence[Example], tokenizer: Any, max_length: int, labels: Sequence[str]
) -> list[TokenizedExample]:
    """Classification: the text truncated to `max_length` tokens, and its class id."""
    return encode_classification(examples, tokenizer, max_length, labels)[0]


def encode_classification(
    examples: Sequence[Example], tokenizer: Any, max_length: int, labels: Sequence[str]
) -> tuple[list[TokenizedExample], list[int]]:
    """Each text truncated to `max_length` tokens with its class id, and each text's
    length in tokens before truncation (what preflight reports and warns about).

    The texts are tokenized once, untruncated; a longer one is then cut as the
    tokenizer's own truncation cuts it: the text's tokens shortened on the tokenizer's
    `truncation_side`, its special tokens ([CLS] ... [SEP], a BOS) kept.
    """
    if not examples:
        return [], []
    ids = {label: index for index, label in enumerate(labels)}
    encoded = [list(e) for e in tokenizer([e.completion for e in examples])["input_ids"]]
    lengths = [len(input_ids) for input_ids in encoded]
    too_long = [index for index, length in enumerate(lengths) if length > max_length]
    frame = special_token_frame(tokenizer)
    if frame is None and too_long:
        # Special tokens that do not simply frame the text: the tokenizer truncates the
        # long texts itself (a second pass over those only).
        again = tokenizer(
            [examples[i].completion for i in too_long], truncation=True, max_length=max_length
        )["input_ids"]
        for index, input_ids in zip(too_long, again, strict=True):
            encoded[index] = list(input_ids)
    elif frame is not None:
        before, after = frame
        keep = max_length - before - after
        left = getattr(tokenizer, "truncation_side", "right") == "left"
        for index in too_long:
            full = encoded[index]
            text = full[before : len(full) - after]
            text = text[len(text) - keep :] if left else text[:keep]
            encoded[index] = full[:before] + text + full[len(full) - after :]
    tokenized = [
        TokenizedExample(input_ids, [ids[str(e.label)]], classification=True)
        for input_ids, e in zip(encoded, examples, strict=True)
    ]
    return tokenized, lengths


def special_token_frame(tokenizer: Any) -> tuple[int, int] | None:
    """(special tokens before, after) the text's own tokens in what `tokenizer` encodes
    for one text, or None if a probe text's tokens are not one run inside it."""
    probe = "a short probe text"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if bare and full[start : start + len(bare)] == bare:
            return start, len(full) - start - len(bare)
    return None
