"""The malformed-dataset corpus (tests/data/bad_datasets/, described by its manifest.json):
each dataset, run through the real API and trainer subprocess, fails in VALIDATING with
reason DATA_VALIDATION, names the file and line of its problem, and no model is loaded
(no step, no "loaded ... parameters" in the trainer's log). The model's files may be
downloaded meanwhile (preflight overlaps that with reading the data), its weights never
loaded.

All jobs are created at once on one API server for the module and awaited together.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.storage import ObjectStore, S3Location
from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_datasets"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("bad-datasets") / "home"
    api = ApiServer(s3_server, home, state_bucket=f"bad-{uuid.uuid4().hex[:12]}")
    api.start()
    yield api
    api.stop()
    api.kill_trainers()


@pytest.fixture(scope="module")
def outcomes(server: ApiServer, object_store: ObjectStore) -> dict[str, dict[str, Any]]:
    """file name -> {"uri", "job", "log"} once every job has ended."""
    run = uuid.uuid4().hex[:8]
    job_ids, uris = {}, {}
    with server.client() as client:
        for case in CASES:
            location = S3Location("demo", f"datasets/bad-{run}/{case['file']}")
            object_store.put_bytes(location, (CORPUS / case["file"]).read_bytes())
            body = demo_job(f"bad-{Path(case['file']).stem.replace('_', '-')}"[:63], epochCount=1)
            body["customizationType"] = case["customizationType"]
            body["hyperParameters"].update(case.get("hyperParameters", {}))
            body["trainingDataConfig"]["s3Uri"] = location.uri
            del body["validationDataConfig"]
            response = client.post("/v1/jobs", json=body)
            assert response.status_code in (200, 201), response.text
            job_ids[case["file"]] = response.json()["jobId"]
            uris[case["file"]] = location.uri

        results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 600
        while len(results) < len(CASES) and time.monotonic() < deadline:
            for name, job_id in job_ids.items():
                if name in results:
                    continue
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["state"] in ("COMPLETED", "FAILED", "STOPPED"):
                    results[name] = {"uri": uris[name], "job": job}
            time.sleep(0.5)
        missing = sorted(set(job_ids) - set(results))
        assert not missing, f"jobs still running after 600 s: {missing}"
        # The trainer uploads its whole log just before it exits, after the state.
        for name, job_id in job_ids.items():
            log = ""
            deadline = time.monotonic() + 60
            while "trainer exits with" not in log and time.monotonic() < deadline:
                log = client.get(f"/v1/jobs/{job_id}/logs").text
                time.sleep(0.5)
            results[name]["log"] = log
    return results


def test_the_corpus_has_at_least_twenty_datasets_and_one_with_many_problems() -> None:
    assert len(CASES) >= 20
    assert len({case["file"] for case in CASES}) == len(CASES)
    assert any(case.get("total", 1) > 20 for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["file"] for case in CASES])
def test_a_malformed_dataset_fails_in_validating_naming_file_and_line(
    case: dict[str, Any], outcomes: dict[str, dict[str, Any]]
) -> None:
    outcome = outcomes[case["file"]]
    job, uri, log = outcome["job"], outcome["uri"], outcome["log"]
    assert job["state"] == "FAILED", job
    assert job["failure"]["reason"] == "DATA_VALIDATION", job["failure"]
    message = job["failure"]["message"]
    listed = message.splitlines()[1:]
    for line, problem in case["problems"]:
        where = f"{uri}:{line}: " if line is not None else f"{uri}: "
        assert any(entry.startswith(where) and problem in entry for entry in listed), (
            f"no {where!r} ... {problem!r} in:\n{message}"
        )
    total = case.get("total", len(case["problems"]))
    if total > 20:
        assert message.startswith(f"the data has {total} problems (the first 20 are listed):")
        assert len(listed) == 20
    else:
        assert len(listed) == total, message

    # Failed in VALIDATING: never RUNNING, no step, no model weights loaded.
    assert "VALIDATING" in job["stateTimes"] and "RUNNING" not in job["stateTimes"]
    assert job["progress"]["step"] == 0
    assert "job" in log and "DATA_VALIDATION" in log, log[-2000:]
    assert " parameters on " not in log, "the model was loaded"
