"""Trainer throughput: tuneforge's training loop beside Hugging Face `Trainer`, padded and
flattened, on the same model, data, order and hyperparameters.

    make bench-trainer-throughput      (or: python bench/trainer_throughput.py --help)
    make bench-gpu                     (--preset gpu-0.5b --steps 300, on a GPU host)

Three variants, each in a fresh subprocess so its peak memory is its own:

    tuneforge           the recipe's step, in process: data.batches (the epoch's shuffled
                        order), Packer.pack_batch (packing on, the default), backward_window,
                        gradient clipping and AdamW with the recipe's schedule; the same
                        functions FullFineTuningRecipe.train_step calls
    trainer-padding     transformers.Trainer with DataCollatorForSeq2Seq: every batch padded
                        to its longest example (labels padded with -100)
    trainer-flattening  transformers.Trainer with DataCollatorWithFlattening: one row per
                        batch, position ids restarting per example

With `--lora`, every variant trains LoRA adapters (r 8, alpha 16, dropout 0.05 on the
architecture's default attention projections: the service's defaults) on frozen base
weights instead: tuneforge wraps the model as its recipe does (trainer/lora.py), each
Trainer gets the model a user would hand it, peft's `get_peft_model` with the same
LoraConfig. `make bench-trainer-throughput` runs full fine-tuning, then LoRA.

The model has random weights built from a config (seeded, so every variant starts from
the same weights), shaped by `--preset`:

    cpu        Llama, hidden 256, 4 layers, vocab 4096 (the default; minutes on a CPU)
    gpu-0.5b   Qwen2-0.5B's real shape: hidden 896, 24 layers, 14 heads, 2 KV heads,
               intermediate 4864, vocab 151936, tied embeddings (494M parameters)
    tiny       the gpu-0.5b architecture at toy size: what CI runs on a CPU

The device is the GPU when torch sees one (bf16 autocast, fp32 weights, as the recipe's
default precision), else the CPU (fp32). `--steps` sets the run's length (optimizer
steps of one epoch; examples = steps x batch size). The data are prompt/completion examples with
lengths drawn log-normally between 16 and 1024 tokens, tokens from a random Markov chain
so the loss has something to learn. Every variant sees the same batches in the same order
(the Trainers sample sequentially over the order tuneforge's epoch generator picks),
batch size, learning rate, linear decay, no weight decay, gradient clipping at 1.0.

Printed per variant: effective tokens/s (example tokens only, padding not counted), the
ratio to each Trainer, MFU, peak memory (max RSS on a CPU, torch.cuda.max_memory_allocated
on a GPU), the padding computed, and the final training loss (mean of the last five
steps). MFU is 6 x parameters x effective tokens/s over the device's dense bf16 peak
(PEAK_TFLOPS by device name, or `--peak-tflops`; none known on a CPU): the usual
estimate, which counts the output head (tied embeddings once) and not attention's own
score FLOPs, so packing's saved padding shows up in it and padding's wasted work does not.
Figures depend on the machine and on what else runs on it: read them side by side, never
alone.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import data  # noqa: E402
from trainer.data import IGNORE_INDEX, TokenizedExample  # noqa: E402

VARIANTS = ("tuneforge", "trainer-padding", "trainer-flattening")
PAD_ID = 0
MIN_LENGTH, MAX_LENGTH = 16, 1024
SUCCESSORS = 4  # each token is followed by one of 4 others: a loss floor of ln(4)
FINAL_LOSS_STEPS = 5


# Model shapes (AutoConfig.for_model keyword arguments). The heads of "cpu" follow its
# hidden size when --hidden changes it (64 per head), as before presets existed.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "vocab_size": 4096,
        "tie_word_embeddings": False,
    },
    "gpu-0.5b": {  # Qwen2-0.5B (config.json of Qwen/Qwen2-0.5B)
        "model_type": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "tie_word_embeddings": True,
    },
}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a piece of
# torch.cuda.get_device_name(); the first match wins, so PCIe comes before SXM.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument(
        "--steps", type=int, help="optimizer steps (sets --examples to steps x batch size)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, help="hidden size (default: the preset's)")
    parser.add_argument("--layers", type=int, help="layers (default: the preset's)")
    parser.add_argument("--vocab", type=int, help="vocabulary (default: the preset's)")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's bf16 peak for MFU (default: by name)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters, not every weight")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant (used internally)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "examples", "hidden", "layers", "vocab"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak-tflops must be more than 0")
    if args.steps is not None:
        args.examples = args.steps * args.batch_size
    shape = dict(PRESETS[args.preset])
    if args.hidden is not None:
        shape["hidden_size"] = args.hidden
        if args.preset == "cpu":
            shape.pop("num_attention_heads", None)
    if args.layers is not None:
        shape["num_hidden_layers"] = args.layers
    if args.vocab is not None:
        shape["vocab_size"] = args.vocab
    shape.setdefault("num_attention_heads", max(1, shape["hidden_size"] // 64))
    shape.setdefault("num_key_value_heads", shape["num_attention_heads"])
    shape.setdefault("intermediate_size", 4 * shape["hidden_size"])
    if shape["hidden_size"] % shape["num_attention_heads"]:
        parser.error(
            f"--hidden {shape['hidden_size']} is not a multiple of the preset's "
            f"{shape['num_attention_heads']} heads"
        )
    args.shape = shape
    args.vocab = shape["vocab_size"]
    return args


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name`, or None if not in the table."""
    for piece, tflops in PEAK_TFLOPS:
        if piece in device_name:
            return tflops
    return None


def model_flops_utilization(parameters: int, tokens_per_second: float, peak: float) -> float:
    """6 FLOPs per parameter per token (forward 2, backward 4) over the peak in TFLOP/s."""
    return 6 * parameters * tokens_per_second / (peak * 1e12)


# -- the shared set-up: model, data, order -------------------------------------------


def build_model(args: argparse.Namespace, device: torch.device) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(args.shape)
    config = AutoConfig.for_model(
        shape.pop("model_type"), max_position_embeddings=MAX_LENGTH, pad_token_id=PAD_ID, **shape
    )
    torch.manual_seed(args.seed)
    # fp32 weights whatever the device: bf16 comes from autocast, as in the recipe.
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)


# The service's LoRA defaults (jobstore.documents.HyperParameters).
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 8, 16.0, 0.05


def with_tuneforge_lora(model: Any) -> Any:
    """The model wrapped for LoRA as the recipe wraps it (trainer/lora.py)."""
    from jobstore.documents import HyperParameters
    from trainer import lora

    hyper_parameters = HyperParameters(
        method="LORA", loraRank=LORA_RANK, loraAlpha=LORA_ALPHA, loraDropout=LORA_DROPOUT
    )
    return lora.wrap(model, hyper_parameters, classification=False, base_model_uri="bench")


def with_peft_lora(model: Any) -> Any:
    """The model a user hands Trainer for LoRA: peft's get_peft_model, the same config."""
    from peft import LoraConfig, TaskType, get_peft_model

    from trainer import lora

    targets, _ = lora.target_modules(model, None)
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=int(LORA_ALPHA),
        lora_dropout=LORA_DROPOUT,
        target_modules=targets,
        task_type=TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def count_parameters(args: argparse.Namespace) -> int:
    """The model's parameters (tied embeddings once), from a weightless copy on "meta"."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(args.shape)
    config = AutoConfig.for_model(
        shape.pop("model_type"), max_position_embeddings=MAX_LENGTH, pad_token_id=PAD_ID, **shape
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def build_examples(args: argparse.Namespace) -> list[TokenizedExample]:
    """Prompt/completion examples, loss on the completion: lengths log-normal around 180
    tokens (most instruction data is short, with a long tail), clipped to [16, 1024]."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    successors = torch.randint(1, args.vocab, (args.vocab, SUCCESSORS), generator=generator)
    examples = []
    for _ in range(args.examples):
        draw = math.exp(math.log(180) + 0.9 * float(torch.randn((), generator=generator)))
        length = int(min(max(draw, MIN_LENGTH), MAX_LENGTH))
        token = int(torch.randint(1, args.vocab, (), generator=generator))
        choices = torch.randint(0, SUCCESSORS, (length,), generator=generator).tolist()
        ids = []
        for choice in choices:
            ids.append(token)
            token = int(successors[token, choice])
        prompt = int(length * (0.2 + 0.5 * float(torch.rand((), generator=generator))))
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def epoch_order(args: argparse.Namespace, count: int) -> list[int]:
    """The order tuneforge's recipe trains epoch 1 in (data.batches with its generator)."""
    return torch.randperm(count, generator=data.epoch_generator(args.seed, 1)).tolist()


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the variants --------------------------------------------------------------------


def run_tuneforge(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The recipe's train_step, step for step (gradient accumulation 1)."""
    import contextlib

    from trainer.loss import backward_window
    from trainer.optim import build_optimizer, learning_rate_at, set_learning_rate
    from trainer.packing import Packer

    model = build_model(args, device)
    if args.lora:
        model = with_tuneforge_lora(model)
    examples = build_examples(args)
    packer = Packer.for_model(model, row_length=MAX_LENGTH, pad_id=PAD_ID)
    assert packer is not None, "the benchmark's model must pack"
    optimizer = build_optimizer(model, args.learning_rate, 0.0)
    total_steps = data.batches_per_epoch(len(examples), args.batch_size)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses, computed = [], 0
    generator = data.epoch_generator(args.seed, 1)
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    batches = data.batches(examples, args.batch_size, PAD_ID, generator=generator)
    for step, batch in enumerate(batches, start=1):
        packed = packer.pack_batch(batch)
        computed += packed.input_ids.numel()
        set_learning_rate(
            optimizer,
            learning_rate_at(
                step, peak=args.learning_rate, warmup_steps=0, total_steps=total_steps
            ),
        )
        model.train()
        losses.append(backward_window(model, [packed], device, autocast).loss)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "losses": losses,
        "computed_tokens": computed,
    }


def run_trainer(args: argparse.Namespace, device: torch.device, flatten: bool) -> dict[str, Any]:
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model = build_model(args, device)
    if args.lora:
        model = with_peft_lora(model)
    examples = build_examples(args)
    ordered = [examples[i] for i in epoch_order(args, len(examples))]
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in ordered]
    collator: Any
    if flatten:
        collator = DataCollatorWithFlattening()
    else:
        collator = DataCollatorForSeq2Seq(tokenizer(args, PreTrainedTokenizerFast), padding=True)
    computed = [0]

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        computed[0] += batch["input_ids"].numel()
        return dict(batch)

    class Clock(TrainerCallback):  # type: ignore[misc]
        """The training loop's own time, without the Trainer's set-up."""

        started = cpu_started = seconds = cpu_seconds = 0.0

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            synchronize(device)
            Clock.started, Clock.cpu_started = time.perf_counter(), time.process_time()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            synchronize(device)
            Clock.seconds = time.perf_counter() - Clock.started
            Clock.cpu_seconds = time.process_time() - Clock.cpu_started

    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as output:
        training = TrainingArguments(
            output_dir=output,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=args.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            train_sampling_strategy="sequential",  # tuneforge's order, already shuffled
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
            bf16=device.type == "cuda",
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=dataset,
            data_collator=counting_collator,
            callbacks=[Clock()],
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": Clock.seconds,
        "cpu_seconds": Clock.cpu_seconds,
        "losses": losses,
        "computed_tokens": computed[0],
    }


def tokenizer(args: argparse.Namespace, tokenizer_class: Any) -> Any:
    """A word-level tokenizer over the model's vocabulary: DataCollatorForSeq2Seq pads
    with it (the text side is never used; examples are token ids already)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocabulary = {"<pad>": PAD_ID} | {f"t{i}": i for i in range(1, args.vocab)}
    return tokenizer_class(
        tokenizer_object=Tokenizer(WordLevel(vocabulary, unk_token="<pad>")),
        pad_token="<pad>",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_variant(args: argparse.Namespace) -> None:
    """Child process: one variant; its figures as one JSON line on stdout."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant == "tuneforge":
        result = run_tuneforge(args, device)
    else:
        result = run_trainer(args, device, flatten=args.variant == "trainer-flattening")
    result["peak_memory_mib"] = peak_memory_mib(device)
    result["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: run all three, print the comparison --------------------------------


def main() -> None:
    args = options()
    if args.variant:
        run_variant(args)
        return
    examples = build_examples(args)
    tokens = sum(len(e.input_ids) for e in examples)
    lengths = sorted(len(e.input_ids) for e in examples)
    shape = args.shape
    parameters = count_parameters(args)
    print(
        f"{len(examples)} examples, {tokens} tokens (lengths {lengths[0]}..{lengths[-1]}, "
        f"median {lengths[len(lengths) // 2]}); preset {args.preset}: "
        f"{shape['model_type']} hidden {shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads "
        f"({shape['num_key_value_heads']} KV), vocab {shape['vocab_size']}, "
        f"{parameters:,} parameters; "
        + (
            f"LoRA r {LORA_RANK}, alpha {LORA_ALPHA:g}, dropout {LORA_DROPOUT:g}; "
            if args.lora
            else "full fine-tuning; "
        )
        + f"batch {args.batch_size}, "
        f"{data.batches_per_epoch(len(examples), args.batch_size)} steps, "
        f"lr {args.learning_rate}, seed {args.seed}"
    )
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            sys.exit(f"{variant} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
        results[variant] = json.loads(lines[-1].removeprefix("RESULT "))
    first = results["tuneforge"]
    peak = args.peak_tflops or peak_tflops(first["device"])
    print(
        f"device: {first['device']}, {first['threads']} torch threads; "
        f"bf16 peak {f'{peak:g} TFLOP/s' if peak else 'unknown (MFU needs --peak-tflops)'}\n"
    )
    # On a shared CPU the wall clock also counts other people's work; CPU seconds (all
    # threads of the process) are steadier, so both are printed.
    header = (
        f"{'variant':<20}{'tokens/s':>10}{'tok/cpu-s':>11}{'seconds':>9}{'MFU':>8}"
        f"{'padding':>9}{'peak MiB':>10}{'final loss':>12}"
    )
    print(header)
    print("-" * len(header))
    speed, cpu_speed, final = {}, {}, {}
    for variant, result in results.items():
        speed[variant] = tokens / result["seconds"]
        cpu_speed[variant] = tokens / result["cpu_seconds"]
        final[variant] = sum(result["losses"][-FINAL_LOSS_STEPS:]) / len(
            result["losses"][-FINAL_LOSS_STEPS:]
        )
        padding = 1 - tokens / result["computed_tokens"]
        mfu = f"{model_flops_utilization(parameters, speed[variant], peak):.2%}" if peak else "-"
        print(
            f"{variant:<20}{speed[variant]:>10.0f}{cpu_speed[variant]:>11.0f}"
            f"{result['seconds']:>9.1f}{mfu:>8}{padding:>9.1%}"
            f"{result['peak_memory_mib']:>10.0f}{final[variant]:>12.4f}"
        )
    print()
    ratios = {}
    for baseline in ("trainer-padding", "trainer-flattening"):
        ratio = speed["tuneforge"] / speed[baseline]
        ratios[baseline] = ratio
        cpu_ratio = cpu_speed["tuneforge"] / cpu_speed[baseline]
        loss_gap = final["tuneforge"] / final[baseline] - 1
        print(
            f"tuneforge vs {baseline}: {ratio:.2f}x tokens/s ({cpu_ratio:.2f}x per CPU "
            f"second), final loss {loss_gap:+.2%}"
        )
    print("targets: >= 1.5x trainer-padding, >= 1.0x trainer-flattening, loss within 2%")
    # The same figures for a program to read (make gpu-check, bench/gpu_check.py).
    summary = {
        "device": first["device"],
        "preset": args.preset,
        "method": "LORA" if args.lora else "FULL",
        "parameters": parameters,
        "variants": {
            variant: {
                "tokens_per_second": round(speed[variant], 1),
                "mfu": model_flops_utilization(parameters, speed[variant], peak) if peak else None,
                "peak_memory_mib": round(results[variant]["peak_memory_mib"], 1),
                "final_loss": final[variant],
            }
            for variant in results
        },
        "tuneforge_speedup": {baseline: round(ratio, 3) for baseline, ratio in ratios.items()},
    }
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
