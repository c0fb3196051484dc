"""One GPU check, one command: `make gpu-check`.

On a host with a CUDA GPU, through the real service (embedded SeaweedFS, the REST API, the
local launcher, real trainer processes):

1. a full fine-tuning job and a LoRA job, each with `resources.gpus: 1`, on a
   Qwen2-0.5B-shaped model (random weights, saved in bf16; the demo tokenizer and data),
   run to COMPLETED;
2. each trainer saw only the device it was assigned: its DEVICES event names one device
   in CUDA_VISIBLE_DEVICES, the one in its launch record, and torch there sees one GPU;
3. packed and unpacked batches give the same loss on the device (the same examples, the
   attention kernel the trainer picks: flash-attention's varlen path or SDPA; bf16
   tolerance);
4. `bench/trainer_throughput.py --preset gpu-0.5b` (tokens/s, MFU and peak memory beside
   Hugging Face `Trainer`), unless --skip-bench;

and prints one JSON summary (the last line, `GPU-CHECK {...}`); the exit code is 0 only
when every check passed. Without a GPU it runs the same code at toy size on the CPU
(`--size toy`, the default there; tests/trainer/test_gpu_check.py runs it in `make test`):
the server is then told it has one GPU (`TUNEFORGE_GPUS=0`) so that the assignment path
runs too.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from jobstore.storage import ObjectStore, S3Location  # noqa: E402
from jobstore.store import JobStore  # noqa: E402
from service.server.demo import build_demo_model, demo_datasets  # noqa: E402
from service.server.embedded_s3 import EmbeddedS3, free_port  # noqa: E402
from tests.e2e.faults.replicas import events  # noqa: E402
from tests.servers import ApiServer  # noqa: E402

BUCKET = "gpu-check"
MODEL_PREFIX = "models/qwen2/"
# Qwen2-0.5B's shape (config.json of Qwen/Qwen2-0.5B), and the same architecture at toy
# size for a CPU. The vocabulary is the model's; the demo tokenizer uses its first ids.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
    },
    "toy": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
    },
}
# Packed vs unpacked loss, relative: bf16 matmuls on a GPU, float32 on a CPU.
TOLERANCE = {"cuda": 2e-2, "cpu": 1e-5}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", choices=sorted(SHAPES), default="qwen2-0.5b" if cuda else "toy")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--job-timeout", type=float, default=600.0)
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--bench-steps", type=int, default=300 if cuda else 2)
    return parser.parse_args(argv)


def build_model(directory: Path, shape: dict[str, Any]) -> int:
    """A Qwen2 model with random weights, saved in bf16 with the demo tokenizer; returns
    its parameter count."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    build_demo_model(directory)  # the tokenizer (and a tiny Llama, replaced below)
    demo = json.loads((directory / "config.json").read_text())
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    config = Qwen2Config(
        **shape,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=demo["bos_token_id"],
        eos_token_id=demo["eos_token_id"],
        pad_token_id=demo["pad_token_id"],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def upload(storage: ObjectStore, directory: Path) -> None:
    storage.ensure_bucket(BUCKET)
    train, validation = demo_datasets()
    storage.put_bytes(S3Location(BUCKET, "data/train.jsonl"), train.encode())
    storage.put_bytes(S3Location(BUCKET, "data/validation.jsonl"), validation.encode())
    for path in sorted(directory.iterdir()):
        if path.is_file():
            storage.upload_file(path, S3Location(BUCKET, MODEL_PREFIX + path.name))


def job_body(name: str, epochs: int, method: str) -> dict[str, Any]:
    hyper: dict[str, Any] = {"epochCount": epochs, "batchSize": 8, "learningRate": 2e-4}
    if method == "LORA":
        hyper |= {"method": "LORA", "learningRate": 1e-3}
    return {
        "jobName": name,
        "baseModelIdentifier": f"s3://{BUCKET}/{MODEL_PREFIX}",
        "trainingDataConfig": {"s3Uri": f"s3://{BUCKET}/data/train.jsonl"},
        "validationDataConfig": {"s3Uri": f"s3://{BUCKET}/data/validation.jsonl"},
        "outputDataConfig": {"s3Uri": f"s3://{BUCKET}/output/"},
        "hyperParameters": hyper,
        "resources": {"gpus": 1},
    }


def run_job(
    server: ApiServer, storage: ObjectStore, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Create the job, wait for its end; what it did and which device its trainer saw."""
    started = time.monotonic()
    with server.client() as client:
        created = client.post("/v1/jobs", json=body)
        created.raise_for_status()
        job_id = created.json()["jobId"]
        deadline = started + timeout
        job = created.json()
        while time.monotonic() < deadline and job["state"] not in (
            "COMPLETED",
            "FAILED",
            "STOPPED",
        ):
            time.sleep(1)
            job = client.get(f"/v1/jobs/{job_id}").json()
    seen = next((e["message"] for e in events(server, job_id) if e["type"] == "DEVICES"), "")
    visible = re.search(r"CUDA_VISIBLE_DEVICES=([^;]*);", seen)
    gpus_seen = re.search(r"torch sees (\d+) GPU", seen)
    launch = JobStore(storage, server.state_bucket).get_status(job_id)[0].launch
    progress = job["progress"]
    return {
        "job_id": job_id,
        "state": job["state"],
        "failure": job.get("failure"),
        "seconds": round(time.monotonic() - started, 1),
        "steps": progress["step"],
        "training_loss": progress["trainingLoss"],
        "validation_loss": progress["validationLoss"],
        "tokens_per_second": progress["tokensPerSecond"],
        "gpu_memory_bytes": progress["gpuMemoryBytes"],
        "assigned_devices": launch.devices if launch is not None else None,
        "visible_devices": visible.group(1) if visible else None,
        "torch_gpus": int(gpus_seen.group(1)) if gpus_seen else None,
        "devices_event": seen,
    }


def saw_only_its_device(job: dict[str, Any], cuda: bool) -> bool:
    """One device assigned, the same one visible to the trainer, and (on a GPU host)
    exactly one GPU seen by torch in the trainer."""
    assigned = job["assigned_devices"] or []
    if len(assigned) != 1 or job["visible_devices"] != assigned[0]:
        return False
    return job["torch_gpus"] == (1 if cuda else 0)


def packed_versus_unpacked(directory: Path, device: torch.device) -> dict[str, Any]:
    """The loss of the same examples padded and packed, on `device`, with the attention
    kernel and precision the trainer would use there."""
    from trainer import data, precision
    from trainer.data import IGNORE_INDEX, TokenizedExample
    from trainer.loss import token_loss_sum
    from trainer.model import load_model
    from trainer.packing import Packer

    chosen = precision.resolve("auto", device)
    model, _ = load_model(
        directory,
        "s3://gpu-check/model/",
        device,
        load_arguments=chosen.model_load_arguments("qwen2"),
    )
    model.eval()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(3)
    examples = []
    for length in (37, 120, 9, 300, 64, 211, 18, 90):
        ids = torch.randint(1, min(vocab, 4096), (length,), generator=generator).tolist()
        prompt = length // 3
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    padded = data.collate(examples, 0).to(device)
    packer = Packer.for_model(model, row_length=512, pad_id=0)
    assert packer is not None, "Qwen2 packs"
    packed = packer.pack_batch(data.collate(examples, 0)).to(device)
    targets = padded.target_tokens
    with torch.no_grad(), chosen.autocast():
        padded_loss = float(token_loss_sum(model, padded)) / targets
        packed_loss = float(token_loss_sum(model, packed)) / targets
    difference = abs(packed_loss - padded_loss) / abs(padded_loss)
    tolerance = TOLERANCE[device.type]
    return {
        "attention": str(getattr(model.config, "_attn_implementation", None)),
        "varlen": packer.varlen,
        "precision": chosen.name,
        "padded_loss": padded_loss,
        "packed_loss": packed_loss,
        "relative_difference": difference,
        "tolerance": tolerance,
        "ok": math.isfinite(difference) and difference <= tolerance,
    }


def throughput(size: str, steps: int) -> dict[str, Any]:
    preset = "gpu-0.5b" if size == "qwen2-0.5b" else "tiny"
    command = [
        sys.executable,
        str(ROOT / "bench" / "trainer_throughput.py"),
        "--preset",
        preset,
        "--steps",
        str(steps),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("SUMMARY ")]
    if completed.returncode != 0 or not lines:
        return {"ok": False, "error": completed.stderr[-2000:]}
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("SUMMARY "))
    return summary | {"ok": True}


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size,
    }
    with tempfile.TemporaryDirectory(prefix="tuneforge-gpu-check-") as temporary:
        root = Path(temporary)
        model_dir = root / "model"
        summary["parameters"] = build_model(model_dir, SHAPES[args.size])
        summary["packed_vs_unpacked"] = packed_versus_unpacked(model_dir, device)
        s3 = EmbeddedS3(
            root / "s3",
            port=free_port(),
            access_key_id="gpu-check",
            secret_access_key="gpu-check-secret",
        )
        s3.start()
        try:
            storage = ObjectStore(
                endpoint_url=s3.endpoint_url,
                access_key_id="gpu-check",
                secret_access_key="gpu-check-secret",
                region="us-east-1",
            )
            upload(storage, model_dir)
            # On a CPU the server is told it has one GPU, so the assignment path runs.
            extra = {} if cuda else {"TUNEFORGE_GPUS": "0"}
            server = ApiServer(
                s3, root / "home", state_bucket=f"state-{uuid.uuid4().hex[:8]}", extra_env=extra
            )
            server.start()
            try:
                jobs = {}
                for method in ("FULL", "LORA"):
                    name = f"gpu-check-{method.lower()}"
                    body = job_body(name, args.epochs, method)
                    jobs[method.lower()] = run_job(server, storage, body, args.job_timeout)
            finally:
                server.stop()
                server.kill_trainers()
        finally:
            s3.stop()
    summary["jobs"] = jobs
    summary["assigned_device_only"] = all(saw_only_its_device(j, cuda) for j in jobs.values())
    summary["bench"] = None if args.skip_bench else throughput(args.size, args.bench_steps)
    summary["ok"] = (
        all(job["state"] == "COMPLETED" for job in jobs.values())
        and summary["assigned_device_only"]
        and summary["packed_vs_unpacked"]["ok"]
        and (summary["bench"] is None or summary["bench"]["ok"])
    )
    print("GPU-CHECK " + json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
