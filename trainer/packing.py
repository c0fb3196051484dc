"""Packing: the examples of a batch laid end to end in a few full rows, no padding to
the longest example, with attention that never crosses examples.

Instruction data has very uneven lengths, so a padded batch spends most of its compute
on padding. A packed batch holds the same examples (the same `batchSize`, so optimizer
steps, data order and loss normalisation are unchanged) as consecutive segments of one
or a few rows. Invariants, each checked by tests/trainer/test_packing.py:

- position ids restart at 0 at every example, as if it were alone in its row;
- no token attends to a token of another example: a block-diagonal causal mask
  (SDPA / eager attention), or flash-attention's variable-length path, which reads the
  example boundaries from the position ids (one row, no mask at all);
- the label of each example's first token is IGNORE_INDEX, so the next-token shift in
  trainer/loss.py never asks the previous example's last token to predict it. Position 0
  is never a target in unpacked training either, so the target tokens, the summed loss
  and its gradient are those of the same examples run one at a time.

With a mask, attention over a row costs width² however the row is split into
examples, so one huge row can cost more than the padding it saves. The layout is the
cheapest of: k = 1, 2, ... rows filled first-fit-decreasing to the narrowest width that
needs no more than k rows,
by a simple cost model (rows * width * (weights per token + attention per token over the
width), both read off the model's size); no row is longer than twice the job's sequence
length (`row_length`) or the longest example. Rows are padded to the widest row only;
that tail is its own segment (it attends only to itself, so no softmax row is empty) and
carries no loss. Flash-attention's varlen kernel costs each example its own length²: one
row, no padding at all.

Only architectures whose attention and positions are known to follow position ids and
a 4D mask are packed (`PACKABLE_MODEL_TYPES`); any other falls back to padded batches
with a log line. Classification never packs: its head pools one vector per row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.data import IGNORE_INDEX, Batch, TokenizedExample

log = logging.getLogger(__name__)

# Causal LMs whose forward takes position_ids (rotary or learned positions computed from
# them, nothing derived from a 2D padding mask) and passes a 4D attention mask through
# unchanged. Each is covered by the equivalence test. ALiBi models (e.g. Bloom) build
# their biases from the 2D padding mask and would see one long sequence: not packable.
PACKABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gpt2"})
# Attention implementations with a variable-length kernel that splits a single row at
# the points where position_ids restart (transformers' padding-free path).
VARLEN_ATTENTION_PREFIXES = ("flash_attention", "kernels-community/flash-attn")


@dataclass(kw_only=True)
class PackedBatch(Batch):
    """A Batch whose rows hold several examples each.

    `attention_mask` stays the 2D "real token" mask (1 for every example token, 0 for a
    row's padding tail), so token counts read off it as for a padded batch; the model
    gets `model_inputs()` instead: position ids restarting per example and the
    block-diagonal attention.
    """

    position_ids: torch.Tensor  # (rows, width), 0 at each example's first token
    segment_ids: torch.Tensor  # (rows, width), the example a token belongs to, per row
    varlen: bool  # flash-attention varlen path: no mask, one row
    additive_mask: bool  # eager attention adds the mask to the scores: 0 / -inf floats

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            position_ids=self.position_ids.to(device),
            segment_ids=self.segment_ids.to(device),
            varlen=self.varlen,
            additive_mask=self.additive_mask,
        )

    def block_diagonal_mask(self) -> torch.Tensor:
        """(rows, 1, width, width): True where query token i may attend to key token j,
        i.e. j <= i and both belong to the same example (or to the padding tail)."""
        width = self.input_ids.size(1)
        same_segment = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool, device=self.input_ids.device).tril()
        return (same_segment & causal)[:, None, :, :]

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for the model's forward."""
        if self.varlen:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids}
        mask: torch.Tensor = self.block_diagonal_mask()
        if self.additive_mask:
            blocked = torch.finfo(torch.float32).min
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, blocked)
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": mask,
        }


def packing_refusal(model: Any, row_length: int) -> str | None:
    """Why `model` cannot be trained on packed rows of `row_length` tokens, or None."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return f"architecture {model_type!r} is not known to pack safely"
    # The packed mask replaces the model's own, so a sliding window shorter than an
    # example would be lost; one at least as long as a row never restricts anything.
    window = getattr(config, "sliding_window", None)
    in_use = getattr(config, "use_sliding_window", True)
    if in_use and isinstance(window, int) and window < row_length:
        return f"{model_type}'s sliding attention window ({window}) is shorter than a row"
    return None


class Packer:
    """Turns the padded batches of trainer/data.py into packed ones for one model."""

    def __init__(
        self, *, row_length: int, pad_id: int, attention: str, attention_cost: float = 0.0
    ) -> None:
        """`attention_cost`: the attention compute of one token per token of row width,
        relative to the compute its weights cost (see `attention_cost`); 0 packs for the
        fewest computed tokens."""
        self.row_length = row_length
        self.pad_id = pad_id
        self.attention_cost = attention_cost
        self.varlen = attention.startswith(VARLEN_ATTENTION_PREFIXES)
        self.additive_mask = attention == "eager"

    @classmethod
    def for_model(cls, model: Any, *, row_length: int, pad_id: int) -> Packer | None:
        """A packer for `model`, or None (logged) when the model must get padded batches."""
        refusal = packing_refusal(model, row_length)
        if refusal is not None:
            log.warning("packing is off for this job: %s; batches are padded instead", refusal)
            return None
        attention = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
        packer = cls(
            row_length=row_length,
            pad_id=pad_id,
            attention=attention,
            attention_cost=attention_cost(model),
        )
        log.info(
            "packing batches (%s attention, %s)",
            attention,
            "variable-length, one row"
            if packer.varlen
            else f"rows of up to {2 * row_length} tokens",
        )
        return packer

    def pack_batch(self, batch: Batch) -> Batch:
        """The examples of a padded batch, packed. Classification batches pass through."""
        if batch.classification:
            return batch
        examples = []
        for ids, mask, labels in zip(
            batch.input_ids, batch.attention_mask, batch.labels, strict=True
        ):
            length = int(mask.sum())  # data.collate pads on the right only
            examples.append((ids[:length], labels[:length]))
        return self.pack(examples)

    def pack_examples(self, examples: Sequence[TokenizedExample]) -> Batch:
        """Collate tokenized examples straight into a packed batch."""
        return self.pack(
            [
                (torch.tensor(e.input_ids, dtype=torch.long), torch.tensor(e.labels))
                for e in examples
            ]
        )

    def pack(self, examples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> PackedBatch:
        """(input_ids, labels) pairs, one per example, laid out in packed rows."""
        lengths = [len(ids) for ids, _ in examples]
        # The varlen kernel needs a single row, and it costs nothing to make it wide.
        rows = [list(range(len(examples)))] if self.varlen else self.layout(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        segment_ids = torch.zeros(shape, dtype=torch.long)
        for row_index, row in enumerate(rows):
            start = 0
            for segment, example_index in enumerate(row):
                ids, example_labels = examples[example_index]
                end = start + len(ids)
                input_ids[row_index, start:end] = ids
                labels[row_index, start:end] = example_labels
                # Nothing before an example's first token belongs to it: no target there.
                labels[row_index, start] = IGNORE_INDEX
                attention_mask[row_index, start:end] = 1
                position_ids[row_index, start:end] = torch.arange(len(ids))
                segment_ids[row_index, start:end] = segment
                start = end
            # The padding tail: a segment of its own, positions restarting at 0.
            position_ids[row_index, start:] = torch.arange(width - start)
            segment_ids[row_index, start:] = len(row)
        return PackedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            segment_ids=segment_ids,
            varlen=self.varlen,
            additive_mask=self.additive_mask,
        )

    def layout(self, lengths: Sequence[int]) -> list[list[int]]:
        """The rows (example indices) that cost least to compute, by the cost model."""
        longest, total = max(lengths), sum(lengths)
        widest = max(2 * self.row_length, longest)
        best: tuple[float, list[list[int]]] | None = None
        for wanted in range(1, len(lengths) + 1):
            capacity = max(longest, -(-total // wanted))
            if capacity > widest:
                continue
            rows = _narrowest_rows(lengths, wanted, capacity, widest)
            width = max(sum(lengths[i] for i in row) for row in rows)
            cost = len(rows) * width * (1 + self.attention_cost * width)
            if best is None or cost < best[0]:
                best = (cost, rows)
            if capacity == longest:
                break  # more rows cannot be narrower than the longest example
        assert best is not None  # wanted = len(lengths) gives capacity = longest
        return best[1]


def attention_cost(model: Any) -> float:
    """Attention compute per token per token of row width, relative to the compute of
    the weights per token: 4·hidden·layers multiply-adds (scores and weighted values)
    against about 2·parameters."""
    config = model.config
    hidden = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    parameters = sum(p.numel() for p in model.parameters())
    if not isinstance(hidden, int) or not isinstance(layers, int) or not parameters:
        return 0.0
    return 4 * hidden * layers / (2 * parameters)


def _narrowest_rows(lengths: Sequence[int], wanted: int, low: int, high: int) -> list[list[int]]:
    """First-fit-decreasing rows at the smallest capacity in [low, high] (bisected) that
    needs at most `wanted` rows; at `high` if none does."""
    while low < high:
        middle = (low + high) // 2
        if len(_first_fit_decreasing(lengths, middle)) <= wanted:
            high = middle
        else:
            low = middle + 1
    return _first_fit_decreasing(lengths, low)


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into as few rows of at most `capacity` tokens as
    first-fit-decreasing finds; examples keep batch order within a row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        for row_index, space in enumerate(free):
            if lengths[index] <= space:
                rows[row_index].append(index)
                free[row_index] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return [sorted(row) for row in rows]
