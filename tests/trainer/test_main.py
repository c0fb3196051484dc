"""The trainer's entry point: its environment and how errors map to failure reasons and
exit codes."""

from __future__ import annotations

import pytest
import torch

from jobstore.documents import FailureReason, TrainerExit
from jobstore.storage import StorageError
from service.errors import StoreUnavailable
from trainer.__main__ import TrainerEnvironment, classify
from trainer.errors import DataValidationError, ModelLoadError


def test_environment_is_read_with_defaults() -> None:
    environment = TrainerEnvironment.from_environ(
        {"TUNEFORGE_ATTEMPT": "3", "TUNEFORGE_STATE_BUCKET": "state"}
    )
    assert environment == TrainerEnvironment("state", 3, 2.0, None)


def test_missing_attempt_is_named() -> None:
    with pytest.raises(ValueError, match="TUNEFORGE_ATTEMPT"):
        TrainerEnvironment.from_environ({"TUNEFORGE_STATE_BUCKET": "state"})


@pytest.mark.parametrize(
    ("error", "reason", "code"),
    [
        (DataValidationError("bad line"), FailureReason.DATA_VALIDATION, TrainerExit.BAD_INPUT),
        (ModelLoadError("bad model"), FailureReason.MODEL_LOAD, TrainerExit.BAD_INPUT),
        (
            torch.OutOfMemoryError("CUDA out of memory"),
            FailureReason.OUT_OF_MEMORY,
            TrainerExit.CRASHED,
        ),
        (StoreUnavailable("down"), FailureReason.STORAGE, TrainerExit.CRASHED),
        (StorageError("refused"), FailureReason.STORAGE, TrainerExit.CRASHED),
        (ValueError("surprise"), FailureReason.INTERNAL, TrainerExit.CRASHED),
    ],
)
def test_errors_map_to_a_reason_and_an_exit_code(
    error: Exception, reason: FailureReason, code: TrainerExit
) -> None:
    assert classify(error)[0] is reason
    assert classify(error)[2] is code


def test_out_of_memory_message_says_what_to_change() -> None:
    message = classify(torch.OutOfMemoryError("CUDA out of memory"))[1]
    assert "batchSize" in message and "maxSequenceLength" in message


def test_internal_errors_are_summarised() -> None:
    assert classify(ValueError("surprise"))[1] == "internal trainer error: ValueError: surprise"
