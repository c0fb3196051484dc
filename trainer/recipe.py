"""The full fine-tuning recipe: setup, train, evaluate, save_checkpoint, cleanup.

One readable loop over plain PyTorch. transformers only loads the model and tokenizer.
The customization type picks the data format, the model head and the loss:

    FINE_TUNING             {prompt, completion}; causal LM, loss on the completion
    CONTINUED_PRE_TRAINING  {input} / {text}; causal LM, loss on every token, long
                            documents split into maxSequenceLength chunks
    CLASSIFICATION          {text, label}; sequence-classification head, cross-entropy,
                            validation accuracy / precision / recall / F1

    QUEUED -> VALIDATING   check every data line, then download, check and load the model
           -> RUNNING      AdamW, warm-up + linear decay, gradient accumulation, clipping
           -> COMPLETED    final model in <output>model/
    a stop request         -> STOPPING -> committed checkpoint -> STOPPED
    SIGTERM                -> committed checkpoint, exit PREEMPTED; the reconciler decides
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from service.documents import JobSpec, JobState, TrainerExit, utc_now
from service.storage import ObjectStore, S3Location, parse_s3_uri
from trainer import checkpoint, data, lora, precision, preflight
from trainer.data import Batch, TokenizedExample
from trainer.errors import DataValidationError, Fenced
from trainer.loss import backward_window, classification_loss_sum, token_loss_sum
from trainer.metrics import MetricsLog, classification_metrics
from trainer.mlflow_tracking import tracking_for
from trainer.model import load_model, pad_token_id
from trainer.optim import build_optimizer, clip_gradients, learning_rate_at, set_learning_rate
from trainer.packing import Packer
from trainer.plots import publish_loss_plot
from trainer.precision import Precision
from trainer.progress import TrainingProgress
from trainer.reporting import Reporter

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"


class FullFineTuningRecipe:
    def __init__(
        self,
        spec: JobSpec,
        *,
        storage: ObjectStore,
        reporter: Reporter,
        workdir: Path,
        preempted: threading.Event,
    ) -> None:
        self.spec = spec
        self.hp = spec.hyperParameters
        self.storage = storage
        self.reporter = reporter
        self.workdir = workdir
        self.preempted = preempted
        self.output = parse_s3_uri(spec.output_prefix, field="outputDataConfig.s3Uri")
        self.device = precision.default_device()
        # bf16 autocast or fp32 (trainer/precision.py); decided in setup, while VALIDATING.
        self.precision = Precision(self.device, None)
        self.progress = TrainingProgress(total_epochs=self.hp.epochCount)
        self.kind = spec.customizationType
        self.classification = self.kind == data.CLASSIFICATION
        self.labels: list[str] | None = None  # classification: class id -> label
        self.metrics = MetricsLog(
            storage, self.output, workdir / "metrics", classification=self.classification
        )
        self.tracking = tracking_for(spec, reporter.event)  # MLflow, if the spec asks for it
        self.model: Any = None
        self.tokenizer: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_set: list[TokenizedExample] = []
        self.validation_set: list[TokenizedExample] = []
        self.pad_id = 0
        self.max_length = self.hp.maxSequenceLength
        self.packer: Packer | None = None  # packs training batches; None: padded batches
        self._training_started = 0.0

    # -- the whole job -----------------------------------------------------------

    def run(self) -> TrainerExit:
        status = self.reporter.read_status()
        if status.state.is_terminal():
            log.info("job %s is already %s; nothing to do", self.spec.jobId, status.state)
            return TrainerExit.OK
        self.reporter.add_periodic_upload(self.metrics.upload)
        self.reporter.start_heartbeat()
        if status.state is JobState.STOPPING or self.reporter.poll_stop():
            return self.finish(Outcome.STOPPED)
        self.reporter.move_to(JobState.VALIDATING, "checking the data and the base model")
        self.setup()
        interrupted = self.interruption()
        if interrupted is not None:
            return self.finish(interrupted)
        self.publish()
        self.reporter.move_to(JobState.RUNNING, f"training for {self.progress.total_steps} steps")
        return self.finish(self.train())

    def finish(self, outcome: Outcome) -> TrainerExit:
        if outcome is Outcome.PREEMPTED and self.reporter.poll_stop():
            outcome = Outcome.STOPPED  # SIGTERM after a stop request is that stop
        if outcome is Outcome.COMPLETED:
            self.reporter.read_status()  # still ours? (raises Fenced) before writing output
            location = checkpoint.save_final_model(
                self.model,
                self.tokenizer,
                storage=self.storage,
                output=self.output,
                directory=self.workdir,
            )
            if lora.is_lora(self.model) and self.hp.mergeAdapter:
                self.save_merged_model(location)
            self.metrics.upload()
            self.write_loss_plot()
            self.tracking.finish("FINISHED", model_uri=location.uri)
            self.reporter.stop_heartbeat()
            self.reporter.move_to(JobState.COMPLETED, f"the model is in {location.uri}")
            return TrainerExit.OK
        if outcome is Outcome.STOPPED:
            self.reporter.move_to(JobState.STOPPING, "stop requested")
            self.save_checkpoint()
            self.metrics.upload()
            self.write_loss_plot()
            self.tracking.finish("KILLED")
            self.reporter.stop_heartbeat()
            self.reporter.move_to(JobState.STOPPED, f"stopped after step {self.progress.step}")
            return TrainerExit.OK
        self.save_checkpoint()
        self.metrics.upload()
        self.tracking.finish("KILLED")  # a resumed attempt logs to a new run
        self.reporter.stop_heartbeat()
        self.reporter.event("PREEMPTED", f"SIGTERM after step {self.progress.step}")
        return TrainerExit.PREEMPTED

    def write_loss_plot(self) -> None:
        """training_artifacts/loss.png from the metrics files (trainer/plots.py)."""
        title = f"{self.spec.jobName} ({self.spec.jobId})"
        publish_loss_plot(self.storage, self.output, self.metrics, self.workdir, title=title)

    def interruption(self) -> Outcome | None:
        """Checked between steps: lost the job, stop requested, or SIGTERM."""
        if self.reporter.fenced.is_set():
            raise Fenced("the heartbeat found another attempt owning the job")
        if self.reporter.stop_requested.is_set():
            return Outcome.STOPPED
        if self.preempted.is_set():
            return Outcome.PREEMPTED
        return None

    def publish(self) -> None:
        self.reporter.set_progress(self.progress.to_document())

    # -- setup -------------------------------------------------------------------

    def setup(self) -> None:
        """Validate all data, then download, check and load the model, then tokenize."""
        spec = self.spec
        data.check_customization_type(spec.customizationType)
        # Preflight (trainer/preflight.py): every record checked and tokenized with the
        # base model's tokenizer before its weights are loaded, or taken from the cache.
        model_dir = self.workdir / "base-model"
        prepared = preflight.run_preflight(
            spec,
            storage=self.storage,
            reporter=self.reporter,
            model_dir=model_dir,
            directory=self.workdir / "data",
        )
        self.labels = prepared.labels

        torch.manual_seed(self.hp.seed)
        self.precision = precision.resolve(self.hp.precision, self.device, os.environ)
        self.model, self.tokenizer = load_model(
            model_dir,
            spec.baseModelIdentifier,
            self.device,
            labels=self.labels,
            dropout=self.hp.dropout,
            load_arguments=self.precision.model_load_arguments(),
        )
        if self.hp.method == "LORA":  # adapters on frozen base weights (trainer/lora.py)
            self.model = lora.wrap(
                self.model,
                self.hp,
                classification=self.classification,
                base_model_uri=spec.baseModelIdentifier,
            )
        self.precision.prepare(self.model)
        self.pad_id = pad_token_id(self.tokenizer)
        self.max_length = self._max_length()
        if self.hp.packing and not self.classification:  # a classification head pools per row
            self.packer = Packer.for_model(
                self.model, row_length=self.max_length, pad_id=self.pad_id
            )

        self.train_set = prepared.training
        self.validation_set = prepared.validation
        if not self.train_set and self.kind != data.FINE_TUNING:
            raise DataValidationError("the training data has no tokens to train on")
        if not self.train_set:
            raise DataValidationError(
                f"no training record has a completion token left within {self.max_length} "
                "tokens (maxSequenceLength); raise maxSequenceLength or shorten the prompts"
            )
        self.optimizer = build_optimizer(self.model, self.hp.learningRate, self.hp.weightDecay)
        self.reporter.observe_optimizer(self.optimizer)  # its learning rate goes to /metrics
        batches = data.batches_per_epoch(len(self.train_set), self.hp.batchSize)
        steps_per_epoch = -(-batches // self.hp.gradientAccumulationSteps)
        self.progress.total_steps = steps_per_epoch * self.hp.epochCount

    def _max_length(self) -> int:
        """maxSequenceLength, capped at the positions the model has: past them a model
        with learned position embeddings fails with an index error deep in a kernel."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and 0 < limit < self.hp.maxSequenceLength:
            log.warning(
                "maxSequenceLength %d is more than the model's %d positions; using %d",
                self.hp.maxSequenceLength,
                limit,
                limit,
            )
            return limit
        return self.hp.maxSequenceLength

    # -- training ----------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 matmuls under autocast, or plain fp32 (hyperParameters.precision); the
        weights and the optimizer state stay float32 either way."""
        return self.precision.autocast()

    def train(self) -> Outcome:
        self._training_started = time.monotonic()
        accumulation = self.hp.gradientAccumulationSteps
        for epoch in range(1, self.hp.epochCount + 1):
            self.progress.epoch = epoch
            generator = data.epoch_generator(self.hp.seed, epoch)
            window: list[Batch] = []
            for batch in data.batches(
                self.train_set, self.hp.batchSize, self.pad_id, generator=generator
            ):
                window.append(self.packer.pack_batch(batch) if self.packer else batch)
                if len(window) < accumulation:
                    continue
                self.train_step(window)
                window = []
                interrupted = self.interruption()
                if interrupted is not None:
                    return interrupted
            if window:  # the epoch's last, shorter accumulation window
                self.train_step(window)
            if self.validation_set:
                self.evaluate()
            interrupted = self.interruption()
            if interrupted is not None:
                return interrupted
        return Outcome.COMPLETED

    def train_step(self, window: list[Batch]) -> None:
        """One optimizer step over the micro-batches of `window`."""
        assert self.optimizer is not None
        step = self.progress.step + 1
        learning_rate = learning_rate_at(
            step,
            peak=self.hp.learningRate,
            warmup_steps=self.hp.learningRateWarmupSteps,
            total_steps=self.progress.total_steps,
            schedule=self.hp.lrScheduler,
        )
        set_learning_rate(self.optimizer, learning_rate)
        self.model.train()
        loss = backward_window(self.model, window, self.device, self.autocast)
        clip_gradients(self.model.parameters(), self.hp.maxGradNorm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        self.progress.tokens_seen += sum(int(b.attention_mask.sum()) for b in window)
        self.progress.step = step
        self.progress.training_loss = loss
        if self.progress.first_step_at is None:
            self.progress.first_step_at = utc_now()
        seconds_per_step = (time.monotonic() - self._training_started) / step
        self.progress.eta_seconds = round(seconds_per_step * (self.progress.total_steps - step), 1)
        self.metrics.add_training(step, self.progress.epoch, self.progress.training_loss)
        self.tracking.log_metrics(
            step,
            {"training_loss": loss, "learning_rate": self.optimizer.param_groups[0]["lr"]},
        )
        self.publish()
        if step == 1 or step % 10 == 0 or step == self.progress.total_steps:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.2e",
                step,
                self.progress.total_steps,
                self.progress.epoch,
                self.progress.training_loss,
                learning_rate,
            )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss per completion token over the whole validation set."""
        if self.classification:
            return self.evaluate_classification()
        self.model.eval()
        loss_sum, tokens = 0.0, 0
        for batch in data.batches(self.validation_set, self.hp.batchSize, self.pad_id):
            with self.autocast():
                loss_sum += float(token_loss_sum(self.model, batch.to(self.device)))
            tokens += batch.target_tokens
        loss = loss_sum / max(tokens, 1)
        self.progress.validation_loss = loss
        self.metrics.add_validation(self.progress.step, self.progress.epoch, loss)
        self.tracking.log_metrics(self.progress.step, {"validation_loss": loss})
        self.publish()
        log.info("epoch %d validation loss %.4f", self.progress.epoch, loss)
        return loss

    @torch.no_grad()
    def evaluate_classification(self) -> float:
        """Mean cross-entropy per example, and accuracy / precision / recall / F1 (macro)."""
        self.model.eval()
        loss_sum = 0.0
        predictions: list[int] = []
        targets: list[int] = []
        for batch in data.batches(self.validation_set, self.hp.batchSize, self.pad_id):
            batch = batch.to(self.device)
            with self.autocast():
                loss, logits = classification_loss_sum(self.model, batch)
            loss_sum += float(loss)
            predictions += logits.argmax(dim=-1).tolist()
            targets += batch.labels.tolist()
        loss_value = loss_sum / max(len(targets), 1)
        scores = classification_metrics(predictions, targets)
        self.progress.validation_loss = loss_value
        self.progress.validation_metrics = scores
        self.metrics.add_validation(self.progress.step, self.progress.epoch, loss_value, scores)
        self.tracking.log_metrics(self.progress.step, {"validation_loss": loss_value, **scores})
        self.publish()
        log.info(
            "epoch %d validation loss %.4f %s",
            self.progress.epoch,
            loss_value,
            " ".join(f"{name} {value:.4f}" for name, value in scores.items()),
        )
        return loss_value

    # -- saving ------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """A committed checkpoint of the current step.

        Nothing before the first step: the weights are still the base model's, which is
        already in object storage."""
        if self.model is None or self.progress.step == 0:
            return
        self.reporter.read_status()  # still ours? (raises Fenced) before writing output
        location = checkpoint.save_checkpoint(
            self.model,
            self.tokenizer,
            self.progress.state_dict(),
            storage=self.storage,
            output=self.output,
            directory=self.workdir / "checkpoints",
        )
        self.reporter.event("CHECKPOINT_COMMITTED", f"step {self.progress.step}: {location.uri}")

    def save_merged_model(self, model_location: S3Location) -> None:
        """mergeAdapter: base + adapter as one plain model in `<output>model/merged/`,
        next to the adapter in `model/` (trainer/lora.py). Consumes the peft model."""
        local = lora.save_merged_model(self.model, self.tokenizer, self.workdir / "merged")
        target = model_location.child("merged").as_prefix()
        self.storage.upload_directory(local, target)
        log.info("uploaded the merged model to %s", target.uri)

    def cleanup(self) -> None:
        """Free the model and optimizer (and their accelerator memory).

        The working directory stays: the launcher owns it and decides when it goes."""
        self.tracking.finish("FAILED")  # nothing if the job already finished its run
        self.model = self.optimizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
