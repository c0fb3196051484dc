"""LoRA (method LORA): low-rank adapters through peft on a frozen base model.

Small functions the recipe calls; nothing here runs a training step.

    wrap(model, hyper_parameters, ...)   the base model -> a peft model whose only
                                         trainable weights are the adapters (and, for
                                         CLASSIFICATION, the new classifier head)
    is_lora(model)                       whether `model` is such a peft model
    trainable_state_dict(model)          the adapter's weights, as checkpoints hold them
    load_trainable_state_dict(model, s)  put them back (resume)
    save_merged_model(model, ...)        base + adapter folded into one plain model

Target modules: `loraTargetModules` as given, else a default per architecture
(`DEFAULT_TARGET_MODULES`: the attention projections), else every Linear layer except
the output head. A requested name that matches no module of the model is the user's to
fix: ModelLoadError, whose message lists the layer names LoRA can wrap in this model.

Output layout of a LoRA job (docs/hyperparameters.md, "LoRA"):

    checkpoints/step-<n>/  adapter_model.safetensors, adapter_config.json, tokenizer
                           files and the training state: the adapter only, never the
                           frozen base weights
    model/                 adapter_model.safetensors + adapter_config.json + tokenizer
                           files: `PeftModel.from_pretrained(base_model, "model/")`
    model/merged/          with mergeAdapter: the merged full model (config.json,
                           *.safetensors, tokenizer), `from_pretrained` as it is

adapter_config.json names the base model by its s3:// URI (base_model_name_or_path).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from jobstore.documents import HyperParameters
from trainer.errors import ModelLoadError

log = logging.getLogger(__name__)

_ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# config.model_type -> the modules adapters wrap when loraTargetModules is unset.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": _ATTENTION_PROJECTIONS,
    "mistral": _ATTENTION_PROJECTIONS,
    "qwen2": _ATTENTION_PROJECTIONS,
    "qwen3": _ATTENTION_PROJECTIONS,
    "gpt2": ["c_attn"],
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
}
# Names transformers gives the sequence-classification head (peft trains a copy of it
# with the adapters for task SEQ_CLS).
CLASSIFIER_HEADS = ("classifier", "score")


def _wrappable_types() -> tuple[type[torch.nn.Module], ...]:
    """The layer types peft's LoRA wraps (GPT-2 uses transformers' Conv1D for Linear)."""
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D, torch.nn.Embedding)


def _matches(module_name: str, target: str) -> bool:
    """peft's rule for a target name: the module's full name, or its dotted suffix."""
    return module_name == target or module_name.endswith("." + target)


def wrappable_layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct short names of the layers LoRA can wrap (`q_proj`, `c_attn`...)."""
    kinds = _wrappable_types()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, kinds)
        }
    )


def _head_module_names(model: Any) -> set[str]:
    """Full names of the output head's modules: the LM head, a classifier head."""
    heads: list[torch.nn.Module] = []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        heads.append(output)
    heads += [getattr(model, name) for name in CLASSIFIER_HEADS if hasattr(model, name)]
    inside = {id(sub) for head in heads for sub in head.modules()}
    return {name for name, module in model.named_modules() if id(module) in inside}


def target_modules(model: Any, requested: list[str] | None) -> tuple[list[str], str]:
    """(the module names to wrap, why these) for `model`; see the module doc.

    Raises ModelLoadError when a requested name matches no module of the model.
    """
    if requested:
        modules = list(model.named_modules())
        kinds = _wrappable_types()
        missing = [t for t in requested if not any(_matches(name, t) for name, _ in modules)]
        blocks = [
            t
            for t in requested
            if t not in missing
            and not any(_matches(name, t) and isinstance(m, kinds) for name, m in modules)
        ]
        problems = []
        if missing:
            problems.append(f"{', '.join(missing)}: no such module in this model")
        if blocks:
            problems.append(f"{', '.join(blocks)}: a block of layers, not a layer")
        if problems:
            raise ModelLoadError(
                f"hyperParameters.loraTargetModules ({type(model).__name__}): "
                + "; ".join(problems)
                + "; layers LoRA can wrap here: "
                + ", ".join(wrappable_layer_names(model))
            )
        return list(requested), "as requested (loraTargetModules)"
    model_type = str(getattr(model.config, "model_type", ""))
    if model_type in DEFAULT_TARGET_MODULES:
        return list(DEFAULT_TARGET_MODULES[model_type]), f"the default for {model_type}"
    heads = _head_module_names(model)
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, _wrappable_types()[:2]) and name not in heads
    ]
    if not linear:
        raise ModelLoadError(
            f"method LORA: the base model ({type(model).__name__}) has no Linear layer to "
            "wrap outside its output head; use method FULL"
        )
    return linear, f"every Linear layer but the output head (no default for {model_type!r})"


def wrap(
    model: Any,
    hyper_parameters: HyperParameters,
    *,
    classification: bool,
    base_model_uri: str,
) -> Any:
    """The base model wrapped for LoRA training; its base weights frozen.

    For CLASSIFICATION the new classifier head is trained in full next to the adapters
    (peft's task SEQ_CLS keeps a trainable copy of `classifier` / `score` and saves it
    with the adapter). Raises ModelLoadError for target modules the model does not have
    or cannot be wrapped.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets, why = target_modules(model, hyper_parameters.loraTargetModules)
    config = LoraConfig(
        r=hyper_parameters.loraRank,
        lora_alpha=hyper_parameters.loraAlpha,  # type: ignore[arg-type]  # a float works
        lora_dropout=hyper_parameters.loraDropout,
        target_modules=targets,
        task_type=TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM,
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as error:  # peft's own checks, past those of target_modules()
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"method LORA could not wrap {targets[:10]} of {type(model).__name__} "
            f"({first_line}); layers LoRA can wrap here: " + ", ".join(wrappable_layer_names(model))
        ) from error
    # Provenance in adapter_config.json: the base model as the user named it, not the
    # trainer's scratch folder it was loaded from.
    wrapped.peft_config["default"].base_model_name_or_path = base_model_uri
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    shown = targets if len(targets) <= 8 else [*targets[:8], f"... {len(targets)} in all"]
    log.info(
        "LoRA r=%d alpha=%g dropout=%g on %s: %s; %d of %d parameters trainable (%.2f%%)",
        hyper_parameters.loraRank,
        hyper_parameters.loraAlpha,
        hyper_parameters.loraDropout,
        ", ".join(shown),
        why,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return wrapped


def is_lora(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def trainable_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights (and a trained classifier head), named as peft saves them in
    adapter_model.safetensors; the frozen base weights are not in it."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(model))


def load_trainable_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Load what `trainable_state_dict` gave back into a model wrapped the same way.

    Raises ValueError for a name the model does not have (not this job's adapter)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(f"the adapter has weights this model does not: {unexpected[:5]}")


def model_state_from_adapter(
    model: Any, adapter: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """An adapter file's tensors under the model's own state-dict names, which torch's
    loading into sharded (FSDP) parameters matches on; peft saves them without the
    adapter name (`...lora_A.weight` for `...lora_A.default.weight`).

    The renaming is peft's own (`get_peft_model_state_dict`), run over the model's
    names tagged with their index, so it stays right for whatever peft renames (a
    classifier head's `modules_to_save` included). Raises ValueError for a name the
    model does not have (not this job's adapter)."""
    from peft import get_peft_model_state_dict

    names = list(model.state_dict())
    tagged = {name: torch.tensor([index]) for index, name in enumerate(names)}
    renamed = get_peft_model_state_dict(model, state_dict=tagged)
    own_name = {saved: names[int(tag)] for saved, tag in renamed.items()}
    unknown = sorted(set(adapter) - set(own_name))
    if unknown:
        raise ValueError(f"the adapter has weights this model does not: {unknown[:5]}")
    return {own_name[name]: tensor for name, tensor in adapter.items()}


def save_merged_model(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Fold the adapters into the base weights and save a plain transformers model.

    Consumes `model`: peft's merge_and_unload rewrites the wrapped layers in place, so
    call it last, after the adapter itself is saved.
    """
    if directory.exists():
        shutil.rmtree(directory)
    merged = model.merge_and_unload()
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    log.info("merged the adapter into the base model (%s)", type(merged).__name__)
    return directory
