"""Pure pieces of the multi-process path: the exit code torchrun's outcome maps to, and
each rank's share of a global batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jobstore.documents import TrainerExit
from trainer import data
from trainer.data import TokenizedExample
from trainer.sharding import rank_batches, rank_share
from trainer.torchrun import exit_code_for


def tokenized_examples(count: int = 11) -> list[TokenizedExample]:
    """Examples of different lengths, a prompt token and completion tokens each."""
    return [
        TokenizedExample(input_ids=list(range(1, n + 3)), labels=[-100, *range(2, n + 3)])
        for n in range(count)
    ]


@dataclass
class Failure:
    """What torchrun records of a failed rank (ProcessFailure's fields read here)."""

    exitcode: int
    timestamp: int


def test_rank_0s_deliberate_exit_code_wins() -> None:
    for code in (TrainerExit.BAD_INPUT, TrainerExit.FENCED):
        failures = {1: Failure(-9, 100), 0: Failure(int(code), 101)}
        assert exit_code_for(failures) == code


def test_ranks_that_all_were_told_to_stop_are_a_preemption() -> None:
    assert exit_code_for({0: Failure(143, 100), 1: Failure(143, 100)}) == TrainerExit.PREEMPTED
    assert exit_code_for({0: Failure(143, 101), 1: Failure(-15, 100)}) == TrainerExit.PREEMPTED


def test_survivors_checkpointing_on_the_teardown_do_not_hide_the_crash() -> None:
    # Rank 1 SIGKILLed; torchrun SIGTERMs rank 0, which commits and exits PREEMPTED in
    # the same second (torchrun's timestamps are whole seconds): still a crash.
    assert exit_code_for({1: Failure(-9, 100), 0: Failure(143, 100)}) == 137
    assert exit_code_for({0: Failure(143, 100), 1: Failure(1, 101)}) == 1


def test_otherwise_the_first_failure_counts_and_a_signal_reads_as_128_plus_it() -> None:
    # Rank 1 SIGKILLed, then rank 0 crashed on the lost peer: 137, a crash to relaunch.
    assert exit_code_for({1: Failure(-9, 100), 0: Failure(1, 101)}) == 137
    assert exit_code_for({0: Failure(1, 100), 1: Failure(-15, 101)}) == 1
    assert exit_code_for({}) == TrainerExit.CRASHED


def test_shares_cover_the_global_batch_in_order_and_differ_by_one_at_most() -> None:
    for size in range(0, 11):
        items = list(range(size))
        shares = [list(rank_share(items, rank, 3)) for rank in range(3)]
        assert [item for share in shares for item in share] == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_rank_batches_exactly_as_data_batches() -> None:
    examples = tokenized_examples()
    ours = rank_batches(examples, 3, 0, generator=data.epoch_generator(7, 1))
    theirs = data.batches(examples, 3, 0, generator=data.epoch_generator(7, 1))
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine.input_ids, reference.input_ids)
        assert torch.equal(mine.labels, reference.labels)


def test_a_rank_without_examples_in_the_last_batch_gets_one_that_adds_nothing() -> None:
    examples = tokenized_examples()[:5]  # global batch 2 x 2: the last holds one example
    last = list(
        rank_batches(examples, 2, 0, generator=data.epoch_generator(7, 1), rank=1, world_size=2)
    )[-1]
    assert last.target_tokens == 0
