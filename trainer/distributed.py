"""Several trainer processes for one job: torchrun's environment, the process group,
DDP / FSDP wrapping and the few collectives the recipe needs.

Started by `torchrun` (trainer/torchrun.py wraps it), every process of a job runs the
same recipe with RANK / WORLD_SIZE / LOCAL_RANK set. One process alone (no RANK) is
world size 1: no process group, no wrapping, no collectives, so a single-process job
computes exactly what it did before any of this existed.

Who does what:
- every rank trains on its own slice of each global batch (trainer/sharding.py) and
  takes part in each collective at the same points of the loop;
- rank 0 alone talks to the job's documents and output (status, heartbeat, events,
  metrics, checkpoints, the final model), and alone decides what the others cannot
  know (a stop request, a fenced attempt), told to every rank at the next collective;
- a rank that loses a peer (killed, crashed) gets an error from its next collective and
  exits without writing anything (`is_lost_peer`); torchrun tears the group down and
  the launcher sees the first failure's exit code (trainer/torchrun.py).
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# How long a collective waits for the slowest rank. Rank 0 validates and tokenizes the
# data before the others start theirs, so this bounds the preflight of a large dataset
# too; a dead rank does not wait this long (its sockets close and torchrun tears the
# group down at once).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Distributed:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; none set means one process."""
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return cls()
        try:
            rank = int(environ["RANK"])
            world_size = int(environ["WORLD_SIZE"])
            local_rank = int(environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"RANK {rank} is not within WORLD_SIZE {world_size}")
        return cls(rank, world_size, local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the job's documents and output."""
        return self.rank == 0

    # -- set-up --------------------------------------------------------------------

    def device(self, default: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) under torchrun, else `default`."""
        if self.enabled and default.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return default

    def initialize(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo between CPU processes."""
        if not self.enabled or dist.is_initialized():
            return
        die_with_parent()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            rank=self.rank,
            world_size=self.world_size,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        log.info("rank %d of %d joined the %s process group", self.rank, self.world_size, backend)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: Any, sharding: str, device: torch.device) -> Any:
        """The module the training step runs: the model itself alone, DDP over ranks
        (gradients averaged in buckets during backward), or FSDP2 (`fully_shard`:
        each transformer block (`transformer_blocks`), then the rest of the model,
        sharded over the ranks)."""
        if not self.enabled:
            return model
        if sharding == "FSDP":
            from torch.distributed.fsdp import fully_shard

            # One FSDP unit a transformer block: its weights are gathered for its own
            # forward and backward only, so a rank never holds the whole model at once.
            for block in transformer_blocks(model):
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # -- collectives (every rank calls each one at the same point) ------------------

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over the ranks (token counts, loss sums)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(value) for value in tensor.tolist()]

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Element-wise: set on any rank (a SIGTERM one rank got, a stop rank 0 saw)."""
        if not self.enabled:
            return flags
        tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(value) for value in tensor.tolist()]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a decision only rank 0 can make)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (RNG states)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules of the classes its `_no_split_modules` names
    (Llama's and Qwen2's decoder layers, GPT-2's blocks, BERT's layers and embeddings),
    innermost first, read from every submodule so that peft's wrappers around the model
    do not hide it; else, for a model that names none, the members of its longest list
    of modules of one class. Empty for a model with neither."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    # Innermost first: FSDP2 wraps a module's children before the module itself.
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if blocks:
        return blocks[::-1]
    longest: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len({type(c) for c in module}) == 1:
            longest = max(longest, list(module), key=len)
    return longest if len(longest) > 1 else []


# -- FSDP: sharded checkpoints, each rank its own shards ------------------------------


def save_sharded_state(model: Any, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write this rank's shards of the weights and the optimizer state into `directory`
    with torch.distributed.checkpoint (a collective: every rank calls it, each writes its
    own file, rank 0 adds the `.metadata` that says where every piece is). Nothing is
    gathered. Frozen weights (a LoRA job's base model) are not saved: they are the base
    model's own, loaded again on resume."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(ignore_frozen_params=True)
    )
    directory.mkdir(parents=True, exist_ok=True)
    dcp.save(
        {"model": model_state, "optimizer": optimizer_state},
        storage_writer=dcp.FileSystemWriter(directory),
    )


def load_sharded_state(model: Any, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load the shards `save_sharded_state` wrote (by any number of ranks: the pieces
    are read by where they belong, not by rank) into this rank's shards; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(ignore_frozen_params=True)
    )
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    # dcp.load raises for any of these names the checkpoint lacks; the frozen weights,
    # absent by design, keep the base model's values (hence strict=False below).
    dcp.load(state, storage_reader=dcp.FileSystemReader(directory))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )


# -- FSDP: whole state dicts gathered from the shards, and loaded back into them ------


def full_model_state(model: Any) -> dict[str, Any]:
    """The whole model's weights on the CPU, gathered from every rank's shards (a
    collective: every rank calls it; rank 0 writes them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state(
    model: Any,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:
    """Load whole state dicts (a consolidated checkpoint) into the shards of every rank.
    Tied weights (a head sharing the embedding) are absent from the saved files, and a
    LoRA model's frozen base weights (the adapter alone is saved): missing names are
    accepted, names the model does not have raise ValueError (non-strict loading would
    skip them silently, which once left a resumed LoRA job with a fresh adapter)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    unexpected = sorted(set(model_state) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"the checkpoint has weights this model does not: {unexpected[:5]}")
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def is_lost_peer(error: BaseException) -> bool:
    """True for the error a collective raises when another rank is gone (killed, or
    crashed and torn down): this rank then exits without writing a failure, which is
    the other rank's to explain (or the launcher's: the job is relaunched)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text
        for marker in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL")
    )


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (torchrun's agent) dies.

    torchrun starts each rank in a session of its own, so a SIGKILL of the launcher's
    process group reaches the agent only; without this the ranks would go on training
    as orphans of an attempt the reconciler has given up on.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("could not tie this rank's life to torchrun's agent (prctl)")
        return
    if os.getppid() == 1:  # the agent died before prctl
        os.kill(os.getpid(), signal.SIGKILL)
