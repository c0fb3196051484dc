"""The trainer's own exceptions, each tied to the outcome `python -m trainer` reports.

`BadInput` and its subclasses are the user's to fix (bad data, a refused model): the job
fails with that reason and is never retried. `Fenced` means another launch attempt owns
the job: this process must stop at once and write nothing more.
"""

from __future__ import annotations

from jobstore.documents import FailureReason


class BadInput(Exception):
    """The job cannot run as specified; `message` says what to fix."""

    reason = FailureReason.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DataValidationError(BadInput):
    reason = FailureReason.DATA_VALIDATION


class ModelLoadError(BadInput):
    reason = FailureReason.MODEL_LOAD


class Fenced(Exception):
    """status.json names another launch attempt: this process no longer owns the job."""
