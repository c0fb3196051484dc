"""Checkpoints and the final model, written to the job's output prefix.
Long because a checkpoint's layout, writing, upload and commit are one contract.

A checkpoint is the folder `checkpoints/step-<n>/`:

    config.json, *.safetensors, tokenizer files   the model, loadable by from_pretrained
                                                  (a LoRA job: the adapter only)
    optimizer.pt                                  optimizer state_dict (tensors, numbers)
    sharded/                                      instead of the two above, for an FSDP
                                                  job: every rank's own shards of the
                                                  weights and optimizer state
                                                  (torch.distributed.checkpoint: one
                                                  __<rank>_0.distcp a rank, .metadata,
                                                  and rank-<r>.done from each rank > 0)
    scheduler.pt                                  learning-rate scheduler state, if any
    rng_state.safetensors                         torch CPU / CUDA generator states
    trainer_state.json                            progress, data position, Python and
                                                  NumPy generator states
    metrics/*.csv                                 the metrics files up to this step
    manifest.json                                 step, epoch, losses, metrics, time
    COMMITTED                                     written last

Invariants:
- S3 has no atomic folder write, so readers (a resuming trainer, the API's checkpoint
  listing, a user) trust a checkpoint only when its COMMITTED marker exists. A trainer
  killed halfway through an upload leaves a folder everyone ignores.
- Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` for the
  optimizer and scheduler states, safetensors and JSON for the rest.
- Uploads run on one background thread (`CheckpointUploader`), so training does not wait
  on the network; the files are written locally first, synchronously, so what is
  uploaded is the state of exactly that step. Before COMMITTED is written the uploader
  checks that this trainer still owns the job (fencing).
- A sharded checkpoint is committed by rank 0 only once every other rank's shards are in
  the store, uploaded by this attempt: each rank uploads its own (`ShardUploader`, in
  parallel, in the background) and then writes `rank-<r>.done` naming its attempt;
  rank 0 waits for all of them (`wait_for_shards`) before COMMITTED.
- After a commit only the newest `keep` committed checkpoints remain; older ones, and
  uncommitted folders of earlier steps, are deleted. The final model (`model/`) is
  separate and never pruned.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jobstore.documents import utc_now
from jobstore.storage import ObjectStore, S3Location

log = logging.getLogger(__name__)

COMMITTED = "COMMITTED"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"
OPTIMIZER_STATE = "optimizer.pt"
SCHEDULER_STATE = "scheduler.pt"
RNG_STATE = "rng_state.safetensors"
METRICS_FOLDER = "metrics"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHARDED_FOLDER = "sharded"
# How long rank 0 waits for the other ranks' shards before a commit fails. A rank that
# died takes the whole group down long before this.
SHARD_WAIT_SECONDS = 1800.0

_STEP_FOLDER = re.compile(r"^step-(\d+)/(.*)$")


def checkpoint_location(output: S3Location, step: int) -> S3Location:
    return output.child("checkpoints", f"step-{step}").as_prefix()


# -- the model -------------------------------------------------------------------------


def _save_pretrained(
    model: Any, tokenizer: Any, directory: Path, state_dict: dict[str, Any] | None = None
) -> None:
    """config.json, *.safetensors (transformers 5 writes nothing else), generation config
    and tokenizer files: a directory `from_pretrained` loads as it is. A peft model
    writes its adapter (adapter_config.json, adapter_model.safetensors) only."""
    if directory.exists():
        shutil.rmtree(directory)
    if state_dict is None:
        model.save_pretrained(directory)
    else:  # gathered from sharded parameters (FSDP): the model's own are shards
        model.save_pretrained(directory, state_dict=state_dict)
    tokenizer.save_pretrained(directory)


def save_model(
    model: Any, tokenizer: Any, directory: Path, state_dict: dict[str, Any] | None = None
) -> None:
    """The weights a checkpoint holds: the whole model, or a LoRA model's adapter;
    `state_dict` when the model's parameters are shards (FSDP)."""
    _save_pretrained(model, tokenizer, directory, state_dict)


def read_model_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every weight tensor of a checkpoint folder (the model's, not the RNG states)."""
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        if path.name != RNG_STATE:
            state |= load_file(path)
    if not state:
        raise ValueError(f"no model weights in {directory}")
    return state


def load_model_weights(model: Any, directory: Path) -> None:
    """Load the full-model weights `save_model` wrote into `model` (built the same way;
    a LoRA model loads its adapter with trainer/lora.py instead).

    A parameter missing from the files is accepted only when it is tied to one that was
    loaded (a language model head sharing the embedding matrix); anything else missing,
    or any unexpected name, means the checkpoint is not of this model, and raises.
    """
    state = read_model_weights(directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameters = dict(model.named_parameters())
    loaded_storage = {parameters[name].data_ptr() for name in state if name in parameters}
    untied = [
        name
        for name in missing
        if name not in parameters or parameters[name].data_ptr() not in loaded_storage
    ]
    if unexpected or untied:
        raise ValueError(
            f"the checkpoint does not match the model: missing {untied[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )


# -- writing a checkpoint locally ---------------------------------------------------------


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides the weights."""

    trainer_state: dict[str, Any]  # JSON: progress, data position, Python/NumPy RNG
    optimizer: dict[str, Any] | None  # None: in the sharded folder (FSDP)
    scheduler: dict[str, Any] | None
    rng_tensors: dict[str, torch.Tensor]


def write_checkpoint(
    directory: Path,
    *,
    save_weights: Callable[[Path], None],
    state: TrainingState,
    manifest: dict[str, Any],
    metrics_files: list[Path],
) -> Path:
    """Write a whole checkpoint into `directory` (replaced if it exists); return it.

    Synchronous on purpose: the optimizer and model tensors change in place at the next
    step, so they are on disk before training goes on.
    """
    save_weights(directory)  # starts from an empty directory
    if state.optimizer is not None:
        torch.save(state.optimizer, directory / OPTIMIZER_STATE)
    if state.scheduler is not None:
        torch.save(state.scheduler, directory / SCHEDULER_STATE)
    save_file({k: v.contiguous() for k, v in state.rng_tensors.items()}, directory / RNG_STATE)
    (directory / TRAINER_STATE).write_text(
        json.dumps(state.trainer_state, indent=2, sort_keys=True) + "\n"
    )
    if metrics_files:
        (directory / METRICS_FOLDER).mkdir()
        for path in metrics_files:
            shutil.copyfile(path, directory / METRICS_FOLDER / path.name)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def read_training_state(directory: Path) -> TrainingState:
    """The non-weight state of a downloaded checkpoint, read without unpickling."""
    scheduler_path = directory / SCHEDULER_STATE
    optimizer_path = directory / OPTIMIZER_STATE
    return TrainingState(
        trainer_state=json.loads((directory / TRAINER_STATE).read_text()),
        optimizer=(
            torch.load(optimizer_path, weights_only=True) if optimizer_path.is_file() else None
        ),
        scheduler=(
            torch.load(scheduler_path, weights_only=True) if scheduler_path.is_file() else None
        ),
        rng_tensors=load_file(directory / RNG_STATE),
    )


# -- what is in the store ---------------------------------------------------------------


def _checkpoint_folders(storage: ObjectStore, output: S3Location) -> dict[int, bool]:
    """step -> committed?, for every checkpoint folder under the output prefix."""
    prefix = output.child("checkpoints").as_prefix()
    folders: dict[int, bool] = {}
    for item in storage.list_objects(prefix):
        match = _STEP_FOLDER.match(item["key"][len(prefix.key) :])
        if match is None:
            continue
        step = int(match.group(1))
        folders[step] = folders.get(step, False) or match.group(2) == COMMITTED
    return folders


def committed_steps(storage: ObjectStore, output: S3Location) -> list[int]:
    """Steps of the committed checkpoints, lowest first."""
    return sorted(step for step, done in _checkpoint_folders(storage, output).items() if done)


def download_checkpoint(
    storage: ObjectStore, output: S3Location, step: int, directory: Path
) -> Path:
    """Download committed checkpoint `step` into a fresh `directory`; return it."""
    if directory.exists():
        shutil.rmtree(directory)
    storage.download_prefix(checkpoint_location(output, step), directory)
    return directory


def _delete_checkpoint(storage: ObjectStore, output: S3Location, step: int) -> None:
    location = checkpoint_location(output, step)
    storage.delete(location.child(COMMITTED))  # first: no reader trusts it from now on
    storage.delete_prefix(location)


def prune(storage: ObjectStore, output: S3Location, *, keep: int, newest: int) -> list[int]:
    """Keep the newest `keep` committed checkpoints; delete older committed ones and
    uncommitted folders of steps before `newest` (leftovers of an interrupted upload).
    Returns the deleted steps."""
    folders = _checkpoint_folders(storage, output)
    committed = sorted(step for step, done in folders.items() if done)
    doomed = set(committed[:-keep]) | {
        step for step, done in folders.items() if not done and step < newest
    }
    for step in sorted(doomed):
        _delete_checkpoint(storage, output, step)
    return sorted(doomed)


def upload_checkpoint(
    storage: ObjectStore,
    output: S3Location,
    local: Path,
    step: int,
    *,
    before_commit: Callable[[], None],
) -> S3Location:
    """Upload a locally written checkpoint and commit it; return its prefix."""
    target = checkpoint_location(output, step)
    marker = target.child(COMMITTED)
    # An earlier attempt may have committed this step already: withdraw its marker
    # before overwriting the files under it, so no reader trusts a half-written mix.
    storage.delete(marker)
    files = storage.upload_directory(local, target)
    before_commit()
    storage.put_json(marker, {"step": step, "committedAt": utc_now(), "files": sorted(files)})
    return target


# -- the background uploader -------------------------------------------------------------


class CheckpointUploader:
    """One thread that uploads, commits and prunes checkpoints in the order submitted.

    `submit()` returns at once. `flush()` waits until everything submitted is committed
    and raises the first error an upload met (a storage error, or `Fenced` from
    `before_commit`); after an error nothing more is uploaded, since a later checkpoint
    committed over a failed earlier one would hide the failure.
    """

    def __init__(
        self,
        storage: ObjectStore,
        output: S3Location,
        *,
        keep: int,
        before_commit: Callable[[], None],
        on_commit: Callable[[int, S3Location], None],
    ) -> None:
        self.storage = storage
        self.output = output
        self.keep = keep
        self.before_commit = before_commit
        self.on_commit = on_commit
        # A sharded job's rank 0: waits for the other ranks' shards of a step before
        # committing it (set by the recipe; None: nothing to wait for).
        self.shards_ready: Callable[[int, S3Location], None] | None = None
        self._queue: queue.Queue[tuple[Path, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, local: Path, step: int) -> None:
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="checkpoint-upload", daemon=True
            )
            self._thread.start()
        self._queue.put((local, step))

    def flush(self) -> None:
        """Wait for every submitted checkpoint; raise the first upload error."""
        if self._thread is not None:
            self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Finish the pending uploads and end the thread; raise the first upload error."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                local, step = task
                if self._error is None:
                    self._upload(local, step)
            except BaseException as error:  # handed to the training thread by flush()
                log.error("checkpoint upload failed: %s", error)
                self._error = error
            finally:
                self._queue.task_done()

    def _upload(self, local: Path, step: int) -> None:
        def before_commit() -> None:
            if self.shards_ready is not None and (local / SHARDED_FOLDER).is_dir():
                self.shards_ready(step, checkpoint_location(self.output, step))
            self.before_commit()

        target = upload_checkpoint(
            self.storage, self.output, local, step, before_commit=before_commit
        )
        shutil.rmtree(local)  # the working directory is not where checkpoints are kept
        log.info("committed checkpoint %s", target.uri)
        self.on_commit(step, target)
        deleted = prune(self.storage, self.output, keep=self.keep, newest=step)
        if deleted:
            log.info("deleted older checkpoints: steps %s", deleted)


class ShardUploader:
    """A rank > 0 of a sharded job: uploads its shards of each checkpoint on one
    background thread, then writes `sharded/rank-<r>.done` naming its attempt, which is
    what rank 0 waits for before it commits the step. Errors are logged: rank 0 then
    never sees the marker, and the step is not committed."""

    def __init__(self, storage: ObjectStore, output: S3Location, rank: int, attempt: int):
        self.storage = storage
        self.output = output
        self.rank = rank
        self.attempt = attempt
        self._queue: queue.Queue[tuple[Path, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="shard-upload", daemon=True)
        self._thread.start()

    def submit(self, local: Path, step: int) -> None:
        """Upload the shard files in `local` (then delete them) as step `step`'s."""
        self._queue.put((local, step))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            local, step = task
            target = checkpoint_location(self.output, step).child(SHARDED_FOLDER)
            try:
                self.storage.upload_directory(local, target.as_prefix())
                self.storage.put_json(
                    target.child(f"rank-{self.rank}.done"),
                    {"attempt": self.attempt, "step": step, "committedAt": utc_now()},
                )
                shutil.rmtree(local)
            except Exception:
                log.exception("uploading rank %d's shards of step %d failed", self.rank, step)


def wait_for_shards(
    storage: ObjectStore,
    location: S3Location,
    ranks: range,
    attempt: int,
    *,
    timeout: float = SHARD_WAIT_SECONDS,
) -> None:
    """Block until every rank of `ranks` has uploaded its shards of the checkpoint at
    `location` in this `attempt` (a marker an earlier attempt left does not count).
    Raises TimeoutError naming the ranks still missing."""
    deadline = time.monotonic() + timeout
    waiting = list(ranks)
    while True:
        waiting = [
            rank
            for rank in waiting
            if not _marker_of(storage, location.child(SHARDED_FOLDER, f"rank-{rank}.done"), attempt)
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"ranks {waiting} did not upload their shards of {location.uri} in {timeout:.0f} s"
            )
        time.sleep(0.2)


def _marker_of(storage: ObjectStore, marker: S3Location, attempt: int) -> bool:
    found = storage.get_json(marker)
    return found is not None and found[0].get("attempt") == attempt


def save_final_model(
    model: Any,
    tokenizer: Any,
    *,
    storage: ObjectStore,
    output: S3Location,
    directory: Path,
    state_dict: dict[str, Any] | None = None,
) -> S3Location:
    """Upload the trained model to `<output>model/`, replacing anything already there
    (`state_dict`: the full weights gathered from an FSDP model's shards)."""
    local = directory / "model"
    _save_pretrained(model, tokenizer, local, state_dict)
    target = output.child("model").as_prefix()
    storage.delete_prefix(target)  # stale files from an earlier attempt must not mix in
    storage.upload_directory(local, target)
    log.info("uploaded the model to %s", target.uri)
    return target
