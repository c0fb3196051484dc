"""What the face claims, checked against botocore's own service model for Bedrock."""

from __future__ import annotations

import botocore.parsers
import botocore.session
import pytest
from pydantic import ValidationError

from service.faces.bedrock.errors import (
    ERROR_CLASSES,
    BedrockError,
    ValidationException,
    error_response,
)
from service.faces.bedrock.operations import JOB_NAME_IN_USE
from service.faces.bedrock.routes import OPERATIONS, router
from service.settings import Settings


def _model() -> botocore.model.ServiceModel:
    return botocore.session.get_session().get_service_model("bedrock")


@pytest.mark.parametrize(("operation", "method", "path"), OPERATIONS)
def test_every_operation_is_in_the_service_model(operation: str, method: str, path: str) -> None:
    http = _model().operation_model(operation).http
    assert http["method"] == method
    assert http["requestUri"] == path


def test_routes_serve_exactly_the_claimed_operations() -> None:
    served = set()
    for route in router.routes:
        for method in route.methods:  # type: ignore[attr-defined]
            path = route.path.replace(":identifier}", "}")  # type: ignore[attr-defined]
            path = path.replace("{job_identifier}", "{jobIdentifier}")
            path = path.replace("{model_identifier}", "{modelIdentifier}")
            served.add((method, path))
    assert served == {(method, path) for _, method, path in OPERATIONS}


def test_create_answers_201_as_the_model_says() -> None:
    assert _model().operation_model("CreateModelCustomizationJob").http["responseCode"] == 201


@pytest.mark.parametrize("error", ERROR_CLASSES, ids=lambda e: e.error_type)
def test_error_status_codes_match_the_model(error: type[BedrockError]) -> None:
    shape = _model().shape_for(error.error_type)
    assert shape.metadata["error"]["httpStatusCode"] == error.status
    names = {e.name for op, _, _ in OPERATIONS for e in _model().operation_model(op).error_shapes}
    # ServiceUnavailableException is a shape of the service model that its operations do
    # not list (the store outage answer; botocore raises it and retries on 503 all the same).
    assert error.error_type in names or error.error_type == "ServiceUnavailableException"


def test_a_job_name_collision_reads_exactly_as_airflow_expects() -> None:
    """Airflow's BedrockCustomizeModelOperator (apache-airflow-providers-amazon,
    operators/bedrock.py) gives a taken job name a new one only when botocore's error
    message equals this text; the code is AWS's. The server-level check is in test_api.py."""
    answer = error_response(ValidationException(JOB_NAME_IN_USE))
    operation = _model().operation_model("CreateModelCustomizationJob")
    parsed = botocore.parsers.create_parser("rest-json").parse(
        {
            "status_code": answer.status_code,
            "headers": dict(answer.headers),
            "body": bytes(answer.body),
        },
        operation.output_shape,
    )
    assert parsed["Error"]["Code"] == "ValidationException"
    assert parsed["Error"]["Message"] == "The provided job name is currently in use."
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_dev_mode_is_refused_off_loopback() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        Settings(rest_host="0.0.0.0", bedrock_dev_mode_any_signature=True)
    assert Settings(rest_host="127.0.0.1", bedrock_dev_mode_any_signature=True)
    assert Settings(rest_host="::1", bedrock_dev_mode_any_signature=True)
