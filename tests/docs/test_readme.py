"""The README's first job works pasted as it stands.

The shell block under "Your first job, with curl" runs unchanged (bash, curl, python3)
against a real server started the way `make run` starts one: its own embedded store,
seeded with the demo bucket, `.tuneforge/env` written beside the checkout. Only the
REST address is the test's (a free port instead of 8000).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

ROOT = Path(__file__).resolve().parents[2]
README_ADDRESS = "http://127.0.0.1:8000"


def first_job_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your first job, with curl", 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the first-job section has no ```sh block"
    return found.group(1)


def test_the_first_job_block_talks_to_the_documented_address() -> None:
    block = first_job_block()
    assert README_ADDRESS in block and "/v1/jobs" in block


def test_the_readmes_first_job_runs_as_written(s3_server: EmbeddedS3, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"  # where a newcomer runs it: .tuneforge/, .venv/
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(sys.executable)
    server = ApiServer(s3_server, checkout / ".tuneforge", embedded_store=True)
    server.start()
    try:
        script = first_job_block().replace(README_ADDRESS, server.url)
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "AWS_"))
        }
        environment["AWS_CONFIG_FILE"] = os.devnull  # only .tuneforge/env's settings
        try:
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=checkout,
                env=environment,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired as expired:
            message = f"the README's first job ran over 600 s: {expired.stdout!r}"
            raise AssertionError(message) from None
    finally:
        server.stop()
        server.kill_trainers()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"created job [0-9a-z]{16}", result.stdout), output
    assert "COMPLETED step" in result.stdout, output  # the watch loop saw it finish
    assert "step_number,epoch_number,training_loss" in result.stdout, output  # the CSV
    assert '"state": "COMPLETED"' in result.stdout, output  # the final describe
