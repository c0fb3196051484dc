"""The metrics CSV files under the job's output prefix (docs/architecture.md), kept
locally and uploaded whole.

The files are small (a row per optimizer step), so each upload rewrites the object: no
multipart or append logic, and a reader always sees a complete, parseable file.

Columns past Bedrock's four: a causal-LM job's `token_accuracy` in both files (the share
of target tokens predicted right), a classification job's accuracy, precision, recall
and F1 in the validation file, a preference job's reward metrics in both
(trainer/preference.py PREFERENCE_METRICS; its loss column is the DPO loss).
Readers find columns by name (service/core/training_metrics.py).
"""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path

from jobstore.storage import ObjectStore, S3Location
from trainer.preference import PREFERENCE_METRICS

TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
TRAINING_HEADER = "step_number,epoch_number,training_loss,perplexity"
VALIDATION_HEADER = "step_number,epoch_number,validation_loss,perplexity"
# Classification jobs append these columns to the validation file (same order).
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
# Causal-LM jobs append this one to both files.
TOKEN_ACCURACY = "token_accuracy"


def perplexity(loss: float) -> float:
    """exp(mean token loss); capped where exp overflows (an untrained model on junk)."""
    return math.exp(min(loss, 700.0))


class _CsvFile:
    def __init__(
        self, path: Path, location: S3Location, header: str, *, perplexity: bool = True
    ) -> None:
        self.path = path
        self.location = location
        self.header = header
        # exp(loss) means something for a token loss only: a DPO loss leaves it empty.
        self.perplexity = perplexity
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "\n")
        self.rows = 0
        self.uploaded_rows = -1  # never uploaded

    def add(self, step: int, epoch: int, loss: float, extra: tuple[float, ...] = ()) -> None:
        columns = "".join(f",{value:.6f}" for value in extra)
        exp_loss = f"{perplexity(loss):.6f}" if self.perplexity else ""
        with self.path.open("a") as file:
            file.write(f"{step},{epoch},{loss:.6f},{exp_loss}{columns}\n")
        self.rows += 1

    def restore(self, saved: Path) -> None:
        """Go on from a checkpoint's copy of this file. A copy an older trainer wrote with
        other columns is rewritten under this header: its values by column name, a column
        it lacks left empty (read as no value)."""
        with saved.open(newline="") as file:
            rows = list(csv.DictReader(file))
        names = self.header.split(",")
        with self.path.open("w", newline="") as file:
            file.write(self.header + "\n")
            writer = csv.writer(file, lineterminator="\n")
            for row in rows:
                writer.writerow([row.get(name) or "" for name in names])
        self.rows = len(rows)
        self.uploaded_rows = -1

    def upload(self, storage: ObjectStore) -> None:
        storage.upload_file(self.path, self.location)
        self.uploaded_rows = self.rows


class MetricsLog:
    """Training and validation metrics; thread-safe (the heartbeat thread uploads)."""

    def __init__(
        self,
        storage: ObjectStore,
        output: S3Location,
        directory: Path,
        *,
        classification: bool = False,
        preference: bool = False,
    ) -> None:
        self._storage = storage
        self.classification = classification
        self.training_columns: tuple[str, ...] = () if classification else (TOKEN_ACCURACY,)
        self.validation_columns = CLASSIFICATION_METRICS if classification else (TOKEN_ACCURACY,)
        if preference:  # its reward metrics in both files
            self.training_columns = self.validation_columns = PREFERENCE_METRICS
        self._lock = threading.Lock()
        self.training = _CsvFile(
            directory / "step_wise_training_metrics.csv",
            output.child(TRAINING_CSV),
            TRAINING_HEADER + "".join(f",{name}" for name in self.training_columns),
            perplexity=not preference,
        )
        self.validation = _CsvFile(
            directory / "validation_metrics.csv",
            output.child(VALIDATION_CSV),
            VALIDATION_HEADER + "".join(f",{name}" for name in self.validation_columns),
            perplexity=not preference,
        )

    def add_training(
        self, step: int, epoch: int, loss: float, metrics: dict[str, float] | None = None
    ) -> None:
        """A training row, with the job's training columns from `metrics` (NaN if missing)."""
        values = metrics or {}
        extra = tuple(values.get(name, math.nan) for name in self.training_columns)
        with self._lock:
            self.training.add(step, epoch, loss, extra)

    def add_validation(
        self, step: int, epoch: int, loss: float, metrics: dict[str, float] | None = None
    ) -> None:
        """A validation row, with the job's validation columns from `metrics`: a
        classification job's CLASSIFICATION_METRICS, a causal-LM job's token accuracy."""
        values = metrics or {}
        extra = tuple(values.get(name, math.nan) for name in self.validation_columns)
        with self._lock:
            self.validation.add(step, epoch, loss, extra)

    def files(self) -> list[Path]:
        """The local files, as a checkpoint saves them."""
        return [self.training.path, self.validation.path]

    def restore(self, directory: Path) -> None:
        """Go on from the files a checkpoint saved (`directory` holds copies of `files()`):
        a resumed job's metrics keep the rows up to its checkpoint's step, no later."""
        with self._lock:
            for file in (self.training, self.validation):
                saved = directory / file.path.name
                if saved.is_file():
                    file.restore(saved)

    def upload(self) -> None:
        """Upload each file that changed since its last upload.

        The training file goes up as soon as it has a row; the validation file only once
        there is an evaluation, so a job without validation data has no empty one.
        """
        with self._lock:
            for file in (self.training, self.validation):
                if file.rows > 0 and file.rows != file.uploaded_rows:
                    file.upload(self._storage)


def classification_metrics(predictions: list[int], targets: list[int]) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 (as scikit-learn computes them: the
    mean over the labels seen in targets or predictions, 0 where a ratio is 0/0)."""
    if not targets:
        return {}
    classes = sorted(set(targets) | set(predictions))
    precisions, recalls, f1s = [], [], []
    for label in classes:
        tp = sum(1 for p, t in zip(predictions, targets, strict=True) if p == t == label)
        predicted = sum(1 for p in predictions if p == label)
        actual = sum(1 for t in targets if t == label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
    correct = sum(1 for p, t in zip(predictions, targets, strict=True) if p == t)
    return {
        "accuracy": correct / len(targets),
        "precision": sum(precisions) / len(classes),
        "recall": sum(recalls) / len(classes),
        "f1": sum(f1s) / len(classes),
    }
