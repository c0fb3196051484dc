"""Where the trainer runs and in what numeric precision: one decision, made once.

`hyperParameters.precision`:

    auto   bf16 mixed precision on a CUDA GPU that supports bfloat16 (Ampere and newer);
           float32 everywhere else, the CPU included.
    bf16   bf16 mixed precision. On a CUDA GPU without bfloat16 the job is refused
           (MODEL_LOAD) rather than silently trained in another precision. On a CPU it
           runs under CPU autocast: correct, but on most CPUs slower than float32, so a
           warning says so; it exists to try out bf16 numerics without a GPU.
    fp32   float32 throughout.

Invariants: the weights and the optimizer state stay float32 in every mode; mixed
precision only changes the dtype of the matmuls inside `autocast()`, and the loss is
computed in float32 (trainer/loss.py). The CPU path runs the same code with a
`nullcontext` autocast, so tests on a CPU exercise the code a GPU runs.

On CUDA the model is also loaded with fused attention (`attention_implementation`):
flash-attention's variable-length kernel where it can run, which trains packed rows with
no mask at all (trainer/packing.py), else SDPA; and the optimizer uses fused AdamW
(trainer/optim.py). `torch.compile` is off
unless the operator turns it on (TUNEFORGE_TORCH_COMPILE=1 in the trainer's
environment): compiling costs minutes per job and pays off only on long runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from trainer.errors import ModelLoadError

log = logging.getLogger(__name__)

COMPILE_VARIABLE = "TUNEFORGE_TORCH_COMPILE"


@dataclass(frozen=True)
class Precision:
    """The device and the autocast dtype (None: plain float32) a job trains with."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    compile: bool = False

    @property
    def name(self) -> str:
        return "bf16" if self.autocast_dtype is torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context every forward pass runs in (training and evaluation)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def model_load_arguments(
        self, model_type: str | None = None, *, classification: bool = False
    ) -> dict[str, Any]:
        """Extra from_pretrained arguments: fused attention on CUDA (see
        `attention_implementation`) for a model of `model_type` (config.json's).

        On a CPU the model's own default is kept (also SDPA in recent transformers)."""
        if self.device.type != "cuda":
            return {}
        chosen = attention_implementation(
            bf16=self.autocast_dtype is torch.bfloat16,
            flash_attention_installed=_flash_attention_loads(),
            compute_capability=torch.cuda.get_device_capability(self.device),
            packed_causal_lm=not classification and model_type in _VARLEN_MODEL_TYPES,
        )
        log.info("attention: %s", chosen)
        return {"attn_implementation": chosen}

    def prepare(self, model: torch.nn.Module) -> None:
        """Compile the model's forward in place when asked for (CUDA only).

        `Module.compile()`, not `torch.compile(model)`: the module stays the same object
        with the same state_dict names, so checkpoints and save_pretrained are unchanged.
        """
        if self.compile and self.device.type == "cuda":
            log.info("compiling the model with torch.compile")
            model.compile()


def _flash_attention_loads() -> bool:
    """flash-attn is installed and imports against this torch (a build for another torch
    fails at import: then SDPA, not a job that fails to load its model)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # ImportError, OSError of a mismatched binary
        log.warning("flash-attn is installed but does not load (%s); using SDPA", error)
        return False
    return True


# Causal LMs packed by trainer/packing.py (its PACKABLE_MODEL_TYPES) whose transformers
# classes take flash-attention's varlen path from position ids.
_VARLEN_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def attention_implementation(
    *,
    bf16: bool,
    flash_attention_installed: bool,
    compute_capability: tuple[int, int],
    packed_causal_lm: bool,
) -> str:
    """The attention kernel a CUDA job loads its model with.

    `flash_attention_2` when it can run: the `flash-attn` package installed, an Ampere
    or newer GPU (compute capability 8.0+), bf16 autocast (the kernel takes 16-bit
    inputs only) and a packed causal LM of a family known to split a packed row at its
    position ids. Its variable-length kernel then costs each example its own length
    squared, with no mask at all. Otherwise `sdpa`, the fallback: PyTorch's fused
    kernels, given packed rows' block-diagonal mask (whose size grows with the square
    of the row's width). Nothing is downloaded: a kernel that is not installed is not
    used."""
    if bf16 and flash_attention_installed and compute_capability >= (8, 0) and packed_causal_lm:
        return "flash_attention_2"
    return "sdpa"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_has_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve(
    requested: str, device: torch.device, environ: Mapping[str, str] | None = None
) -> Precision:
    """The precision for `hyperParameters.precision` on `device` (see the module doc).

    Raises ModelLoadError for bf16 on a GPU that cannot do it.
    """
    compile_wanted = (environ or {}).get(COMPILE_VARIABLE, "").lower() in ("1", "true", "yes")
    if requested == "fp32":
        choice = Precision(device, None, compile_wanted)
    elif requested == "auto":
        dtype = torch.bfloat16 if _cuda_has_bf16(device) else None
        choice = Precision(device, dtype, compile_wanted)
    elif requested == "bf16":
        if device.type == "cuda" and not _cuda_has_bf16(device):
            raise ModelLoadError(
                f"precision bf16 was asked for, but this GPU ({torch.cuda.get_device_name(device)})"
                " has no bfloat16 support; use precision auto or fp32"
            )
        if device.type == "cpu":
            log.warning(
                "precision bf16 on a CPU: running under CPU autocast, usually slower than "
                "fp32 on CPUs without native bfloat16 instructions"
            )
        choice = Precision(device, torch.bfloat16, compile_wanted)
    else:
        raise ValueError(f"unknown precision {requested!r}")
    log.info(
        "training on %s in %s%s",
        device,
        choice.name,
        " (requested auto)" if requested == "auto" else "",
    )
    return choice
