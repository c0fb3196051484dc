"""The base model: download from S3, refuse anything that could run code, then load.

A model directory is untrusted input. Pickle-based weights (`*.bin`, `*.pt`, ...) run
code when unpickled, `*.py` files and a config's `auto_map` ask transformers to import
code that came with the model. We refuse all of them before transformers reads a byte,
then load with remote code off and safetensors only. transformers 5.5 or newer is
required: earlier 5.x releases can run code named by config fields even with remote code
off (CVE-2026-4372, CVE-2026-5241).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from jobstore.errors import InvalidArgument
from jobstore.storage import ObjectStore, S3Location, parse_s3_uri
from trainer.errors import ModelLoadError

log = logging.getLogger(__name__)

MIN_TRANSFORMERS = (5, 5)
# Files whose loading can execute code: pickle-based weights and Python modules.
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".py")
# JSON files transformers reads when loading a model or tokenizer; none may name code.
CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
)
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")
# Config fields that are dropout probabilities, across the architectures transformers
# ships (attention, hidden / residual, embedding and classifier-head dropout).
# hyperParameters.dropout sets each one the model's config has.
DROPOUT_FIELDS = (
    "attention_dropout",  # llama, mistral, qwen2, distilbert
    "attention_probs_dropout_prob",  # bert, roberta
    "hidden_dropout_prob",  # bert, roberta
    "hidden_dropout",
    "classifier_dropout",  # bert, roberta (None there: falls back to hidden dropout)
    "attn_pdrop",  # gpt2
    "resid_pdrop",  # gpt2
    "embd_pdrop",  # gpt2
    "summary_first_dropout",  # gpt2's classification summary
    "dropout",  # distilbert
    "seq_classif_dropout",  # distilbert's classification head
    "dropout_rate",  # t5
)


def download_model(storage: ObjectStore, uri: str, directory: Path) -> Path:
    """Download the Hugging Face directory under the s3:// prefix `uri`."""
    try:
        location = parse_s3_uri(uri, field="baseModelIdentifier")
    except InvalidArgument as error:
        raise ModelLoadError(error.message) from error
    paths = storage.download_prefix(location, directory)
    if not paths:
        raise ModelLoadError(f"base model {uri} has no files (nothing under that prefix)")
    log.info("downloaded %d model files from %s", len(paths), uri)
    return directory


# A safetensors file starts with the length of its JSON header (8 bytes, little-endian);
# a header larger than this is not one a model of ours has.
MAX_SAFETENSORS_HEADER = 100 << 20


# What a dry run downloads of a model: its configuration and tokenizer files (JSON, vocab
# and merges text, sentencepiece models, chat templates), each at most this large. Weights,
# in any format, and anything else stay in the store: a dry run runs inside a request on
# the API replica.
_METADATA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
MAX_METADATA_FILE_BYTES = 64 * 1024 * 1024


def download_model_metadata(
    storage: ObjectStore, uri: str, directory: Path
) -> tuple[list[str], int]:
    """A model's files without its weights, for a dry run: its configuration and tokenizer
    files downloaded into `directory` (`_METADATA_SUFFIXES`, none over
    MAX_METADATA_FILE_BYTES), and the parameters counted from the `*.safetensors`
    headers (two ranged reads a file). Returns the names of every file under the prefix
    (for check_model_directory, which refuses pickled weights by name) and the count."""
    try:
        location = parse_s3_uri(uri, field="baseModelIdentifier").as_prefix()
    except InvalidArgument as error:
        raise ModelLoadError(error.message) from error
    names: list[str] = []
    parameters = 0
    for item in storage.list_objects(location):
        relative = item["key"][len(location.key) :]
        parts = relative.split("/")
        if not relative or any(p in ("", ".", "..") for p in parts):
            continue  # never write outside `directory` (as download_prefix)
        names.append(relative)
        source = S3Location(location.bucket, item["key"])
        if relative.endswith(".safetensors"):
            parameters += _safetensors_parameters(storage, source, uri)
        elif relative.endswith(_METADATA_SUFFIXES):
            if int(item["size"]) > MAX_METADATA_FILE_BYTES:
                raise ModelLoadError(
                    f"base model {uri}: {relative} is {int(item['size']):,} bytes, more than "
                    f"a configuration or tokenizer file may be ({MAX_METADATA_FILE_BYTES:,})"
                )
            storage.download_file(source, directory.joinpath(*parts))
    if not names:
        raise ModelLoadError(f"base model {uri} has no files (nothing under that prefix)")
    return names, parameters


def _safetensors_parameters(storage: ObjectStore, location: S3Location, uri: str) -> int:
    """The number of values in a safetensors file's tensors, from its header alone."""
    head = storage.get_range(location, 0, 8)
    if head is None or len(head[0]) < 8:
        raise ModelLoadError(f"base model {uri}: {location.uri} is not a safetensors file")
    length = int.from_bytes(head[0], "little")
    if not 0 < length <= min(MAX_SAFETENSORS_HEADER, head[1] - 8):
        raise ModelLoadError(f"base model {uri}: {location.uri} is not a safetensors file")
    body = storage.get_range(location, 8, length)
    try:
        header = json.loads(body[0] if body is not None else b"")
        return sum(
            math.prod(int(size) for size in tensor["shape"])
            for name, tensor in header.items()
            if name != "__metadata__"
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ModelLoadError(
            f"base model {uri}: {location.uri} has no valid safetensors header ({error})"
        ) from error


def _remote_code_keys(value: Any, path: str = "") -> list[str]:
    """Every key under `value` (nested configs included) that asks for remote code."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in REMOTE_CODE_KEYS:
                found.append(where)
            found.extend(_remote_code_keys(child, where))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_remote_code_keys(child, f"{path}[{index}]"))
    return found


def check_model_directory(directory: Path, uri: str, *, names: list[str] | None = None) -> None:
    """Raise ModelLoadError unless the directory is safetensors-only with no code in it.

    `names`: the model's files as listed in the store (relative paths), where only some
    were downloaded into `directory` (a dry run leaves the weights where they are); the
    same checks on those names, and on the JSON files that are here."""
    if names is None:
        names = [p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()]
    files = [PurePosixPath(name) for name in names]
    refused = sorted(p.as_posix() for p in files if p.suffix.lower() in REFUSED_SUFFIXES)
    if refused:
        raise ModelLoadError(
            f"base model {uri} contains files that can run code when loaded: "
            f"{', '.join(refused[:10])}; only safetensors weights and no Python files are "
            "accepted (convert the weights with safetensors and remove the code)"
        )
    if not any(p.suffix == ".safetensors" for p in files):
        raise ModelLoadError(f"base model {uri} has no *.safetensors weights")
    config = directory / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"base model {uri} has no config.json")
    for name in CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"base model {uri}: {name} is not valid JSON ({error})") from error
        keys = _remote_code_keys(document)
        if keys:
            raise ModelLoadError(
                f"base model {uri}: {name} asks for remote code ({', '.join(keys)}); "
                "models with custom code are refused"
            )


def check_transformers_version() -> None:
    import transformers

    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    if version < MIN_TRANSFORMERS:
        raise ModelLoadError(
            f"transformers {transformers.__version__} is too old to load untrusted models "
            "safely; the trainer needs 5.5 or newer"
        )


def apply_dropout(config: Any, dropout: float | None) -> list[str]:
    """Set every dropout probability the config has (DROPOUT_FIELDS) to `dropout`.

    None leaves the base model's own values. Returns the fields set; an architecture with
    none of them is left as it is, with a warning (the job still trains).
    """
    if dropout is None:
        return []
    names = [name for name in DROPOUT_FIELDS if hasattr(config, name)]
    for name in names:
        setattr(config, name, dropout)
    if names:
        log.info("dropout %g set on the model config: %s", dropout, ", ".join(names))
    else:
        log.warning(
            "hyperParameters.dropout %g not applied: the %s config has no dropout field the "
            "trainer knows (%s)",
            dropout,
            getattr(config, "model_type", "model's"),
            ", ".join(DROPOUT_FIELDS),
        )
    return names


def load_model(
    directory: Path,
    uri: str,
    device: torch.device,
    *,
    labels: list[str] | None = None,
    dropout: float | None = None,
    load_arguments: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a checked directory, model in float32 on `device`.

    `dropout` (hyperParameters.dropout) goes into the config before the model is built
    (`apply_dropout`); `load_arguments` are extra from_pretrained arguments (on CUDA:
    `attn_implementation="sdpa"`, trainer/precision.py).

    Without `labels`, a causal language model. With `labels` (classification), the base
    model with a new sequence-classification head of len(labels) outputs, the labels
    stored in its config as id2label / label2id; a head the base model already has with
    another shape is replaced (ignore_mismatched_sizes).

    Weights stay in float32 for the optimizer; with bf16 precision the forward pass runs
    in bfloat16 under autocast (trainer/precision.py).
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    check_transformers_version()
    try:
        config = AutoConfig.from_pretrained(
            directory, trust_remote_code=False, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            directory, trust_remote_code=False, local_files_only=True
        )
        apply_dropout(config, dropout)
        extra = dict(load_arguments or {})
        model: Any
        if labels is None:
            model = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                trust_remote_code=False,
                use_safetensors=True,
                local_files_only=True,
                dtype=torch.float32,
                **extra,
            )
        else:
            config.num_labels = len(labels)
            config.id2label = dict(enumerate(labels))
            config.label2id = {label: index for index, label in enumerate(labels)}
            if config.pad_token_id is None and tokenizer.pad_token_id is not None:
                config.pad_token_id = tokenizer.pad_token_id  # a decoder's head needs it
            model = AutoModelForSequenceClassification.from_pretrained(
                directory,
                config=config,
                trust_remote_code=False,
                use_safetensors=True,
                local_files_only=True,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,
                **extra,
            )
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as error:
        raise ModelLoadError(
            f"could not load base model {uri}: {type(error).__name__}: {error}"
        ) from error
    if labels is None and tokenizer.eos_token_id is None:
        raise ModelLoadError(f"base model {uri}: the tokenizer has no end-of-sequence token")
    if labels is not None and tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ModelLoadError(f"base model {uri}: the tokenizer has neither a pad nor an EOS token")
    log.info(
        "loaded %s with %.2fM parameters on %s",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        device,
    )
    return model.to(device), tokenizer


def pad_token_id(tokenizer: Any) -> int:
    """Padding is masked out everywhere, so any id works; EOS when there is no pad token."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)
