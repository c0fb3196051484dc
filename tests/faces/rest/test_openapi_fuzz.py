"""Schemathesis against the live server's /openapi.json.

Property-based requests, generated from the published schema, go to a real API server
over a real SeaweedFS: no answer may be a 5xx, and every answer must be one the schema
documents (status code, content type, body and headers). At least 1000 requests are
sent in all, with a bounded example count per operation so the run stays short.

Scope: the REST face and the OpenAI face beside it (/v1/..., /healthz, /readyz,
/metrics; the OpenAI face's errors are `{"error": {message, type, param, code}}`,
service/faces/openai/errors.py), and in a second, smaller
run the Bedrock face (/model-customization-jobs, /custom-models; development mode, so
unsigned requests are served): its errors are AWS-shaped (`x-amzn-ErrorType`, a JSON
`message`, service/faces/bedrock/openapi.py) and the only 5xx it may answer is a 503 (the
store away). The SSE stream (/v1/jobs/{id}/stream) stays open while a job runs and is
left out of the fuzz.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Flaky
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

# Per operation: 12 operations take parameters (3 take none) and some exhaust their
# inputs sooner; about 1050 in all.
EXAMPLES_PER_OPERATION = 96
MINIMUM_REQUESTS = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
_BEDROCK = r"^/(model-customization-jobs|custom-models)"
_LEFT_OUT = _BEDROCK + r"|/stream$"
# The Bedrock face: 7 operations, a few hundred requests in all (CI stays fast).
BEDROCK_EXAMPLES_PER_OPERATION = 40
BEDROCK_MINIMUM_REQUESTS = 200


def no_server_error_but_unavailable(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """No 5xx but a 503 (ServiceUnavailableException: the store away, retry)."""
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code}: {response.text[:500]}"
        )


BEDROCK_CHECKS = [
    no_server_error_but_unavailable,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    # One slot: generated creates that pass validation start trainers; keep it to one.
    # Those with validateOnly start dry runs: each answers within 20 s (a 422 past it),
    # well inside the 30 s each generated request is given.
    server = ApiServer(
        s3_server,
        home,
        state_bucket=f"state-{uuid.uuid4().hex[:12]}",
        extra_env={"TUNEFORGE_LOCAL_SLOTS": "1", "TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS": "20"},
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


@pytest.mark.timeout(420)
def test_generated_requests_get_no_5xx_and_conform_to_the_schema(
    fuzzed_server: ApiServer,
) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json").exclude(
        path_regex=_LEFT_OUT
    )
    sent: dict[str, int] = {}
    # Creates last: each one that passes validation starts a trainer, and every job
    # created makes the list calls that follow a little longer.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda operation: operation.label == "POST /v1/jobs",
    )
    assert len(operations) >= 10, [operation.label for operation in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            label = case.operation.label
            sent[label] = sent.get(label, 0) + 1
            case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=30)

        exercise()
    total = sum(sent.values())
    assert total >= MINIMUM_REQUESTS, sent


@pytest.mark.timeout(300)
def test_generated_bedrock_requests_get_no_5xx_but_503_and_conform_to_the_schema(
    fuzzed_server: ApiServer,
) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json").include(
        path_regex=_BEDROCK
    )
    sent: dict[str, int] = {}
    statuses: dict[int, int] = {}
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda operation: operation.label == "POST /model-customization-jobs",
    )
    assert len(operations) == 7, [operation.label for operation in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=BEDROCK_EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            label = case.operation.label
            sent[label] = sent.get(label, 0) + 1
            response = case.call_and_validate(
                base_url=fuzzed_server.url, checks=BEDROCK_CHECKS, timeout=30
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        exercise()
    assert sum(sent.values()) >= BEDROCK_MINIMUM_REQUESTS, sent
    # The errors were exercised, not only the happy paths.
    assert {400, 404} <= set(statuses), statuses


# Stateful: sequences of calls where a later call takes an id from an earlier answer
# (create -> describe / stop / events / logs ... by its jobId; list -> describe). The
# links are inferred by schemathesis from the schema (dependency analysis: `jobId` in
# an answer feeds the `job_id` path parameters), so the schema needs no `links`.
STATEFUL_SCENARIOS = 25
STATEFUL_STEPS = 6
# Runs of the state machine: a run can end early as inconclusive (below); the next one
# goes on from a fresh seed until STATEFUL_SCENARIOS scenarios have ended.
STATEFUL_RUNS = 4


def _inconsistent_replay(error: AssertionError) -> bool:
    """Hypothesis' own assert when a replay draws past what an earlier run drew (as
    schemathesis tells it: engine/errors.py is_inconsistent_replay)."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return (
        traceback is not None
        and traceback.tb_frame.f_globals.get("__name__")
        == "hypothesis.internal.conjecture.datatree"
    )


@pytest.mark.timeout(300)
def test_stateful_sequences_follow_ids_from_answer_to_answer(fuzzed_server: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json").exclude(
        path_regex=_LEFT_OUT
    )
    seen: dict[tuple[str, int], int] = {}
    # Every step that failed (a check, or the call itself), recorded when it happened:
    # hypothesis replays a failing sequence to report it, and a replay can end in
    # FlakyStrategyDefinition instead, which would hide the failure.
    failures: list[str] = []
    scenarios_ended = 0

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"base_url": fuzzed_server.url, "timeout": 30}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            key = (case.operation.label, response.status_code)
            seen[key] = seen.get(key, 0) + 1

        def step(self, step_input: StepInput) -> StepOutput:
            try:
                return super().step(step_input)
            except Exception as error:
                case = step_input.case
                failures.append(f"{case.method} {case.formatted_path}: {error}")
                raise

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: object
        ) -> None:
            case.validate_response(response, checks=CHECKS)

        def teardown(self) -> None:
            nonlocal scenarios_ended
            scenarios_ended += 1
            super().teardown()

    for run in range(STATEFUL_RUNS):
        if scenarios_ended >= STATEFUL_SCENARIOS:
            break
        try:
            Workflow.run(
                settings=settings(
                    max_examples=STATEFUL_SCENARIOS - scenarios_ended,
                    stateful_step_count=STATEFUL_STEPS,
                    deadline=None,
                    database=None,
                    # The first run is the same every time; a run after an inconclusive
                    # one takes another seed (the same seed would retrace the same path
                    # into the server's changed state).
                    derandomize=run == 0,
                    suppress_health_check=list(HealthCheck),
                )
            )
        except (Flaky, AssertionError) as error:
            # The server keeps its state from scenario to scenario (jobs created, stopped,
            # finished), and schemathesis draws the next call from the earlier answers, so
            # hypothesis can retrace a path whose answers have changed since; it then
            # raises Flaky (or, drawing past a value an earlier run rejected, an assert
            # in its data tree). That says nothing about the API: schemathesis' own runner
            # counts such a run as passed unless a check failed in it
            # (engine/run/stateful/_executor.py). A failed check is in `failures`.
            if not isinstance(error, Flaky) and not _inconsistent_replay(error):
                raise
            if failures:
                break
    assert not failures, "\n".join(failures)
    assert scenarios_ended >= STATEFUL_SCENARIOS, (scenarios_ended, seen)
    # Ids really flowed: a job read or acted on (2xx) by an id that only an earlier
    # answer held (which operation it is depends on the schema's operations).
    followed = [key for key in seen if "{job_id}" in key[0] and 200 <= key[1] < 300]
    assert followed, seen
