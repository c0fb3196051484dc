"""Tokenized data on disk: flat token arrays plus an offsets index, memory-mapped.

Preflight (trainer/preflight.py) writes each split here batch by batch; training reads
it through `TokenizedSplit`, a read-only sequence of `TokenizedExample`s that builds an
example only when a batch asks for it. Nothing holds the whole dataset as Python
objects: a million records cost the page cache the files' bytes, shared by every
process that maps them (the ranks of a job on one host), and each process only the
offsets it touches. The layout follows Megatron-LM's indexed datasets (one flat token
file and an offsets index, `np.memmap`).

A directory holds, for each split (training, validation):

    <split>.tokens    token ids, uint16 when the vocabulary fits (< 65,536), else int32
    <split>.trained   uint8 per token: 1 where a loss is taken (causal LM; empty for
                      classification). A label is the token itself or IGNORE_INDEX:
                      every causal-LM label the tokenization makes is one of the two.
    <split>.offsets   int64, examples + 1: example i is tokens[offsets[i]:offsets[i + 1]]
    <split>.classes   int32 class id per example (classification; empty otherwise)

and `meta.json` last, written once every array is complete: the token dtype, the
counts (checked against the files' sizes before anything is mapped), the label set,
the validation summary and the warnings. A directory without a readable meta.json, or
whose files have other sizes, is not tokenized data.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from jobstore.documents import DataSummary
from trainer.data import IGNORE_INDEX, TokenizedExample

FORMAT_VERSION = 2
SPLITS = ("training", "validation")
ARRAYS = ("tokens", "trained", "offsets", "classes")
META = "meta.json"
UINT16_VOCABULARY = 1 << 16


def token_dtype(vocabulary_size: int) -> np.dtype[Any]:
    """The narrowest dtype that holds every token id of a vocabulary."""
    return np.dtype(np.uint16 if vocabulary_size <= UINT16_VOCABULARY else np.int32)


def array_files() -> list[str]:
    """The names of every array file of a directory, in upload order (meta.json last)."""
    return [f"{split}.{array}" for split in SPLITS for array in ARRAYS]


@dataclass(frozen=True)
class TokenizedMeta:
    """meta.json: what the arrays hold and what preflight said about the data."""

    token_dtype: str
    classification: bool
    counts: dict[str, tuple[int, int]]  # split -> (examples, tokens)
    labels: list[str] | None
    summary: DataSummary
    warnings: list[str]

    def to_json(self) -> str:
        return json.dumps(
            {
                "formatVersion": FORMAT_VERSION,
                "tokenDtype": self.token_dtype,
                "classification": self.classification,
                "counts": {split: list(count) for split, count in self.counts.items()},
                "labels": self.labels,
                "summary": self.summary.model_dump(mode="json"),
                "warnings": self.warnings,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenizedMeta:
        """Raises ValueError (or KeyError, TypeError) if `text` is not such a document."""
        document = json.loads(text)
        if document.get("formatVersion") != FORMAT_VERSION:
            raise ValueError(f"format version {document.get('formatVersion')}")
        dtype = str(document["tokenDtype"])
        if dtype not in ("uint16", "int32"):
            raise ValueError(f"token dtype {dtype}")
        counts = {split: tuple(document["counts"][split]) for split in SPLITS}
        for examples, tokens in counts.values():
            if not (isinstance(examples, int) and isinstance(tokens, int)):
                raise ValueError("counts must be integers")
            if examples < 0 or tokens < 0:
                raise ValueError("counts must not be negative")
        labels = document["labels"]
        return cls(
            token_dtype=dtype,
            classification=bool(document["classification"]),
            counts={split: (int(count[0]), int(count[1])) for split, count in counts.items()},
            labels=None if labels is None else [str(label) for label in labels],
            summary=DataSummary.model_validate(document["summary"]),
            warnings=[str(warning) for warning in document["warnings"]],
        )

    def expected_sizes(self) -> dict[str, int]:
        """Each array file's size in bytes."""
        width = np.dtype(self.token_dtype).itemsize
        sizes = {}
        for split in SPLITS:
            examples, tokens = self.counts[split]
            sizes[f"{split}.tokens"] = tokens * width
            sizes[f"{split}.trained"] = 0 if self.classification else tokens
            sizes[f"{split}.offsets"] = (examples + 1) * 8
            sizes[f"{split}.classes"] = examples * 4 if self.classification else 0
        return sizes


class SplitWriter:
    """Appends tokenized examples of one split to its array files, a batch at a time."""

    def __init__(
        self, directory: Path, split: str, dtype: np.dtype[Any], *, classification: bool
    ) -> None:
        self.dtype = dtype
        self.classification = classification
        self.examples = 0
        self.tokens = 0
        self._files = {
            array: (directory / f"{split}.{array}").open("wb", buffering=1 << 20)
            for array in ARRAYS
        }
        self._files["offsets"].write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, examples: Sequence[TokenizedExample]) -> None:
        """Append examples (a label is its token or IGNORE_INDEX; classification: one
        class id)."""
        if not examples:
            return
        lengths = np.fromiter((len(e.input_ids) for e in examples), np.int64, len(examples))
        count = int(lengths.sum())
        ids = np.fromiter(
            itertools.chain.from_iterable(e.input_ids for e in examples), np.int64, count
        )
        if self.classification:
            classes = np.fromiter((e.labels[0] for e in examples), np.int32, len(examples))
            self.add_flat(ids, None, lengths, classes)
            return
        labels = np.fromiter(
            itertools.chain.from_iterable(e.labels for e in examples), np.int64, count
        )
        trained = labels != IGNORE_INDEX
        if not np.array_equal(labels[trained], ids[trained]):
            raise ValueError("a label is neither its token nor IGNORE_INDEX")
        self.add_flat(ids, trained, lengths)

    def add_flat(
        self,
        tokens: np.ndarray[Any, Any],
        trained: np.ndarray[Any, Any] | None,
        lengths: np.ndarray[Any, Any],
        classes: np.ndarray[Any, Any] | None = None,
    ) -> None:
        """Append examples given end to end: their tokens, whether each is trained
        (causal LM), each example's length and (classification) class id."""
        limit = np.iinfo(self.dtype).max
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) > limit):
            raise ValueError(f"a token id is outside 0..{limit} ({self.dtype})")
        self._files["tokens"].write(tokens.astype(self.dtype).tobytes())
        if self.classification:
            assert classes is not None
            self._files["classes"].write(classes.astype(np.int32).tobytes())
        else:
            assert trained is not None
            self._files["trained"].write(trained.astype(np.uint8).tobytes())
        ends = self.tokens + np.cumsum(lengths)
        self._files["offsets"].write(ends.astype(np.int64).tobytes())
        self.examples += len(lengths)
        self.tokens += int(lengths.sum())

    def close(self) -> tuple[int, int]:
        """Flush the files; (examples, tokens) written."""
        for file in self._files.values():
            file.close()
        return self.examples, self.tokens


def write_meta(directory: Path, meta: TokenizedMeta) -> None:
    """Commit a directory: meta.json, written whole (a rename) after every array."""
    partial = directory / (META + ".partial")
    partial.write_text(meta.to_json(), encoding="utf-8")
    os.replace(partial, directory / META)


def read_meta(directory: Path) -> TokenizedMeta | None:
    """The directory's meta.json if it is there and its arrays have the sizes it says."""
    try:
        meta = TokenizedMeta.from_json((directory / META).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, size in meta.expected_sizes().items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return meta


def _mapped(path: Path, dtype: np.dtype[Any] | type) -> np.ndarray[Any, Any]:
    """The file as a read-only array (an empty file maps to an empty array)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class TokenizedSplit(Sequence[TokenizedExample]):
    """One split of a tokenized directory as a sequence of examples, memory-mapped.

    `split[i]` builds example i from the arrays (lists of Python ints, as batching
    wants them); a slice builds a list. The arrays are never copied whole."""

    def __init__(self, directory: Path, split: str, meta: TokenizedMeta) -> None:
        self.classification = meta.classification
        self._tokens = _mapped(directory / f"{split}.tokens", np.dtype(meta.token_dtype))
        self._trained = _mapped(directory / f"{split}.trained", np.uint8)
        self._offsets = _mapped(directory / f"{split}.offsets", np.int64)
        self._classes = _mapped(directory / f"{split}.classes", np.int32)
        self._count = meta.counts[split][0]

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> TokenizedExample: ...

    @overload
    def __getitem__(self, index: slice) -> list[TokenizedExample]: ...

    def __getitem__(self, index: int | slice) -> TokenizedExample | list[TokenizedExample]:
        if isinstance(index, slice):
            return [self._example(i) for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"example {index} of {self._count}")
        return self._example(index)

    def __iter__(self) -> Iterator[TokenizedExample]:
        for index in range(self._count):
            yield self._example(index)

    def _example(self, index: int) -> TokenizedExample:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        tokens = self._tokens[start:end]
        if self.classification:
            return TokenizedExample(
                tokens.tolist(), [int(self._classes[index])], classification=True
            )
        trained = self._trained[start:end].astype(bool)
        labels = np.where(trained, tokens.astype(np.int64), IGNORE_INDEX)
        return TokenizedExample(tokens.tolist(), labels.tolist())

    def lengths(self) -> np.ndarray[Any, Any]:
        """Every example's length in tokens."""
        return np.diff(np.asarray(self._offsets))


@dataclass(frozen=True)
class TokenizedData:
    """A committed directory, opened: its splits mapped, its meta read."""

    directory: Path
    meta: TokenizedMeta
    training: TokenizedSplit
    validation: TokenizedSplit


def open_tokenized(directory: Path) -> TokenizedData | None:
    """The tokenized data committed in `directory`, or None if there is none."""
    meta = read_meta(directory)
    if meta is None:
        return None
    return TokenizedData(
        directory,
        meta,
        TokenizedSplit(directory, "training", meta),
        TokenizedSplit(directory, "validation", meta),
    )
