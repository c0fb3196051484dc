"""The random number generators' states, saved into a checkpoint and restored from it.

A resumed trainer must draw the same random numbers (dropout masks, anything else the
model or the loop samples) as an uninterrupted one would have from the checkpoint's step
on. Four generators matter: Python's `random`, NumPy's global one, torch's CPU one and,
on a GPU host, each CUDA device's. The shuffling of the data does not use them: every
epoch has its own generator seeded from (seed, epoch) (trainer/data.py).

Safe formats only: the Python and NumPy states are lists of integers in JSON, the torch
states byte tensors in safetensors. Nothing is unpickled on load.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

CUDA_PREFIX = "cuda_"


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-safe states of Python and NumPy, tensors of torch CPU and CUDA devices)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    document = {
        "python": {"version": version, "state": list(internal), "gaussNext": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": [int(key) for key in keys],
            "position": int(position),
            "hasGauss": int(has_gauss),
            "cachedGaussian": float(cached_gaussian),
        },
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{CUDA_PREFIX}{index}"] = state
    return document, tensors


def restore_rng_state(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put every generator back in the state `capture_rng_state()` recorded."""
    python = document["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gaussNext"]))
    numpy_state = document["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            np.array(numpy_state["keys"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["hasGauss"],
            numpy_state["cachedGaussian"],
        )
    )
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = sorted(
        (int(name.removeprefix(CUDA_PREFIX)), state)
        for name, state in tensors.items()
        if name.startswith(CUDA_PREFIX)
    )
    if cuda_states and torch.cuda.is_available():
        # A resume on a host with another GPU count restores the devices both have.
        for index, state in cuda_states[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(state, device=index)
