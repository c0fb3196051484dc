"""Tokenizing training examples, per customization type, with loss masking.

FINE_TUNING: prompt/completion pairs and conversations, labels IGNORE_INDEX where no loss
is taken (the prompt; every turn but the assistant's). CONTINUED_PRE_TRAINING: documents
split into chunks of the sequence length, nothing truncated away. CLASSIFICATION: the
text, truncated as the tokenizer truncates, and its class id. Each returns the
`TokenizedExample`s batching and packing take (trainer/data.py, trainer/packing.py).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer import conversations
from trainer.data import IGNORE_INDEX, Example, TokenizedExample

log = logging.getLogger(__name__)

# Texts the fast path must encode exactly as the tokenizer's own call does before it is
# used: spaces, newlines, digits, punctuation, accents, CJK, an emoji.
_PROBE_TEXTS = [
    "What is 1 + 1?\nAnswer:",
    " 2",
    "  leading spaces, trailing space ",
    "Crème brûlée, naïve café; 東京 🚀",
    "line one\n\nline three\tend",
]


class BatchTokenizer:
    """A fast tokenizer whose batch call on a plain list of texts goes straight to its
    Rust backend (`encode_batch_fast`: no offsets, no Python objects per token but the
    ids), about twice as fast as transformers' wrapper, which builds attention masks
    and offsets it then throws away. Every other call, and every attribute, is the
    tokenizer's own. Made by `fast_batch_tokenizer`, which checks it first."""

    def __init__(self, tokenizer: Any, backend: Any) -> None:
        self.tokenizer = tokenizer
        self.backend = backend

    def __call__(self, text: Any, **options: Any) -> Any:
        if isinstance(text, list) and set(options) <= {"add_special_tokens"}:
            add_special_tokens = bool(options.get("add_special_tokens", True))
            return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}
        return self.tokenizer(text, **options)

    def encode(self, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
        if not texts:
            return []
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def fast_batch_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer` with the faster batch call (BatchTokenizer) when it has a Rust backend
    that, copied without truncation and padding, encodes the probe texts exactly as the
    tokenizer does (with and without special tokens); else `tokenizer` itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer
    # A copy of its own: transformers sets truncation and padding on the tokenizer's
    # backend for each call that asks for them (tokenizer.json may set them too).
    backend = copy.deepcopy(backend)
    backend.no_truncation()
    backend.no_padding()
    fast = BatchTokenizer(tokenizer, backend)
    for add_special_tokens in (True, False):
        expected = tokenizer(_PROBE_TEXTS, add_special_tokens=add_special_tokens)["input_ids"]
        if fast.encode(_PROBE_TEXTS, add_special_tokens=add_special_tokens) != [
            list(ids) for ids in expected
        ]:
            log.warning("the tokenizer's backend encodes differently; using its own batch call")
            return tokenizer
    return fast


def encode_fine_tuning(
    examples: Sequence[Example],
    tokenizer: Any,
    template: str | None = None,
    *,
    last_turn_only: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each example, whole (not truncated).

    prompt/completion: the prompt with the tokenizer's special tokens (e.g. BOS), the
    completion, EOS; labels IGNORE_INDEX on the prompt. A conversation: rendered with
    `template` (default: the tokenizer's chat template, else DEFAULT_CHAT_TEMPLATE);
    labels on the assistant turns only (trainer/conversations.py), or with
    `last_turn_only` (a preference answer) on the last assistant turn only.
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
        if last_turn_only:
            labels = _last_target_run(labels)
        encoded[index] = (rendered.input_ids, labels)
    return encoded


def _last_target_run(labels: list[int]) -> list[int]:
    """`labels` with every target before its last run of targets ignored."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:]


@dataclass(frozen=True)
class FlatPairs:
    """prompt/completion records tokenized and truncated straight into flat arrays: what
    `encode_fine_tuning` then `truncate` give, record by record, without a Python list
    per record."""

    tokens: np.ndarray[Any, Any]  # int64, the kept records' tokens end to end
    trained: np.ndarray[Any, Any]  # bool per token: a loss is taken on it
    lengths: np.ndarray[Any, Any]  # int64 per kept record, after truncation
    full_lengths: np.ndarray[Any, Any]  # int64 per record, before truncation
    prompt_lengths: np.ndarray[Any, Any]  # int64 per record: where its completion starts
    kept: np.ndarray[Any, Any]  # bool per record: a target token is left within max_length


def _flat_ids(encoded: list[list[int]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int64, int(lengths.sum()))
    return flat, lengths


def encode_pairs_flat(
    prompts: list[str], completions: list[str], tokenizer: BatchTokenizer, max_length: int
) -> FlatPairs:
    """Each record: the prompt with the tokenizer's special tokens, the completion, EOS;
    a loss on the completion and EOS; cut to `max_length` tokens. A record is dropped
    (`kept` False) when no target is left past position 0, as `truncate` drops it."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    prompt_flat, prompt_lengths = _flat_ids(tokenizer.encode(prompts, add_special_tokens=True))
    completion_flat, completion_lengths = _flat_ids(
        tokenizer.encode(completions, add_special_tokens=False)
    )
    full_lengths = prompt_lengths + completion_lengths + 1
    kept_lengths = np.minimum(full_lengths, max_length)
    # Targets are positions prompt_length .. full_length - 1; one must be past position 0.
    kept = np.maximum(prompt_lengths, 1) < kept_lengths
    # The whole records end to end, then cut: a position is kept if it is within its
    # record's kept length and the record is kept.
    starts = np.cumsum(full_lengths) - full_lengths
    total = int(full_lengths.sum())
    tokens = np.empty(total, np.int64)
    trained = np.zeros(total, bool)
    prompt_positions = np.repeat(starts, prompt_lengths) + _within(prompt_lengths)
    tokens[prompt_positions] = prompt_flat
    completion_positions = np.repeat(starts + prompt_lengths, completion_lengths) + _within(
        completion_lengths
    )
    tokens[completion_positions] = completion_flat
    trained[completion_positions] = True
    eos_positions = starts + prompt_lengths + completion_lengths
    tokens[eos_positions] = eos
    trained[eos_positions] = True
    keep = (_within(full_lengths) < np.repeat(kept_lengths, full_lengths)) & np.repeat(
        kept, full_lengths
    )
    return FlatPairs(
        tokens=tokens[keep],
        trained=trained[keep],
        lengths=kept_lengths[kept],
        full_lengths=full_lengths,
        prompt_lengths=prompt_lengths,
        kept=kept,
    )


def _within(lengths: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """0, 1, ..., n - 1 for each n of `lengths`, end to end."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)


def truncate(input_ids: list[int], labels: list[int], max_length: int) -> TokenizedExample | None:
    """The example cut to `max_length` tokens, or None when no target token is left.

    Position 0 is never predicted (nothing comes before it), so it does not count."""
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    predicted = labels[1:]
    if predicted.count(IGNORE_INDEX) == len(predicted):  # (list.count: a C loop)
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
