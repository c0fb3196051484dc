"""Checkpoints and the final model, written to the job's output prefix.

A checkpoint is `checkpoints/step-<n>/`: the model (safetensors), the tokenizer and
`trainer_state.json`, then an object `COMMITTED`, written last. S3 has no atomic
directory write, so readers (a resuming trainer, a user) trust a checkpoint only when
its COMMITTED marker exists: a trainer killed halfway through an upload leaves an
uncommitted folder that everyone ignores.

Optimizer and RNG state are not saved yet (resume is a later step); they will go next
to trainer_state.json in the same folder, before COMMITTED.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from service.documents import utc_now
from service.storage import ObjectStore, S3Location

log = logging.getLogger(__name__)

COMMITTED = "COMMITTED"
TRAINER_STATE = "trainer_state.json"


def checkpoint_location(output: S3Location, step: int) -> S3Location:
    return output.child("checkpoints", f"step-{step}").as_prefix()


def _save_pretrained(model: Any, tokenizer: Any, directory: Path) -> None:
    """config.json, *.safetensors (transformers 5 writes nothing else), generation config
    and tokenizer files: a directory `from_pretrained` loads as it is."""
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    state: dict[str, Any],
    *,
    storage: ObjectStore,
    output: S3Location,
    directory: Path,
) -> S3Location:
    """Write and upload a committed checkpoint for `state["step"]`; return its prefix."""
    step = int(state["step"])
    local = directory / f"step-{step}"
    _save_pretrained(model, tokenizer, local)
    (local / TRAINER_STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    target = checkpoint_location(output, step)
    marker = target.child(COMMITTED)
    # An earlier attempt may have committed this step already: withdraw its marker
    # before overwriting the files under it, so no reader trusts a half-written mix.
    storage.delete(marker)
    files = storage.upload_directory(local, target)
    storage.put_json(marker, {"step": step, "committedAt": utc_now(), "files": sorted(files)})
    shutil.rmtree(local)  # the working directory is not where checkpoints are kept
    log.info("committed checkpoint %s", target.uri)
    return target


def save_final_model(
    model: Any, tokenizer: Any, *, storage: ObjectStore, output: S3Location, directory: Path
) -> S3Location:
    """Upload the trained model to `<output>model/`, replacing anything already there."""
    local = directory / "model"
    _save_pretrained(model, tokenizer, local)
    target = output.child("model").as_prefix()
    storage.delete_prefix(target)  # stale files from an earlier attempt must not mix in
    storage.upload_directory(local, target)
    log.info("uploaded the model to %s", target.uri)
    return target
