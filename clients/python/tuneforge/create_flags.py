"""`tuneforge jobs create`'s request body: a JSON/YAML job file, then flags over it.

Every field of the create body that people set by hand has a flag (`--epochs`,
`--learning-rate`, `--method`, ...); a flag overrides the file's value. The body is the
REST API's create body whichever transport sends it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.v1 import fine_tuning_pb2 as pb

# The customization types a job can have (the proto enum's names, unspecified left out).
CUSTOMIZATION_TYPES = tuple(
    value.name for value in pb.CustomizationType.DESCRIPTOR.values if value.number != 0
)


class UsageError(Exception):
    """A flag or job file the CLI cannot use (exit code 2)."""


def load_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                import yaml

                loaded = yaml.safe_load(text)
    except Exception as error:  # yaml's errors have no common public base worth naming
        raise UsageError(f"{path} is neither JSON nor YAML: {error}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path} must hold one object (a job to create)")
    return loaded


CREATE_FLAGS: list[tuple[str, str, str]] = [
    # (attribute, path in the body, description)
    ("name", "jobName", "job name (letters, digits, '-', '+', '.'; 1-63 characters)"),
    ("base_model", "baseModelIdentifier", "s3:// prefix of the base model"),
    ("training_data", "trainingDataConfig.s3Uri", "s3:// URI of the training JSONL"),
    ("validation_data", "validationDataConfig.s3Uri", "s3:// URI of the validation JSONL"),
    ("output_data", "outputDataConfig.s3Uri", "s3:// prefix to write the job's output under"),
    ("client_request_token", "clientRequestToken", "idempotency token"),
    (
        "customization_type",
        "customizationType",
        ", ".join(CUSTOMIZATION_TYPES) + " (default FINE_TUNING)",
    ),
    ("epochs", "hyperParameters.epochCount", "passes over the data (default 3)"),
    ("batch_size", "hyperParameters.batchSize", "examples per step (default 8)"),
    ("learning_rate", "hyperParameters.learningRate", "peak learning rate (default 5e-5)"),
    ("warmup_steps", "hyperParameters.learningRateWarmupSteps", "warm-up steps (default 0)"),
    (
        "gradient_accumulation_steps",
        "hyperParameters.gradientAccumulationSteps",
        "batches per optimizer step (default 1)",
    ),
    ("max_sequence_length", "hyperParameters.maxSequenceLength", "tokens (default 512)"),
    ("weight_decay", "hyperParameters.weightDecay", "AdamW weight decay (default 0)"),
    ("seed", "hyperParameters.seed", "random seed (default 42)"),
    ("dropout", "hyperParameters.dropout", "dropout on the model's config (default: the model's)"),
    ("lr_scheduler", "hyperParameters.lrScheduler", "linear, cosine or constant (default linear)"),
    ("max_grad_norm", "hyperParameters.maxGradNorm", "gradient clipping norm, 0 off (default 1)"),
    ("eval_interval_steps", "hyperParameters.evalIntervalSteps", "evaluate every N steps"),
    (
        "checkpoint_interval_steps",
        "hyperParameters.checkpointIntervalSteps",
        "checkpoint every N steps",
    ),
    ("keep_checkpoints", "hyperParameters.keepCheckpoints", "checkpoints kept (default 2)"),
    (
        "early_stopping_patience",
        "hyperParameters.earlyStoppingPatience",
        "evaluations without improvement before stopping (default 0: off)",
    ),
    (
        "early_stopping_threshold",
        "hyperParameters.earlyStoppingThreshold",
        "smallest validation-loss drop that counts (default 0)",
    ),
    ("precision", "hyperParameters.precision", "auto, bf16 or fp32 (default auto)"),
    ("method", "hyperParameters.method", "FULL or LORA (default FULL)"),
    ("lora_rank", "hyperParameters.loraRank", "LoRA rank (default 8)"),
    ("lora_alpha", "hyperParameters.loraAlpha", "LoRA alpha (default 16)"),
    ("lora_dropout", "hyperParameters.loraDropout", "LoRA dropout (default 0.05)"),
    (
        "lora_target_modules",
        "hyperParameters.loraTargetModules",
        "comma-separated module names (default: per architecture)",
    ),
    ("packing", "hyperParameters.packing", "true or false (default true)"),
    ("merge_adapter", "hyperParameters.mergeAdapter", "true or false (default false)"),
    (
        "dpo_beta",
        "hyperParameters.dpoBeta",
        "DPO beta, customizationType PREFERENCE only (default 0.1)",
    ),
]


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError(f"want true or false, got {text!r}")


def _customization_type(text: str) -> str:
    if text.upper() in CUSTOMIZATION_TYPES:
        return text.upper()
    raise argparse.ArgumentTypeError(f"want one of {', '.join(CUSTOMIZATION_TYPES)}, got {text!r}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "customization_type": _customization_type,
    "epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "warmup_steps": int,
    "gradient_accumulation_steps": int,
    "max_sequence_length": int,
    "weight_decay": float,
    "seed": int,
    "dropout": float,
    "max_grad_norm": float,
    "eval_interval_steps": int,
    "checkpoint_interval_steps": int,
    "keep_checkpoints": int,
    "early_stopping_patience": int,
    "early_stopping_threshold": float,
    "lora_rank": int,
    "lora_alpha": float,
    "lora_dropout": float,
    "lora_target_modules": _names,
    "packing": _boolean,
    "merge_adapter": _boolean,
    "dpo_beta": float,
}


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body = load_file(args.file) if args.file else {}
    for attribute, path, _ in CREATE_FLAGS:
        value = getattr(args, attribute)
        if value is None:
            continue
        target = body
        *parents, last = path.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"{parent} in the job file must be an object")
        target[last] = value
    for tag in args.tag or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag wants KEY=VALUE, got {tag!r}")
        body.setdefault("tags", {})[key] = value
    return body


def add_arguments(create: argparse.ArgumentParser) -> None:
    """`--file`, a flag per field of CREATE_FLAGS, and `--tag`."""
    create.add_argument("-f", "--file", help="the job as JSON or YAML (REST's body; - = stdin)")
    for attribute, path, description in CREATE_FLAGS:
        create.add_argument(
            "--" + attribute.replace("_", "-"),
            dest=attribute,
            type=FLAG_TYPES.get(attribute, str),
            help=f"{description} [{path}]",
        )
    create.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeatable)")
