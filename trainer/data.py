"""Training data: download, validate every line, batch (tokenizing: trainer/tokenization.py).

Validation runs before any model is loaded (state VALIDATING, CPU only), so a typo on
line 90,000 costs the user seconds, not a GPU hour. Every error names the file and the
line: `s3://bucket/key:LINE: what is wrong`.

FINE_TUNING files hold one record format each: {"prompt", "completion"}, or
conversations (Bedrock's or OpenAI's, see trainer/conversations.py). Every record
becomes an `Example`; every example a `TokenizedExample` (input_ids + labels, labels
IGNORE_INDEX where no loss is taken), the per-example form batching and packing take.

PREFERENCE files (DPO) hold one format each too: {"prompt", "chosen", "rejected"}, or
OpenAI's {"input": {"messages"}, "preferred_output", "non_preferred_output"}. A record
is one `Example` with both answers; it becomes two `TokenizedExample`s, the chosen one
then the rejected one, next to each other (trainer/preference.py pairs them again).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import conversations
from trainer.conversations import Message
from trainer.errors import DataValidationError

IGNORE_INDEX = -100  # label value that cross_entropy skips: no loss on this position
MAX_ERRORS_SHOWN = 20

FINE_TUNING = "FINE_TUNING"
CONTINUED_PRE_TRAINING = "CONTINUED_PRE_TRAINING"
CLASSIFICATION = "CLASSIFICATION"
PREFERENCE = "PREFERENCE"
CUSTOMIZATION_TYPES = (FINE_TUNING, CONTINUED_PRE_TRAINING, CLASSIFICATION, PREFERENCE)

# The record formats of a FINE_TUNING file (one per file).
PROMPT_COMPLETION = "prompt-completion"
RECORD_FORMATS = (PROMPT_COMPLETION, conversations.BEDROCK, conversations.OPENAI)
# The record formats of a PREFERENCE file (one per file).
PROMPT_CHOSEN_REJECTED = "prompt-chosen-rejected"
OPENAI_PREFERENCE = "openai-preference"


@dataclass(frozen=True)
class Example:
    """One record. Loss is taken on `completion` only; pre-training text has no prompt.

    A classification record keeps its text in `completion`, its label (as a string) in
    `label`. A conversation keeps its turns in `messages` (prompt and completion empty);
    its loss is on the assistant turns. A preference record keeps its chosen answer as
    the completion (or the last turn of `messages`) and its rejected one in `rejected`
    (or the last turn of `rejected_messages`). `where` is where it came from
    (`uri:line`), for the messages about it."""

    prompt: str
    completion: str
    label: str | None = None
    where: str = field(default="", compare=False)
    messages: tuple[Message, ...] | None = None
    rejected: str | None = None
    rejected_messages: tuple[Message, ...] | None = None

    def preference_sides(self) -> tuple[Example, Example]:
        """A preference record as two plain examples: the chosen answer, the rejected one."""
        chosen = Example(self.prompt, self.completion, where=self.where, messages=self.messages)
        rejected = Example(
            self.prompt, self.rejected or "", where=self.where, messages=self.rejected_messages
        )
        return chosen, rejected


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken (the prompt)
    # Classification: `labels` is [class id], one label for the whole sequence.
    classification: bool = False


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # (batch, width) token labels; (batch,) class ids if classification
    classification: bool = False

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.classification,
        )

    @property
    def target_tokens(self) -> int:
        """Positions that carry a loss once labels are shifted for next-token prediction;
        for classification, the examples (one loss term each)."""
        if self.classification:
            return int(self.labels.numel())
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class ValidationErrors:
    """Problems found so far, across all files: the first few in full, all counted."""

    shown: list[str] = field(default_factory=list)
    total: int = 0
    # How many are kept in full: a failing job's message lists 20; a dry run's report
    # (trainer/dry_run.py) many more.
    limit: int = MAX_ERRORS_SHOWN

    def add(self, where: str, problem: str) -> None:
        self.total += 1
        if len(self.shown) < self.limit:
            self.shown.append(f"{where}: {problem}")

    def extend(self, other: ValidationErrors) -> None:
        """Add `other`'s problems after these (its count whole, its first few shown)."""
        room = self.limit - len(self.shown)
        self.shown += other.shown[: max(room, 0)]
        self.total += other.total

    def message(self) -> str:
        head = f"the data has {self.total} problem{'s' if self.total != 1 else ''}"
        if self.total > len(self.shown):
            head += f" (the first {len(self.shown)} are listed)"
        return head + ":\n" + "\n".join(self.shown)


# -- reading and validation --------------------------------------------------------


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _non_empty_string(record: dict[str, Any], name: str) -> str | None:
    """The field's value if it is a string with more than whitespace in it, else None."""
    value = record.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _describe(record: dict[str, Any], name: str) -> str:
    if name not in record:
        return f'missing "{name}"'
    return f'"{name}" must be a non-empty string'


def _label(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the label as a string, None) or (None, what is wrong with it)."""
    if "label" not in record:
        return None, 'missing "label"'
    value = record["label"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f'"label" must be a string or an integer, got {_json_type(value)}'
    if isinstance(value, str) and not value.strip():
        return None, '"label" must not be empty'
    return str(value), None


def parse_record(
    record: Any, customization_type: str, where: str = ""
) -> tuple[Example | None, list[str]]:
    """Turn one decoded JSON value into an Example, or say what is wrong with it."""
    if not isinstance(record, dict):
        return None, [f"expected a JSON object, got {_json_type(record)}"]
    if customization_type == CLASSIFICATION:
        text = _non_empty_string(record, "text")
        label, label_problem = _label(record)
        problems = [] if text is not None else [_describe(record, "text")]
        if label_problem is not None:
            problems.append(label_problem)
        if problems:
            return None, problems
        assert text is not None and label is not None
        return Example("", text, label=label, where=where), []
    if customization_type == PREFERENCE:
        return _parse_preference(record, where)
    if customization_type == FINE_TUNING:
        record_format = fine_tuning_format(record)
        if record_format != PROMPT_COMPLETION:
            messages, problems = conversations.parse_conversation(record, record_format)
            if messages is None:
                return None, problems
            return Example("", "", where=where, messages=messages), []
        prompt = _non_empty_string(record, "prompt")
        completion = _non_empty_string(record, "completion")
        if prompt is not None and completion is not None:
            return Example(prompt, completion, where=where), []
        fields = {"prompt": prompt, "completion": completion}
        return None, [_describe(record, name) for name, value in fields.items() if value is None]
    # Continued pre-training: Bedrock's {"input": ...} or the common {"text": ...}.
    text = _non_empty_string(record, "input") or _non_empty_string(record, "text")
    if text is None:
        return None, ['expected a non-empty string "input" or "text"']
    return Example("", text, where=where), []


def fine_tuning_format(record: dict[str, Any]) -> str:
    """The format of a FINE_TUNING record: a conversation format or PROMPT_COMPLETION."""
    return conversations.record_format(record) or PROMPT_COMPLETION


def preference_format(record: dict[str, Any]) -> str:
    """The format of a PREFERENCE record: OpenAI's (it has "input" or the outputs) or
    PROMPT_CHOSEN_REJECTED."""
    openai_fields = ("input", "preferred_output", "non_preferred_output")
    return (
        OPENAI_PREFERENCE
        if any(name in record for name in openai_fields)
        else (PROMPT_CHOSEN_REJECTED)
    )


def _parse_preference(record: dict[str, Any], where: str) -> tuple[Example | None, list[str]]:
    """{"prompt", "chosen", "rejected"} strings, or OpenAI's preference record: the
    conversation so far in "input"."messages" (ending with a user turn) and one
    assistant message in each of "preferred_output" and "non_preferred_output"."""
    if preference_format(record) == PROMPT_CHOSEN_REJECTED:
        fields = {
            name: _non_empty_string(record, name) for name in ("prompt", "chosen", "rejected")
        }
        problems = [_describe(record, name) for name, value in fields.items() if value is None]
        if problems:
            return None, problems
        prompt, chosen, rejected = fields["prompt"], fields["chosen"], fields["rejected"]
        assert prompt is not None and chosen is not None
        return Example(prompt, chosen, where=where, rejected=rejected), []
    problems = []
    source = record.get("input")
    conversation: list[Message] = []
    if not isinstance(source, dict):
        problems.append('"input" must be an object with "messages"')
    else:
        conversation, found = conversations.parse_openai(source)
        problems += [f'"input".{problem}' for problem in found]
    answers: list[Message] = []
    for name in ("preferred_output", "non_preferred_output"):
        value = record.get(name)
        message = value[0] if isinstance(value, list) and len(value) == 1 else None
        if not isinstance(message, dict) or message.get("role") != conversations.ASSISTANT:
            problems.append(
                f'"{name}" must be an array of one {{"role": "assistant", "content": ...}} message'
            )
            continue
        content, found = conversations.openai_content(
            message.get("content"), f'"{name}"[0]."content"'
        )
        problems += found
        if content is not None:
            answers.append(Message(conversations.ASSISTANT, content))
    if problems:
        return None, problems
    preferred, non_preferred = answers
    if conversation[-1].role != conversations.USER:
        return None, [
            f'"input"."messages" must end with a user message (the answers follow it); '
            f"its last one is the {conversation[-1].role}'s"
        ]
    order = conversations.role_order_problem([*conversation, preferred])
    if order is not None:
        return None, [f'"input"."messages": {order}']
    return Example(
        "",
        "",
        where=where,
        messages=(*conversation, preferred),
        rejected_messages=(*conversation, non_preferred),
    ), []


@dataclass
class ReadPosition:
    """How far `iter_jsonl` has read its file, in bytes (for progress reports)."""

    bytes_read: int = 0


def read_jsonl(
    path: Path,
    uri: str,
    customization_type: str,
    errors: ValidationErrors,
    *,
    max_records: int | None = None,
) -> list[Example]:
    """Every well-formed record of a JSONL file as a list (see `iter_jsonl`)."""
    return list(iter_jsonl(path, uri, customization_type, errors, max_records=max_records))


def iter_jsonl(
    path: Path,
    uri: str,
    customization_type: str,
    errors: ValidationErrors,
    *,
    max_records: int | None = None,
    position: ReadPosition | None = None,
) -> Iterator[Example]:
    """Check every line of a JSONL file, reading it line by line: the well-formed records
    as Examples, one at a time; blank lines are skipped, problems collected in `errors`,
    the bytes read so far counted in `position`.

    A FINE_TUNING or PREFERENCE file takes its format from its first record; a record of another
    format is an error (one file, one format). Past `max_records` records, reading
    stops with an error."""
    before = errors.total
    found = False
    file_format: tuple[str, int] | None = None  # (format, line it was set by)
    records = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if position is not None:
                position.bytes_read += len(raw)
            where = f"{uri}:{number}"
            if max_records is not None and records >= max_records and raw.strip():
                errors.add(
                    where,
                    f"more than {max_records:,} records in one file; split the data or "
                    "sample it down",
                )
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                errors.add(where, f"not valid UTF-8 ({error.reason} at byte {error.start})")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                errors.add(where, f"not valid JSON ({error.msg} at column {error.colno})")
                continue
            records += 1
            if customization_type in (FINE_TUNING, PREFERENCE) and isinstance(record, dict):
                record_format = (
                    fine_tuning_format(record)
                    if customization_type == FINE_TUNING
                    else preference_format(record)
                )
                if file_format is None:
                    file_format = (record_format, number)
                elif record_format != file_format[0]:
                    errors.add(
                        where,
                        f"this record is {record_format} but the file's first record (line "
                        f"{file_format[1]}) is {file_format[0]}; a file may not mix formats",
                    )
                    continue
            example, problems = parse_record(record, customization_type, where)
            for problem in problems:
                errors.add(where, problem)
            if example is not None:
                found = True
                yield example
    if not found and errors.total == before:
        errors.add(uri, "no records (the file is empty or has only blank lines)")


def check_customization_type(customization_type: str) -> None:
    if customization_type not in CUSTOMIZATION_TYPES:
        raise DataValidationError(
            f"customizationType {customization_type} is not supported by this trainer; "
            f"use one of {', '.join(CUSTOMIZATION_TYPES)}"
        )


def _label_order(label: str) -> tuple[int, int, str]:
    """Integer labels in numeric order (2 before 10), then string labels sorted."""
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def label_set(
    training: Sequence[Example], validation: Sequence[Example], errors: ValidationErrors
) -> list[str]:
    """The sorted labels of the training data (index = class id). A validation record
    whose label the training data never has is an error naming its file and line."""
    labels = sorted({e.label for e in training if e.label is not None}, key=_label_order)
    known = set(labels)
    shown = ", ".join(json.dumps(label) for label in labels[:20])
    for example in validation:
        if example.label not in known:
            errors.add(
                example.where,
                f"label {json.dumps(example.label)} is not a label of the training data "
                f"(those are {shown}{', ...' if len(labels) > 20 else ''})",
            )
    if training and len(labels) < 2:
        errors.add(
            training[0].where.rsplit(":", 1)[0],
            f"classification needs at least two labels; the training data has only {shown}",
        )
    return labels


# -- batching ----------------------------------------------------------------------


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """Pad to the longest example in this batch (not to max_length): less wasted compute."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    if examples[0].classification:
        for row, example in enumerate(examples):
            input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
            attention_mask[row, : len(example.input_ids)] = 1
        classes = torch.tensor([e.labels[0] for e in examples], dtype=torch.long)
        return Batch(input_ids, attention_mask, classes, classification=True)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels)
    return Batch(input_ids, attention_mask, labels)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator of its own per (seed, epoch): the order of an epoch never depends on
    how much randomness the model or an earlier epoch used, so a resumed run can
    reproduce it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batches(
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Batches in shuffled order when a generator is given, file order otherwise."""
    if generator is None:
        order = list(range(len(examples)))
    else:
        order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)


def batches_per_epoch(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def steps_per_epoch(examples: int, global_batch_size: int, accumulation_steps: int) -> int:
    """Optimizer steps an epoch takes: batches of `global_batch_size` (batchSize x ranks),
    `accumulation_steps` a step, the last window shorter. The recipe's total and a dry
    run's report (trainer/dry_run.py) both come from here."""
    return -(-batches_per_epoch(examples, global_batch_size) // accumulation_steps)
