"""docs/openai.md's example works pasted as it stands.

Its Python block runs unchanged with the official `openai` SDK, in a folder holding
`train.jsonl` and `valid.jsonl` (the demo's data), against a real server, store and
trainers; only the address is the test's (a free port instead of 8000).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from jobstore.storage import ObjectStore, S3Location
from service.server import demo
from tests.servers import ApiServer

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_ADDRESS = "http://127.0.0.1:8000/v1"


def example_block() -> str:
    found = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "openai.md").read_text(), re.DOTALL)
    assert found is not None, "docs/openai.md has no ```python block"
    return found.group(1)


def test_the_example_talks_to_the_documented_address() -> None:
    assert DOCUMENTED_ADDRESS in example_block()


def test_the_openai_example_runs_as_written(
    api_server: ApiServer, object_store: ObjectStore, tmp_path: Path
) -> None:
    for name, demo_name in (
        ("train.jsonl", "sample-train.jsonl"),
        ("valid.jsonl", "sample-validation.jsonl"),
    ):
        found = object_store.get_bytes(S3Location(demo.DEMO_BUCKET, f"datasets/{demo_name}"))
        assert found is not None
        (tmp_path / name).write_bytes(found[0])
    script = example_block().replace(DOCUMENTED_ADDRESS, f"{api_server.url}/v1")
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"the example ran over 600 s: {expired.stdout!r}") from None
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The job succeeded and made its model; events were listed; the result file is the CSV.
    assert re.search(r"^succeeded ft:tiny-llama:support-bot:[0-9a-z]{16} None$", output, re.M), (
        output
    )
    assert "metrics Step " in output, output
    assert "step_number,epoch_number,training_loss" in output, output
