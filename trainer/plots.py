"""`training_artifacts/loss.png`: training and validation loss against the step.

Drawn once a job finishes (completed, stopped or stopped early), from the same metrics
CSV files the trainer uploads, for users who look in the bucket rather than at the
dashboard.

Invariants:
- matplotlib is imported, and its non-interactive Agg backend chosen, inside
  `draw_loss_plot()`: importing this module has no side effect and needs no display.
- The plot is written to a local file, then uploaded through ObjectStore; nothing here
  talks to S3 directly.
- Rows whose loss is not a finite number are left out of the plot, not drawn as gaps.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from jobstore.storage import ObjectStore, S3Location
from trainer.metrics import MetricsLog

log = logging.getLogger(__name__)

LOSS_PLOT = "training_artifacts/loss.png"


def read_losses(path: Path, column: str) -> tuple[list[int], list[float]]:
    """(steps, losses) from a metrics CSV file; an absent file has none."""
    if not path.is_file():
        return [], []
    steps: list[int] = []
    losses: list[float] = []
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            try:
                step, loss = int(row["step_number"]), float(row[column])
            except (KeyError, TypeError, ValueError):
                continue  # a malformed row: the plot shows the rest
            if math.isfinite(loss):
                steps.append(step)
                losses.append(loss)
    return steps, losses


def draw_loss_plot(training_csv: Path, validation_csv: Path, target: Path, *, title: str) -> bool:
    """Draw the losses into `target` (PNG); False, and no file, when there is no row."""
    train_steps, train_losses = read_losses(training_csv, "training_loss")
    validation_steps, validation_losses = read_losses(validation_csv, "validation_loss")
    if not train_steps and not validation_steps:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display in a trainer; chosen before pyplot is imported
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if train_steps:
            axes.plot(train_steps, train_losses, label="training loss", linewidth=1.2)
        if validation_steps:
            axes.plot(
                validation_steps,
                validation_losses,
                label="validation loss",
                marker="o",
                linewidth=1.8,
            )
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png")
    finally:
        pyplot.close(figure)
    return True


def upload_loss_plot(
    storage: ObjectStore,
    output: S3Location,
    *,
    training_csv: Path,
    validation_csv: Path,
    directory: Path,
    title: str,
) -> S3Location | None:
    """Draw the plot and upload it to `<output>training_artifacts/loss.png`.

    Returns where it went, or None when there was nothing to draw (no step was taken)."""
    path = directory / "loss.png"
    if not draw_loss_plot(training_csv, validation_csv, path, title=title):
        return None
    location = output.child(LOSS_PLOT)
    storage.upload_file(path, location)
    return location


def publish_loss_plot(
    storage: ObjectStore,
    output: S3Location,
    metrics: MetricsLog,
    directory: Path,
    *,
    title: str,
) -> S3Location | None:
    """`upload_loss_plot()` for a finishing job: a plot that cannot be drawn or uploaded
    is logged as a warning and the job finishes anyway (the model matters, the picture
    does not)."""
    try:
        location = upload_loss_plot(
            storage,
            output,
            training_csv=metrics.training.path,
            validation_csv=metrics.validation.path,
            directory=directory,
            title=title,
        )
    except Exception:
        log.warning("could not write %s; the job goes on without it", LOSS_PLOT, exc_info=True)
        return None
    if location is not None:
        log.info("loss plot: %s", location.uri)
    return location
