"""Preference tuning's cost beside supervised fine-tuning: a DPO step against an SFT step
on the same model, the same prompts and the same chosen answers.

    make bench-preference          (or: python bench/preference_step.py --help)

Both run the recipe's own functions, in process, on the same random-weight Llama (built
from a config, seeded) and the same batches:

    supervised   trainer/loss.py backward_window over `--batch-size` prompt + chosen
                 examples a step (padded, as a preference job is never packed)
    dpo          trainer/preference.py backward_preference_window over `--batch-size`
                 pairs a step: the chosen and the rejected rows in one forward, against
                 reference log-probabilities computed once beforehand
    reference    the one forward pass over every pair's two answers that a preference job
                 makes before training (reference_log_probs), per pair

Each step is followed by gradient clipping and AdamW, as in the recipe; each variant runs
in a fresh subprocess, so its peak memory is its own. Printed: seconds per step (median of
the timed steps, after `--warmup` untimed ones), pairs (examples) per second, effective
tokens per second (padding not counted), peak memory (max RSS), and DPO's step time over
SFT's: about 2x is the expected price, since a DPO step computes two sequences for every
one SFT computes. Read figures side by side, from one run on one machine, never alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.data import IGNORE_INDEX, Batch, TokenizedExample, collate  # noqa: E402
from trainer.loss import backward_window  # noqa: E402
from trainer.optim import clip_gradients  # noqa: E402
from trainer.preference import (  # noqa: E402
    PreferencePairs,
    backward_preference_window,
    collate_pairs,
    reference_log_probs,
)

PRESETS: dict[str, dict[str, int]] = {
    "cpu": {"hidden_size": 256, "num_hidden_layers": 4, "vocab_size": 4096},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512},
}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs (examples) a step")
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--variant", choices=("supervised", "dpo"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(shape: dict[str, int]) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden = shape["hidden_size"]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=shape["vocab_size"],
        max_position_embeddings=1024,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)


def make_pairs(args: argparse.Namespace, vocab: int, count: int) -> list[TokenizedExample]:
    """`count` pairs as preflight writes them: chosen, rejected, chosen, ... Lengths vary
    by up to a half around the asked ones, as real data do."""
    generator = torch.Generator().manual_seed(1)
    examples = []

    def length(around: int) -> int:
        return max(1, int(around * (0.5 + torch.rand((), generator=generator).item())))

    for _ in range(count):
        prompt = torch.randint(3, vocab, (length(args.prompt_tokens),), generator=generator)
        for _side in range(2):
            answer = torch.randint(3, vocab, (length(args.answer_tokens),), generator=generator)
            ids = [*prompt.tolist(), *answer.tolist()]
            labels = [IGNORE_INDEX] * len(prompt) + answer.tolist()
            examples.append(TokenizedExample(ids, labels))
    return examples


def timed(step: Any, args: argparse.Namespace) -> tuple[float, list[int]]:
    """Median seconds per step after the warm-up steps, and the timed steps' indices."""
    for index in range(args.warmup):
        step(index)
    seconds, indices = [], list(range(args.warmup, args.warmup + args.steps))
    for index in indices:
        started = time.perf_counter()
        step(index)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), indices


def peak_memory_mib() -> float:
    """This process's peak resident memory (its variant's alone: one a process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: its seconds per step, effective (non-padding) tokens
    per second, peak memory."""
    shape = PRESETS[args.preset]
    device = torch.device("cpu")
    autocast = contextlib.nullcontext
    pairs_needed = (args.warmup + args.steps) * args.batch_size
    examples = make_pairs(args, shape["vocab_size"], pairs_needed)
    model = build_model(shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    figures: dict[str, Any] = {}

    if args.variant == "dpo":
        started = time.perf_counter()
        reference = reference_log_probs(
            model,
            model,
            examples,
            batch_size=2 * args.batch_size,
            pad_id=0,
            device=device,
            autocast=autocast,
        )
        figures["reference_seconds_per_pair"] = (time.perf_counter() - started) / pairs_needed
        pairs = PreferencePairs(examples, reference)

        def batch_of(index: int) -> Batch:
            window = [pairs[index * args.batch_size + i] for i in range(args.batch_size)]
            return collate_pairs(window, pad_id=0)

        def backward(batch: Batch) -> None:
            backward_preference_window(
                model, [batch], device, autocast, beta=0.1, pairs=batch.target_tokens
            )

    else:
        chosen = examples[::2]

        def batch_of(index: int) -> Batch:
            start = index * args.batch_size
            return collate(chosen[start : start + args.batch_size], pad_id=0)

        def backward(batch: Batch) -> None:
            backward_window(model, [batch], device, autocast)

    def step(index: int) -> None:
        model.train()
        backward(batch_of(index))
        clip_gradients(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, indices = timed(step, args)
    tokens = sum(int(batch_of(index).attention_mask.sum()) for index in indices)
    figures |= {
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / args.steps / seconds,
        "peak_memory_mib": peak_memory_mib(),
    }
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each variant in a fresh subprocess (so its peak memory is its own); side by side."""
    results = {}
    for variant in ("supervised", "dpo"):
        command = [sys.executable, __file__, *args.argv, "--variant", variant]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode != 0 or not lines:
            sys.exit(f"{variant} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
        results[variant] = json.loads(lines[-1].removeprefix("RESULT "))
    supervised, dpo = results["supervised"], results["dpo"]
    return {
        "preset": args.preset,
        "batch_size_pairs": args.batch_size,
        "steps_timed": args.steps,
        "supervised_seconds_per_step": round(supervised["seconds_per_step"], 6),
        "dpo_seconds_per_step": round(dpo["seconds_per_step"], 6),
        "dpo_over_supervised": round(dpo["seconds_per_step"] / supervised["seconds_per_step"], 2),
        "supervised_examples_per_second": round(
            args.batch_size / supervised["seconds_per_step"], 1
        ),
        "dpo_pairs_per_second": round(args.batch_size / dpo["seconds_per_step"], 1),
        "supervised_tokens_per_second": round(supervised["tokens_per_second"]),
        "dpo_tokens_per_second": round(dpo["tokens_per_second"]),
        "supervised_peak_memory_mib": round(supervised["peak_memory_mib"]),
        "dpo_peak_memory_mib": round(dpo["peak_memory_mib"]),
        "reference_seconds_per_pair": round(dpo["reference_seconds_per_pair"], 5),
    }


def main(argv: list[str] | None = None) -> None:
    args = options(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # what each variant's process gets
    if args.variant is not None:
        print("RESULT " + json.dumps(run_variant(args)))
        return
    figures = run(args)
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
