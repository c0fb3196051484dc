"""Each rank's part of every global batch, in the single-process order.

An epoch's order is the permutation from (seed, epoch) (trainer/data.py), the same for
any number of ranks. A global batch is `batchSize x world size` consecutive examples of
it; rank r trains on its share (`batchSize` examples, the last global batch split as
evenly as it goes). So N ranks with batchSize b see exactly the global batches one
process sees with batchSize N*b, and with the loss summed over all ranks' tokens and
divided by all ranks' target tokens (trainer/loss.py) they take the same steps. With one
rank this is `data.batches` itself: same permutation, same slices.

The data position a checkpoint records counts global batches, so a resume continues
at the same global batch whatever rank restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from trainer.data import IGNORE_INDEX, Batch, TokenizedExample, collate


def rank_share(items: Sequence[int], rank: int, world_size: int) -> Sequence[int]:
    """Rank `rank`'s contiguous share of `items`; shares differ by at most one."""
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (1 if rank < extra else 0)]


def rank_batches(
    examples: Sequence[TokenizedExample] | Sequence[Any],
    batch_size: int,
    pad_id: int,
    *,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    collate: Callable[[list[Any], int], Batch] = collate,
) -> Iterator[Batch]:
    """This rank's micro-batch of each global batch of the epoch, in order.

    A rank whose share of the epoch's last, short global batch is empty still gets a
    batch (one example with every label ignored: no loss, no gradient), because each
    rank must run the same forward and backward passes for the gradient all-reduce.
    `collate` makes a batch of items of `examples` (a preference job's are pairs).
    """
    order = torch.randperm(len(examples), generator=generator).tolist()
    global_size = batch_size * world_size
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        share = rank_share(chunk, rank, world_size)
        if share:
            yield collate([examples[i] for i in share], pad_id)
        else:
            yield without_targets(collate([examples[chunk[0]]], pad_id))


def without_targets(batch: Batch) -> Batch:
    """`batch` with every label ignored: it runs forward and backward, adds nothing."""
    # `replace` keeps the batch's kind (a preference batch stays one).
    return dataclasses.replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))


def target_count(batch: Batch) -> int:
    """The loss terms of `batch`: target tokens, or the labelled examples of a
    classification batch (an ignored label counts none)."""
    if batch.classification:
        return int((batch.labels != IGNORE_INDEX).sum())
    return batch.target_tokens
