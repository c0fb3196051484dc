"""bench/trainer_throughput.py's GPU path, exercised on a CPU: the Qwen2-0.5B
preset has the real shape, MFU is 6·N·tokens/s over the device's peak, and the whole
benchmark (tuneforge beside both Trainers) runs at toy size with the MFU column filled."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "trainer_throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trainer_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_preset_is_qwen2_0_5b_shaped(bench: ModuleType) -> None:
    args = bench.options(["--preset", "gpu-0.5b", "--steps", "300"])
    assert args.examples == 300 * args.batch_size
    assert args.shape == {
        "model_type": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }
    assert bench.count_parameters(args) == 494_032_768  # Qwen2-0.5B's published count


def test_mfu_is_six_flops_per_parameter_and_token_over_the_gpus_bf16_peak(
    bench: ModuleType,
) -> None:
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989  # SXM
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756
    assert bench.peak_tflops("NVIDIA H200") == 989
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert bench.peak_tflops("NVIDIA L4") == 121
    assert bench.peak_tflops("cpu") is None
    # 494M parameters at 100k tokens/s on an H100: 2.96e17 FLOP/s of 9.89e17.
    mfu = bench.model_flops_utilization(494_000_000, 100_000.0, 989.0)
    assert mfu == pytest.approx(6 * 494e6 * 1e5 / 989e12)
    assert mfu == pytest.approx(0.2997, abs=1e-4)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--peak-tflops", "-1"], "--peak-tflops must be more than 0"),
        (["--preset", "gpu-0.5b", "--hidden", "100"], "not a multiple of the preset's 14 heads"),
    ],
)
def test_bad_options_are_named(
    bench: ModuleType, flag: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.options(flag)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_benchmark_runs_at_toy_size_and_prints_mfu_per_variant(method: str) -> None:
    """The path `make bench-gpu` takes, on a CPU: the tiny preset is the gpu-0.5b
    architecture (Qwen2, tied embeddings, grouped KV heads) at toy size; full fine-tuning
    and LoRA (`make bench-trainer-throughput` runs both)."""
    peak = 0.01  # TFLOP/s: a CPU has no entry in the table
    environment = os.environ | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--preset", "tiny", "--steps", "2"]
    command += ["--batch-size", "2", "--peak-tflops", str(peak), "--threads", "1"]
    command += ["--lora"] if method == "lora" else []
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    out = completed.stdout
    assert "preset tiny: qwen2 hidden 64, 2 layers, 4 heads (2 KV)" in out, out
    counted = re.search(r"([\d,]+) parameters", out)
    assert counted is not None, out
    parameters = int(counted[1].replace(",", ""))
    assert "batch 2, 2 steps" in out and "bf16 peak 0.01 TFLOP/s" in out
    said = "LoRA r 8, alpha 16, dropout 0.05;" if method == "lora" else "full fine-tuning;"
    assert said in out, out
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    assert summary["method"] == method.upper()
    for variant in summary["variants"].values():
        assert math.isfinite(variant["final_loss"]), summary
    rows = re.findall(
        r"^(tuneforge|trainer-padding|trainer-flattening)\s+(\d+)\s+\d+\s+[\d.]+\s+([\d.]+)%",
        out,
        re.M,
    )
    assert [name for name, _, _ in rows] == ["tuneforge", "trainer-padding", "trainer-flattening"]
    for _, tokens_per_second, mfu in rows:
        expected = 6 * parameters * int(tokens_per_second) / (peak * 1e12)
        # Both printed rounded: tokens/s to a unit, MFU to 0.01 %.
        assert float(mfu) / 100 == pytest.approx(expected, rel=0.01, abs=1e-4)
