"""The demo assets: a tiny model and a small instruction data set, seeded into `s3://demo/`.

They let a newcomer run a real fine-tuning job on a laptop CPU in well under a minute,
with no downloads: the tokenizer is trained here on the demo text, the model is a tiny
Llama-architecture network with random weights from a fixed seed.

    s3://demo/datasets/sample-train.jsonl        300 {"prompt", "completion"} records
    s3://demo/datasets/sample-validation.jsonl    50 more, none of them in the training set
    s3://demo/models/tiny-llama/                  config.json, model.safetensors, tokenizer files

Everything is deterministic: building twice gives the same bytes. torch, transformers and
tokenizers are imported inside the functions because the API server imports this module
at start-up and must stay quick to start.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path

from jobstore.storage import ObjectStore, S3Location

log = logging.getLogger(__name__)

DEMO_BUCKET = "demo"
TRAIN_KEY = "datasets/sample-train.jsonl"
VALIDATION_KEY = "datasets/sample-validation.jsonl"
MODEL_PREFIX = "models/tiny-llama/"

# Hyperparameters for a demo job: 190 steps, a few seconds of training on a laptop CPU,
# the training loss falling from about 6.3 to about 2.2 and the validation loss with it.
RECOMMENDED_HYPERPARAMETERS: dict[str, int | float] = {
    "epochCount": 5,
    "batchSize": 8,
    "learningRate": 0.005,
    "learningRateWarmupSteps": 10,
}

_SEED = 20240917
_TRAIN_RECORDS = 300
_VALIDATION_RECORDS = 50
_VOCAB_SIZE = 512
_SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}

# Short, distinct words for the word tasks. Answers are short so that a tiny model can
# learn a visible part of each task in a few epochs.
# fmt: off
_WORDS = (
    "apple", "bread", "chair", "dance", "eagle", "flame", "grape", "house", "juice", "knife",
    "lemon", "money", "night", "ocean", "piano", "queen", "river", "stone", "table", "uncle",
    "voice", "water", "youth", "zebra", "cloud", "dream", "field", "ghost", "heart", "light",
    "mouse", "north", "paper", "quiet", "radio", "smile", "tiger", "under", "value", "whale",
    "amber", "berry", "candy", "daisy", "ember", "frost", "globe", "honey", "ivory", "jolly",
    "koala", "lunar", "maple", "noble", "olive", "pearl",
)
# fmt: on


def _task(question: str, answer: str) -> dict[str, str]:
    # The prompt ends with the separator, so the model learns where the answer starts;
    # the completion starts with the space that follows "Answer:" in running text.
    return {"prompt": f"{question}\nAnswer:", "completion": f" {answer}"}


def _all_records() -> list[dict[str, str]]:
    """Every record of five templated tasks, from easy to hard for a tiny model:
    repeating a word (attention learns to copy), the next number and upper-casing
    (lookups), adding two digits, reversing a word."""
    records = []
    for word in _WORDS:
        records.append(_task(f"Repeat the word: {word}", word))
        records.append(_task(f"Uppercase the word: {word}", word.upper()))
        records.append(_task(f"Reverse the word: {word}", word[::-1]))
    for n in range(90):
        records.append(_task(f"What number comes after {n}?", str(n + 1)))
    for a in range(10):
        for b in range(10):
            records.append(_task(f"What is {a} + {b}?", str(a + b)))
    return records


def _demo_records() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    records = _all_records()
    random.Random(_SEED).shuffle(records)
    train = records[:_TRAIN_RECORDS]
    validation = records[_TRAIN_RECORDS : _TRAIN_RECORDS + _VALIDATION_RECORDS]
    return train, validation


def _jsonl(records: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def demo_datasets() -> tuple[str, str]:
    """(training JSONL text, validation JSONL text); the two sets share no record."""
    train, validation = _demo_records()
    return _jsonl(train), _jsonl(validation)


def _build_tokenizer(directory: Path) -> dict[str, int]:
    """Train a byte-level BPE on the demo text, save it; return the special token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    train, validation = _demo_records()
    corpus = [r["prompt"] + r["completion"] for r in train + validation]

    tokenizer = Tokenizer(models.BPE())
    # Byte-level: any text can be encoded, so user data never hits an unknown token.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(_SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos_id = tokenizer.token_to_id(_SPECIAL_TOKENS["bos_token"])
    # Like Llama's tokenizer: encoding with special tokens puts BOS in front.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=512, **_SPECIAL_TOKENS
    )
    wrapped.save_pretrained(directory)
    # transformers 5 keeps the special tokens in tokenizer_config.json only; older
    # tools still look for this file.
    (directory / "special_tokens_map.json").write_text(
        json.dumps(_SPECIAL_TOKENS, indent=2, sort_keys=True) + "\n"
    )
    ids = {name: tokenizer.token_to_id(token) for name, token in _SPECIAL_TOKENS.items()}
    return {name: int(i) for name, i in ids.items() if i is not None} | {
        "vocab_size": tokenizer.get_vocab_size()
    }


def build_demo_model(directory: Path) -> None:
    """Write the tiny Llama model and its tokenizer as a Hugging Face directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    ids = _build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=ids["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["pad_token"],
        tie_word_embeddings=False,
    )
    # The weights are random but fixed: seeded, on the CPU, in float32. fork_rng leaves
    # the caller's (the API server's) random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["pad_token"],
        max_new_tokens=8,
    )
    model.save_pretrained(directory)


def seed_demo(storage: ObjectStore, bucket: str = DEMO_BUCKET) -> None:
    """Create the demo bucket and upload the demo assets unless they are already there."""
    storage.ensure_bucket(bucket)
    marker = S3Location(bucket, MODEL_PREFIX + "config.json")
    if storage.head(marker) is not None:
        log.info("demo assets already in s3://%s/", bucket)
        return
    train, validation = demo_datasets()
    storage.put_bytes(S3Location(bucket, TRAIN_KEY), train.encode(), content_type="text/plain")
    storage.put_bytes(
        S3Location(bucket, VALIDATION_KEY), validation.encode(), content_type="text/plain"
    )
    with tempfile.TemporaryDirectory(prefix="tuneforge-demo-") as temporary:
        directory = Path(temporary)
        build_demo_model(directory)
        # config.json is the "already seeded" marker, so it goes last: an upload cut
        # short is completed by the next start instead of being taken as done.
        files = sorted(p for p in directory.iterdir() if p.is_file())
        for path in sorted(files, key=lambda p: p.name == "config.json"):
            storage.upload_file(path, S3Location(bucket, MODEL_PREFIX + path.name))
    log.info("seeded demo assets in s3://%s/", bucket)
