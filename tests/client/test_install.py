"""The client package installs on its own into a fresh virtual environment, without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"

PROBE = """
import importlib.util, json
import tuneforge
from tuneforge import Client, RestClient, pb
from tuneforge.v1 import fine_tuning_pb2_grpc
heavy = ["torch", "transformers", "fastapi", "boto3", "jobstore", "service", "trainer"]
print(json.dumps({
    "version": tuneforge.__version__,
    "present": [name for name in heavy if importlib.util.find_spec(name) is not None],
    "stub": fine_tuning_pb2_grpc.FineTuningServiceStub.__name__,
    "request": pb.CreateJobRequest(job_name="x").job_name,
}))
"""


def test_client_installs_into_a_fresh_venv_without_torch(tmp_path: Path) -> None:
    # Build from a copy: pip builds local projects in place and would leave build/ behind.
    source = tmp_path / "source"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    # Run from the venv's own directory, so nothing of this checkout is importable.
    probe = subprocess.run(
        [str(python), "-I", "-c", PROBE], capture_output=True, text=True, cwd=venv, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["present"] == [], f"the client pulled in {found['present']}"
    assert found["stub"] == "FineTuningServiceStub" and found["request"] == "x"

    version = subprocess.run(
        [str(venv / "bin" / "tuneforge"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.strip() == f"tuneforge {found['version']}"

    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    installed = {item["name"].lower() for item in json.loads(listing.stdout)}
    assert "tuneforge-client" in installed
    assert not installed & {"torch", "transformers", "fastapi", "boto3", "uvicorn", "tuneforge"}
