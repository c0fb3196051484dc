"""The full fine-tuning recipe: setup, train, evaluate, save_checkpoint, cleanup.

One readable loop over plain PyTorch. transformers only loads the model and tokenizer.
The customization type picks the data format, the model head and the loss:

    FINE_TUNING             {prompt, completion}; causal LM, loss on the completion
    CONTINUED_PRE_TRAINING  {input} / {text}; causal LM, loss on every token, long
                            documents split into maxSequenceLength chunks
    CLASSIFICATION          {text, label}; sequence-classification head, cross-entropy,
                            validation accuracy / precision / recall / F1
    PREFERENCE              {prompt, chosen, rejected}; causal LM, the DPO loss against
                            the base model's log-probabilities (trainer/preference.py),
                            reward accuracy and margins

    QUEUED -> VALIDATING   check every data line, then download, check and load the model
           -> RUNNING      AdamW, warm-up + linear decay, gradient accumulation, clipping
           -> COMPLETED    final model in <output>model/
    a stop request         -> STOPPING -> committed checkpoint -> STOPPED
    a pause request        -> committed checkpoint -> PAUSED (a resume is the next attempt)
    SIGTERM                -> committed checkpoint, exit PREEMPTED; the reconciler decides
    early stopping         -> COMPLETED with the last weights (event EARLY_STOPPED)

Checkpoints (trainer/checkpoint.py) are written every `checkpointIntervalSteps` optimizer
steps and at each epoch end, uploaded in the background, and committed last. A trainer
started for a job that has committed checkpoints resumes from the newest one exactly:
weights, optimizer, RNG streams, step and the position in the epoch's fixed shuffled
order, so on CPU the final weights equal bitwise those of an uninterrupted run.

Under torchrun every rank runs this loop on its slice of each global batch
(trainer/distributed.py, trainer/sharding.py); rank 0 alone writes to the job.

The recipe owns every step of a run, checkpoints and the end included: `resume` and
`save_checkpoint` (the files and their upload are trainer/checkpoint.py's), and `finish`,
which writes what each `Outcome` (trainer/outcome.py) means for the job. It is longer
than one screen on purpose: one recipe read top to bottom, as torchtune's are.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from jobstore.documents import JobSpec, JobState, TrainerExit, utc_now
from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from trainer import checkpoint, data, lora, precision, preference, preflight
from trainer.checkpoint_state import RANK_PREFIX, checkpoint_manifest, rank_rng_state
from trainer.data import Batch
from trainer.dataset_cache import DatasetCache
from trainer.distributed import (
    Distributed,
    full_model_state,
    load_full_state,
    load_sharded_state,
    save_sharded_state,
)
from trainer.errors import DataValidationError, Fenced
from trainer.evaluation import classification_validation, validation_loss
from trainer.loss import backward_window
from trainer.metrics import TOKEN_ACCURACY, MetricsLog
from trainer.mlflow_tracking import NoTracking, tracking_for
from trainer.model import load_model, pad_token_id
from trainer.optim import build_optimizer, clip_gradients, learning_rate_at, set_learning_rate
from trainer.outcome import Outcome
from trainer.packing import Packer
from trainer.plots import publish_loss_plot
from trainer.precision import Precision
from trainer.progress import TrainingProgress
from trainer.reporting import Reporter
from trainer.resume import capture_rng_state, restore_rng_state
from trainer.sharding import rank_batches, target_count

log = logging.getLogger(__name__)


class FullFineTuningRecipe:
    def __init__(
        self,
        spec: JobSpec,
        *,
        storage: ObjectStore,
        reporter: Reporter,
        workdir: Path,
        preempted: threading.Event,
        distributed: Distributed | None = None,
        host_workdir: Path | None = None,
    ) -> None:
        self.spec = spec
        # The directory the ranks of this job on one host share (torchrun's working
        # directory): rank 0's tokenized data there is mapped by every rank of the host.
        self.host_workdir = host_workdir or workdir
        # This process's rank among the job's trainer processes (trainer/distributed.py);
        # one process alone is rank 0 of 1.
        self.distributed = distributed or Distributed()
        self.hp = spec.hyperParameters
        self.storage = storage
        self.reporter = reporter
        self.workdir = workdir
        self.preempted = preempted
        self.output = parse_s3_uri(spec.output_prefix, field="outputDataConfig.s3Uri")
        self.device = self.distributed.device(precision.default_device())
        # bf16 autocast or fp32 (trainer/precision.py); decided in setup, while VALIDATING.
        self.precision = Precision(self.device, None)
        self.progress = TrainingProgress(total_epochs=self.hp.epochCount)
        self.kind = spec.customizationType
        self.classification = self.kind == data.CLASSIFICATION
        self.preference = self.kind == data.PREFERENCE
        # Set on the model's config; None keeps the base model's own (a preference job:
        # none, trainer/preference.py).
        self.dropout = (
            preference.model_dropout(self.hp.dropout) if self.preference else self.hp.dropout
        )
        self.labels: list[str] | None = None  # classification: class id -> label
        self.metrics = MetricsLog(
            storage,
            self.output,
            workdir / "metrics",
            classification=self.classification,
            preference=self.preference,
        )
        # MLflow, if the spec asks for it; logged by rank 0 only.
        self.tracking = (
            tracking_for(spec, reporter.event) if self.distributed.is_main else NoTracking()
        )
        self.model: Any = None
        # What the training step runs: the model, or its DDP / FSDP wrapper.
        self.training_model: Any = None
        self.tokenizer: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        # The tokenized data, memory-mapped (trainer/tokenized_data.py); a preference
        # job's in pairs (trainer/preference.py).
        # Sequences of TokenizedExample, or of PreferencePair.
        self.train_set: Sequence[Any] = []
        self.validation_set: Sequence[Any] = []
        self.cache_upload: threading.Thread | None = None  # the data cache being written
        self.pad_id = 0
        self.max_length = self.hp.maxSequenceLength
        # Packs training and validation batches; None: padded batches.
        self.packer: Packer | None = None
        self._training_started = 0.0
        self._steps_before_start = 0  # done by earlier attempts (a resume)
        self.checkpoints = checkpoint.CheckpointUploader(
            storage,
            self.output,
            keep=self.hp.keepCheckpoints,
            before_commit=self._check_still_ours,
            on_commit=self._checkpoint_committed,
        )
        self.last_checkpoint_step = 0  # the newest checkpoint written (or resumed from)
        # FSDP, ranks > 0: uploads this rank's shards of each checkpoint.
        self.shard_uploader: checkpoint.ShardUploader | None = None

    # -- the whole job -----------------------------------------------------------

    def run(self) -> TrainerExit:
        self.distributed.initialize(self.device)
        status = self.reporter.read_status()
        # Rank 0 decides for every rank whether there is anything to do.
        terminal = self.distributed.broadcast(status.state.is_terminal())
        if terminal:
            log.info("job %s is already finished; nothing to do", self.spec.jobId)
            return TrainerExit.OK
        self.reporter.add_periodic_upload(self.metrics.upload)
        self.reporter.start_heartbeat()
        stopping = status.state is JobState.STOPPING or self.reporter.poll_stop()
        if self.distributed.broadcast(stopping):
            return self.finish(Outcome.STOPPED)
        self.reporter.move_to(JobState.VALIDATING, "checking the data and the base model")
        self.reporter.event("DEVICES", self.devices_seen())
        self.setup()
        self.resume()
        interrupted = self.interruption()
        if interrupted is not None:
            return self.finish(interrupted)
        self.publish()
        self.reporter.move_to(JobState.RUNNING, f"training for {self.progress.total_steps} steps")
        return self.finish(self.train())

    def devices_seen(self) -> str:
        """Where this attempt trains, as its process sees it: the device, and the GPUs
        its launcher gave it (CUDA_VISIBLE_DEVICES, the same for every rank)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return (
            f"trains on {self.device.type} with {self.distributed.world_size} rank(s); "
            f"CUDA_VISIBLE_DEVICES={'unset' if visible is None else visible}; "
            f"torch sees {gpus} GPU(s)"
        )

    def finish(self, outcome: Outcome) -> TrainerExit:
        """Write what `outcome` means for the job (as trainer/outcome.py lists); return the
        exit code."""
        if outcome is Outcome.PREEMPTED and self.distributed.broadcast(self.reporter.poll_stop()):
            outcome = Outcome.STOPPED  # SIGTERM after a stop request is that stop
        completed = outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED)
        # FSDP: every rank hands in its shards of the final weights.
        final_state = full_model_state(self.model) if completed and self.sharded else None
        if not self.distributed.is_main:
            return self._finish_follower(outcome)
        if completed:
            self.reporter.read_status()  # still ours? (raises Fenced) before writing output
            location = checkpoint.save_final_model(
                self.model,
                self.tokenizer,
                storage=self.storage,
                output=self.output,
                directory=self.workdir,
                state_dict=final_state,
            )
            if lora.is_lora(self.model) and self.hp.mergeAdapter:
                self._save_merged_model(location, final_state)
            self.checkpoints.flush()  # every checkpoint committed before the job ends
            self.metrics.upload()
            self._write_loss_plot()
            self.tracking.finish("FINISHED", model_uri=location.uri)
            self.reporter.stop_heartbeat()
            self.reporter.move_to(JobState.COMPLETED, f"the model is in {location.uri}")
            return TrainerExit.OK
        # Earlier checkpoints' commits (and their events) come before the stop's own.
        self.checkpoints.flush()
        if outcome is Outcome.STOPPED:
            self.reporter.move_to(JobState.STOPPING, "stop requested")
            self.save_checkpoint()
            self.checkpoints.flush()
            self.metrics.upload()
            self._write_loss_plot()
            self.tracking.finish("KILLED")
            self.reporter.stop_heartbeat()
            self.reporter.move_to(JobState.STOPPED, f"stopped after step {self.progress.step}")
            return TrainerExit.OK
        if outcome is Outcome.PAUSED:
            self.save_checkpoint()
            self.checkpoints.flush()  # committed before PAUSED says it is there
            self.metrics.upload()
            self._write_loss_plot()
            self.tracking.finish("KILLED")  # the resumed attempt logs to a new run
            self.reporter.stop_heartbeat()
            self.publish()  # the progress of the checkpoint a resume goes on from
            self.reporter.upload_all()
            self.reporter.move_to(JobState.PAUSED, f"paused after step {self.progress.step}")
            return TrainerExit.OK
        self.save_checkpoint()
        self.checkpoints.flush()
        self.metrics.upload()
        self.tracking.finish("KILLED")  # a resumed attempt logs to a new run
        self.reporter.stop_heartbeat()
        # The last heartbeat may be steps behind: show the step the checkpoint holds,
        # the one a relaunch resumes at.
        self.publish()
        self.reporter.heartbeat()
        self.reporter.event("PREEMPTED", f"SIGTERM after step {self.progress.step}")
        return TrainerExit.PREEMPTED

    def _finish_follower(self, outcome: Outcome) -> TrainerExit:
        """Ranks 1..N-1: take part in the last checkpoint (its RNG states), write
        nothing; rank 0 writes the job's outcome."""
        if outcome in (Outcome.COMPLETED, Outcome.EARLY_STOPPED):
            return TrainerExit.OK
        self.save_checkpoint()
        if outcome in (Outcome.STOPPED, Outcome.PAUSED):
            return TrainerExit.OK
        return TrainerExit.PREEMPTED

    def _write_loss_plot(self) -> None:
        """training_artifacts/loss.png from the metrics files (trainer/plots.py)."""
        title = f"{self.spec.jobName} ({self.spec.jobId})"
        publish_loss_plot(self.storage, self.output, self.metrics, self.workdir, title=title)

    def _save_merged_model(
        self,
        model_location: S3Location,
        full_state: dict[str, Any] | None,
    ) -> None:
        """mergeAdapter: base + adapter as one plain model in `<output>model/merged/`,
        next to the adapter in `model/` (trainer/lora.py). Consumes the peft model.

        Under FSDP (`full_state`: the whole model gathered from the shards) the live model
        holds shards, and merging them would need collectives the other ranks, done, no
        longer answer: rank 0 merges an unsharded copy on the CPU instead."""
        model = self.model if full_state is None else self._unsharded_copy(full_state)
        local = lora.save_merged_model(model, self.tokenizer, self.workdir / "merged")
        target = model_location.child("merged").as_prefix()
        self.storage.upload_directory(local, target)
        log.info("uploaded the merged model to %s", target.uri)

    def _unsharded_copy(self, full_state: dict[str, Any]) -> Any:
        """The job's peft model rebuilt on the CPU from the base model's files, holding the
        gathered weights (base and adapter)."""
        model, _ = load_model(
            self.workdir / "base-model",
            self.spec.baseModelIdentifier,
            torch.device("cpu"),
            labels=self.labels,
            dropout=self.dropout,
            load_arguments=self.precision.model_load_arguments(),
        )
        model = lora.wrap(
            model,
            self.hp,
            classification=self.classification,
            base_model_uri=self.spec.baseModelIdentifier,
        )
        result = model.load_state_dict(full_state, strict=False)
        if result.unexpected_keys:  # not this model's weights: a bug, not bad input
            raise RuntimeError(f"gathered weights the model lacks: {result.unexpected_keys[:5]}")
        return model

    def interruption(self) -> Outcome | None:
        """Checked between steps: lost the job, stop requested, SIGTERM, or pause requested."""
        # One collective for all ranks: rank 0 alone sees the stop request and the
        # fencing, any rank may have had the SIGTERM; every rank acts on the same answer.
        fenced, stopped, preempted, paused = self.distributed.any(
            [
                self.reporter.fenced.is_set(),
                self.reporter.stop_requested.is_set(),
                self.preempted.is_set(),
                self.reporter.pause_requested.is_set(),
            ],
            self.device,
        )
        if fenced:
            raise Fenced("the heartbeat found another attempt owning the job")
        if stopped:
            return Outcome.STOPPED
        if preempted:
            return Outcome.PREEMPTED
        if paused:
            return Outcome.PAUSED
        return None

    def publish(self) -> None:
        self.reporter.set_progress(self.progress.to_document())

    # -- setup -------------------------------------------------------------------

    def setup(self) -> None:
        """Validate all data, then download, check and load the model, then tokenize."""
        spec = self.spec
        data.check_customization_type(spec.customizationType)
        if self.hp.earlyStoppingPatience and spec.validationDataConfig is None:
            # The API refuses such a job at create; a spec written another way ends here.
            raise DataValidationError(
                "hyperParameters.earlyStoppingPatience needs validation data "
                "(validationDataConfig); add it or set earlyStoppingPatience to 0"
            )
        # Preflight (trainer/preflight.py): every record checked and tokenized with the
        # base model's tokenizer before its weights are loaded, or taken from the cache.
        model_dir = self.workdir / "base-model"
        prepared = self.prepare_data(model_dir)
        self.labels = prepared.labels
        self.cache_upload = prepared.cache_upload

        torch.manual_seed(self.hp.seed)
        if self.device.type == "cpu":
            # Exact resume compares weights bitwise; on a CPU determinism costs ~nothing.
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.precision = precision.resolve(self.hp.precision, self.device, os.environ)
        self.model, self.tokenizer = load_model(
            model_dir,
            spec.baseModelIdentifier,
            self.device,
            labels=self.labels,
            dropout=self.dropout,
            load_arguments=self.precision.model_load_arguments(
                _model_type(model_dir), classification=self.classification
            ),
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
        # A classification head pools per row; preference pairs are compared per row.
        if self.hp.packing and not self.classification and not self.preference:
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
        self.training_model = self.distributed.wrap(
            self.model, spec.resources.sharding, self.device
        )
        if self.preference:
            self.pair_up()
        self.optimizer = build_optimizer(self.model, self.hp.learningRate, self.hp.weightDecay)
        self.reporter.observe_optimizer(self.optimizer)  # its learning rate goes to /metrics
        steps_per_epoch = data.steps_per_epoch(
            len(self.train_set), self.global_batch_size, self.hp.gradientAccumulationSteps
        )
        self.progress.total_steps = steps_per_epoch * self.hp.epochCount

    def pair_up(self) -> None:
        """A preference job's data as pairs, each answer with its log-probability under
        the reference: the model as loaded (LoRA: its adapters disabled), before any
        step or resume (trainer/preference.py)."""
        started = time.monotonic()
        splits = []
        for examples in (self.train_set, self.validation_set):
            reference = preference.reference_log_probs(
                self.training_model,
                self.model,
                examples,  # preflight's examples, not pairs yet
                batch_size=2 * self.hp.batchSize,
                pad_id=self.pad_id,
                device=self.device,
                autocast=self.autocast,
            )
            splits.append(preference.PreferencePairs(examples, reference))
        self.train_set, self.validation_set = splits
        log.info(
            "reference log-probabilities of %d training and %d validation pairs in %.1f s",
            len(self.train_set),
            len(self.validation_set),
            time.monotonic() - started,
        )

    def prepare_data(self, model_dir: Path) -> preflight.PreparedData:
        """Rank 0 checks and tokenizes the data (or takes it from the cache) and reports
        what is wrong; meanwhile the other ranks download the model. Then every rank maps
        the one tokenized copy on its host: rank 0's own, or on a host without rank 0,
        the copy its local rank 0 downloads from the cache. A rank that finds neither
        runs preflight itself (from the cache when it can)."""
        data_directory = self.workdir / "data"
        distributed = self.distributed
        if distributed.is_main:
            prepared = preflight.run_preflight(
                self.spec,
                storage=self.storage,
                reporter=self.reporter,
                model_dir=model_dir,
                directory=data_directory,
                # Other hosts' ranks read it from the store; this host's map it here.
                wait_for_cache=self.spec.resources.nodes > 1,
            )
            distributed.broadcast(prepared.cache_key)
            distributed.barrier()
            return prepared
        model = preflight.ModelFetch(self.storage, self.spec.baseModelIdentifier, model_dir)
        model.start()
        key = str(distributed.broadcast(None))
        model.result()
        mapped = preflight.shared_data(
            key,
            cache=DatasetCache(self.storage, self.reporter.store.bucket),
            host_directory=self.host_workdir / "data",
            own_directory=data_directory,
            local_rank_zero=distributed.local_rank == 0,
            barrier=distributed.barrier,
        )
        if mapped is not None:
            max_length = preflight.effective_max_length(model_dir, self.hp.maxSequenceLength)
            return preflight.prepared_data(mapped, max_length, key, from_cache=True)
        log.warning("rank %d found no tokenized data; running preflight", distributed.rank)
        return preflight.run_preflight(
            self.spec,
            storage=self.storage,
            reporter=self.reporter,
            model_dir=model_dir,
            directory=data_directory,
        )

    @property
    def sharded(self) -> bool:
        """FSDP over several ranks: each holds a shard of the weights and optimizer
        state; checkpoints and the final model hold them whole (gathered)."""
        return self.distributed.enabled and self.spec.resources.sharding == "FSDP"

    @property
    def global_batch_size(self) -> int:
        """Examples per global batch: batchSize on each rank (trainer/sharding.py)."""
        return self.hp.batchSize * self.distributed.world_size

    def resume(self) -> None:
        """Continue from the newest committed checkpoint an earlier attempt left, if any.

        Restores the weights, the optimizer (and scheduler) state, the progress with the
        position in the epoch, the metrics files and every RNG stream, so training goes on
        exactly as if it had never stopped. Uncommitted folders are never read.
        """
        steps = checkpoint.committed_steps(self.storage, self.output)
        if not steps:
            return
        step = steps[-1]
        assert self.optimizer is not None
        local = checkpoint.download_checkpoint(
            self.storage, self.output, step, self.workdir / "resume" / f"step-{step}"
        )
        state = checkpoint.read_training_state(local)
        shards = local / checkpoint.SHARDED_FOLDER
        if self.sharded and shards.is_dir():  # every rank reads the pieces of its shards
            load_sharded_state(self.model, self.optimizer, shards)
        elif state.optimizer is None:
            raise ValueError(
                f"checkpoint step {step} holds FSDP shards, which only an FSDP job with several "
                "ranks can resume from"
            )
        elif self.sharded:  # a consolidated checkpoint (written before sharded ones existed)
            weights = checkpoint.read_model_weights(local)
            if lora.is_lora(self.model):  # the adapter alone, under peft's saved names
                weights = lora.model_state_from_adapter(self.model, weights)
            load_full_state(self.model, self.optimizer, weights, state.optimizer)
        else:
            self.load_weights(local)
            self.optimizer.load_state_dict(state.optimizer)
        self.load_scheduler_state(state.scheduler)
        saved = state.trainer_state
        total_steps = self.progress.total_steps
        self.progress.load_state_dict(saved["progress"])
        if (
            saved.get("trainingExamples") != len(self.train_set)
            or self.progress.total_steps != total_steps
            or saved.get("worldSize", 1) != self.distributed.world_size
        ):
            self.reporter.event(
                "RESUME_WARNING",
                f"the training data changed since step {step} was saved "
                f"({saved.get('trainingExamples')} examples then, {len(self.train_set)} now; "
                f"{saved.get('worldSize', 1)} processes then, "
                f"{self.distributed.world_size} now): "
                "training goes on from its weights, but not in the same order",
            )
            self.progress.total_steps = total_steps
        self.metrics.restore(local / checkpoint.METRICS_FOLDER)
        restore_rng_state(*rank_rng_state(saved, state.rng_tensors, self.distributed.rank))
        self.last_checkpoint_step = step
        shutil.rmtree(local)
        message = f"resumed from step {step} (epoch {self.progress.epoch})"
        log.info("%s", message)
        self.reporter.event("RESUMED", message)

    def load_weights(self, directory: Path) -> None:
        """Load a checkpoint's weights (for a LoRA job, its adapter) into the model."""
        if lora.is_lora(self.model):
            adapter = load_file(directory / checkpoint.ADAPTER_WEIGHTS)
            lora.load_trainable_state_dict(self.model, adapter)
        else:
            checkpoint.load_model_weights(self.model, directory)

    def load_scheduler_state(self, state: dict[str, Any] | None) -> None:
        """The learning rate is a pure function of the step (trainer/optim.py), restored
        with the step; a stateful scheduler object would load `state` here."""

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
        """The epochs from where training stands (step 0, or a resumed checkpoint's)."""
        self._training_started = time.monotonic()
        self._steps_before_start = self.progress.step
        accumulation = self.hp.gradientAccumulationSteps
        first_epoch = max(self.progress.epoch, 1) + (1 if self.progress.epoch_complete else 0)
        for epoch in range(first_epoch, self.hp.epochCount + 1):
            if epoch != self.progress.epoch or self.progress.epoch_complete:
                self.progress.epoch = epoch
                self.progress.batches_done_in_epoch = 0
                self.progress.epoch_complete = False
            generator = data.epoch_generator(self.hp.seed, epoch)
            batches = rank_batches(
                self.train_set,
                self.hp.batchSize,
                self.pad_id,
                generator=generator,
                rank=self.distributed.rank,
                world_size=self.distributed.world_size,
                collate=preference.collate_pairs if self.preference else data.collate,
            )
            # The epoch's order is fixed by (seed, epoch): a resumed epoch skips the
            # batches trained on before its checkpoint and goes on with the same ones.
            skip = self.progress.batches_done_in_epoch
            window: list[Batch] = []
            for done, batch in enumerate(itertools.islice(batches, skip, None), start=skip + 1):
                window.append(self.packer.pack_batch(batch) if self.packer else batch)
                if len(window) < accumulation:
                    continue
                self.train_step(window)
                window = []
                self.progress.batches_done_in_epoch = done
                outcome = self.after_step()
                if outcome is not None:
                    return outcome
            if window:  # the epoch's last, shorter accumulation window
                self.train_step(window)
                self.progress.batches_done_in_epoch += len(window)
            outcome = self.end_epoch()
            if outcome is not None:
                return outcome
        return Outcome.COMPLETED

    def after_step(self) -> Outcome | None:
        """Evaluate and checkpoint when their step intervals say so, then see whether
        training stops here (early stopping, a stop request, SIGTERM, a lost job)."""
        step = self.progress.step
        interval = self.hp.evalIntervalSteps
        if interval and step % interval == 0 and self.validation_set and self.evaluate_and_check():
            return Outcome.EARLY_STOPPED
        interval = self.hp.checkpointIntervalSteps
        if interval and step % interval == 0:
            self.save_checkpoint()
        return self.interruption()

    def end_epoch(self) -> Outcome | None:
        """Every epoch ends evaluated (unless its last step was) and checkpointed."""
        stop_early = False
        if self.validation_set and self.progress.last_evaluated_step != self.progress.step:
            stop_early = self.evaluate_and_check()
        self.progress.epoch_complete = True
        if stop_early:
            return Outcome.EARLY_STOPPED
        self.save_checkpoint()
        return self.interruption()

    def evaluate_and_check(self) -> bool:
        """Evaluate; True when early stopping says training should end here."""
        loss = self.evaluate()
        threshold = self.hp.earlyStoppingThreshold
        self.progress.record_evaluation(loss, threshold)
        patience = self.hp.earlyStoppingPatience
        if not patience or self.progress.evaluations_without_improvement < patience:
            return False
        message = (
            f"early stopping at step {self.progress.step}: validation loss {loss:.4f}, "
            f"best {self.progress.best_validation_loss:.4f}; {patience} evaluations in a row "
            f"without an improvement of more than {threshold}"
        )
        log.info("%s", message)
        self.reporter.event("EARLY_STOPPED", message)
        return True

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
        distributed = self.distributed
        # Every token of the global window weighs the same, whichever rank has it.
        (target_tokens,) = distributed.sum([sum(target_count(b) for b in window)], self.device)
        if self.preference:  # target_tokens counts pairs
            self.preference_step(step, window, int(target_tokens))
            return
        window_loss = backward_window(
            self.training_model,
            window,
            self.device,
            self.autocast,
            target_tokens=int(target_tokens),
            gradient_scale=float(distributed.world_size),
            no_sync=getattr(self.training_model, "no_sync", None),
        )
        clip_gradients(self.model.parameters(), self.hp.maxGradNorm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        tokens = sum(int(b.attention_mask.sum()) for b in window)
        loss, tokens_everywhere, correct = distributed.sum(
            [window_loss.loss, float(tokens), float(window_loss.correct_tokens)], self.device
        )
        step_metrics: dict[str, float] = {}
        if not self.classification:
            # Of the global window's target tokens, as the loss is.
            accuracy = correct / max(target_tokens, 1)
            self.progress.training_token_accuracy = accuracy
            step_metrics[TOKEN_ACCURACY] = accuracy
        self.record_step(step, loss, int(tokens_everywhere), step_metrics)
        if self.logs_step(step):
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.2e",
                step,
                self.progress.total_steps,
                self.progress.epoch,
                self.progress.training_loss,
                learning_rate,
            )

    def record_step(
        self, step: int, loss: float, tokens: int, step_metrics: dict[str, float]
    ) -> None:
        """What every optimizer step leaves, whatever its loss: the progress (step, loss,
        tokens, ETA), the metrics CSV row, MLflow, and the document the heartbeat writes."""
        assert self.optimizer is not None
        self.progress.tokens_seen += tokens
        self.progress.step = step
        self.progress.training_loss = loss
        if self.progress.first_step_at is None:
            self.progress.first_step_at = utc_now()
        steps_this_run = step - self._steps_before_start
        seconds_per_step = (time.monotonic() - self._training_started) / steps_this_run
        self.progress.eta_seconds = round(seconds_per_step * (self.progress.total_steps - step), 1)
        self.metrics.add_training(step, self.progress.epoch, loss, step_metrics)
        self.tracking.log_metrics(
            step,
            {
                "training_loss": loss,
                "learning_rate": self.optimizer.param_groups[0]["lr"],
                **{f"training_{name}": value for name, value in step_metrics.items()},
            },
        )
        self.publish()

    def logs_step(self, step: int) -> bool:
        """Steps worth a log line: the first, every tenth, the last."""
        return step == 1 or step % 10 == 0 or step == self.progress.total_steps

    def preference_step(self, step: int, window: list[Batch], pairs: int) -> None:
        """The rest of `train_step` for a preference job: DPO over the window's pairs."""
        assert self.optimizer is not None
        distributed = self.distributed
        totals = preference.backward_preference_window(
            self.training_model,
            window,
            self.device,
            self.autocast,
            beta=self.hp.dpoBeta,
            pairs=pairs,
            gradient_scale=float(distributed.world_size),
            no_sync=getattr(self.training_model, "no_sync", None),
        )
        clip_gradients(self.model.parameters(), self.hp.maxGradNorm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        tokens = sum(int(b.attention_mask.sum()) for b in window)
        *summed, tokens_everywhere = distributed.sum(
            [*totals.as_list(), float(tokens)], self.device
        )
        totals = preference.PreferenceTotals.from_list(summed)
        loss, step_metrics = totals.mean_loss, totals.means()
        self.record_step(step, loss, int(tokens_everywhere), step_metrics)
        if self.logs_step(step):
            log.info(
                "step %d/%d epoch %d DPO loss %.4f reward accuracy %.3f margin %.4f",
                step,
                self.progress.total_steps,
                self.progress.epoch,
                loss,
                step_metrics[preference.REWARD_ACCURACY],
                step_metrics[preference.REWARD_MARGIN],
            )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss per completion token over the whole validation set."""
        if self.classification:
            return self.evaluate_classification()
        if self.preference:
            return self.evaluate_preference()
        # Packed like the training batches when training packs (trainer/evaluation.py).
        result = validation_loss(
            self.model,
            self.validation_set,
            batch_size=self.hp.batchSize,
            pad_id=self.pad_id,
            packer=self.packer,
            device=self.device,
            autocast=self.autocast,
        )
        loss = result.mean
        scores = {TOKEN_ACCURACY: result.token_accuracy}
        self.progress.validation_loss = loss
        self.progress.validation_metrics = scores
        self.metrics.add_validation(self.progress.step, self.progress.epoch, loss, scores)
        self.tracking.log_metrics(
            self.progress.step,
            {"validation_loss": loss, f"validation_{TOKEN_ACCURACY}": result.token_accuracy},
        )
        self.publish()
        log.info(
            "epoch %d validation loss %.4f token accuracy %.4f (%d target tokens, %d %s rows)",
            self.progress.epoch,
            loss,
            result.token_accuracy,
            result.target_tokens,
            result.rows,
            "packed" if result.packed else "padded",
        )
        return loss

    @torch.no_grad()
    def evaluate_preference(self) -> float:
        """Mean DPO loss per pair, and the reward metrics, over the validation pairs."""
        totals = preference.preference_validation(
            self.model,
            self.validation_set,
            batch_size=self.hp.batchSize,
            pad_id=self.pad_id,
            beta=self.hp.dpoBeta,
            device=self.device,
            autocast=self.autocast,
        )
        loss, scores = totals.mean_loss, totals.means()
        self.progress.validation_loss = loss
        self.progress.validation_metrics = scores
        self.metrics.add_validation(self.progress.step, self.progress.epoch, loss, scores)
        self.tracking.log_metrics(
            self.progress.step,
            {"validation_loss": loss, **{f"validation_{k}": v for k, v in scores.items()}},
        )
        self.publish()
        log.info(
            "epoch %d validation DPO loss %.4f %s (%d pairs)",
            self.progress.epoch,
            loss,
            " ".join(f"{name} {value:.4f}" for name, value in scores.items()),
            totals.pairs,
        )
        return loss

    @torch.no_grad()
    def evaluate_classification(self) -> float:
        """Mean cross-entropy per example, and accuracy / precision / recall / F1 (macro)."""
        result = classification_validation(
            self.model,
            self.validation_set,
            batch_size=self.hp.batchSize,
            pad_id=self.pad_id,
            device=self.device,
            autocast=self.autocast,
        )
        loss_value, scores = result.loss, result.scores
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
        """Write a resumable checkpoint of the current step and queue its upload.

        The files are written now (the tensors change at the next step); the upload and
        the COMMITTED marker happen on the uploader's thread. Nothing before the first
        step: the weights are still the base model's, already in object storage. A step
        already checkpointed (an epoch end, or the checkpoint this attempt resumed from)
        is not written again.
        """
        step = self.progress.step
        if self.model is None or step == 0:
            return
        if step == self.last_checkpoint_step:
            if self.distributed.is_main:
                self.checkpoints.flush()
                location = checkpoint.checkpoint_location(self.output, step)
                self.reporter.event("CHECKPOINT_COMMITTED", f"step {step}: {location.uri}")
            return
        assert self.optimizer is not None
        # Every rank's generators (a collective); rank 0 writes them all.
        states = self.distributed.gather(capture_rng_state())
        local = self.workdir / "checkpoints" / f"step-{step}"  # each rank's own workdir
        if self.sharded:  # every rank writes its own shards, uploads them in parallel
            if local.exists():
                shutil.rmtree(local)
            save_sharded_state(self.model, self.optimizer, local / checkpoint.SHARDED_FOLDER)
            if not self.distributed.is_main:
                if self.shard_uploader is None:
                    self.shard_uploader = checkpoint.ShardUploader(
                        self.storage, self.output, self.distributed.rank, self.reporter.attempt
                    )
                self.shard_uploader.submit(local / checkpoint.SHARDED_FOLDER, step)
            else:  # commit only once the other ranks' shards of this attempt are in
                ranks = range(1, self.distributed.world_size)
                attempt = self.reporter.attempt
                self.checkpoints.shards_ready = lambda _, location: checkpoint.wait_for_shards(
                    self.storage, location, ranks, attempt
                )
        if not self.distributed.is_main:
            self.last_checkpoint_step = step
            return
        rng_document, rng_tensors = states[0]
        trainer_state: dict[str, Any] = {
            "progress": self.progress.state_dict(),
            "rng": rng_document,
            "seed": self.hp.seed,  # with the epoch, it fixes the epoch's shuffled order
            "trainingExamples": len(self.train_set),
        }
        if self.distributed.enabled:
            trainer_state["worldSize"] = self.distributed.world_size
            trainer_state["rankRng"] = {str(r): states[r][0] for r in range(1, len(states))}
            for rank in range(1, len(states)):
                for name, tensor in states[rank][1].items():
                    rng_tensors[f"{RANK_PREFIX.format(rank)}{name}"] = tensor
        checkpoint.write_checkpoint(
            local,
            # Sharded: the weights and optimizer state are in sharded/ already.
            save_weights=(lambda directory: None) if self.sharded else self.save_weights,
            state=checkpoint.TrainingState(
                trainer_state=trainer_state,
                optimizer=None if self.sharded else self.optimizer.state_dict(),
                scheduler=self.scheduler_state(),
                rng_tensors=rng_tensors,
            ),
            manifest=checkpoint_manifest(self.progress),
            metrics_files=self.metrics.files(),
        )
        self.checkpoints.submit(local, step)
        self.last_checkpoint_step = step

    def save_weights(self, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
        """What a checkpoint holds of the model: all of it, or a LoRA job's adapter only
        (a peft model's save_pretrained writes just the adapter); `state_dict` is the
        whole model gathered from FSDP shards."""
        checkpoint.save_model(self.model, self.tokenizer, directory, state_dict)

    def scheduler_state(self) -> dict[str, Any] | None:
        """The learning rate is a pure function of the step (trainer/optim.py): nothing
        to save beyond the step. A stateful scheduler object returns its state_dict."""
        return None

    def _check_still_ours(self) -> None:
        self.reporter.read_status()  # raises Fenced if another attempt owns the job

    def _checkpoint_committed(self, step: int, location: S3Location) -> None:
        self.reporter.event("CHECKPOINT_COMMITTED", f"step {step}: {location.uri}")

    def cleanup(self) -> None:
        """Finish pending checkpoint uploads, then free the model and optimizer (and
        their accelerator memory).

        The working directory stays: the launcher owns it and decides when it goes."""
        self.tracking.finish("FAILED")  # nothing if the job already finished its run
        if self.cache_upload is not None:
            self.cache_upload.join()  # a later job on the same data skips tokenizing
        if self.shard_uploader is not None:
            self.shard_uploader.close()  # rank 0 commits nothing without these shards
        try:
            self.checkpoints.close()
        except Fenced:
            log.warning("a checkpoint upload stopped: another attempt owns the job")
        except Exception:
            log.exception("a checkpoint upload failed; the job resumes from an earlier one")
        self.model = self.training_model = self.optimizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _model_type(model_dir: Path) -> str | None:
    """config.json's model_type (the directory passed the model checks already)."""
    try:
        value = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
