"""bench/preference_step.py at toy size, so that it does not rot: both steps run the
recipe's functions, each in its own process, and the figures come out side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_preference_bench_prints_dpo_beside_supervised(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "preference_step.py"),
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--prompt-tokens",
            "16",
            "--answer-tokens",
            "8",
            "--json",
            str(figures_file),
        ],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(figures_file.read_text())
    assert "dpo_over_supervised" in completed.stdout
    assert figures["supervised_seconds_per_step"] > 0 and figures["dpo_seconds_per_step"] > 0
    ratio = figures["dpo_seconds_per_step"] / figures["supervised_seconds_per_step"]
    assert abs(figures["dpo_over_supervised"] - ratio) < 0.02
    # Each variant in its own process: its own tokens/s and peak memory.
    for variant in ("supervised", "dpo"):
        assert figures[f"{variant}_tokens_per_second"] > 0
        assert figures[f"{variant}_peak_memory_mib"] > 0
