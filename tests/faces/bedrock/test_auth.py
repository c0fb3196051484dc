"""SigV4 verified against configured keys, bearer tokens, throttling."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from botocore import UNSIGNED

from tests.faces.bedrock.conftest import ACCESS_KEY, ACCOUNT, BEARER_TOKEN, REGION, make_client
from tests.servers import ApiServer


def test_signatures_are_verified(strict_server: ApiServer) -> None:
    good = make_client(strict_server)
    assert good.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
    assert good.list_custom_models()["modelSummaries"] == []
    # Query strings (encoded times, spaces, '+') and ARNs in the path are signed too.
    assert not good.list_model_customization_jobs(
        creationTimeAfter=datetime.now(UTC),
        nameContains="a b+c/d",
        sortOrder="Ascending",
        maxResults=5,
    )["modelCustomizationJobSummaries"]
    with pytest.raises(good.exceptions.ResourceNotFoundException):
        good.get_model_customization_job(
            jobIdentifier=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/nope"
        )

    for client in (
        make_client(strict_server, ACCESS_KEY, "the-wrong-secret"),
        make_client(strict_server, "AKIAUNKNOWN", "whatever"),
        make_client(strict_server, signature_version=UNSIGNED),
    ):
        with pytest.raises(client.exceptions.AccessDeniedException):
            client.list_model_customization_jobs()
    # The native API is not behind the Bedrock face's authentication.
    with strict_server.client() as rest:
        assert rest.get("/v1/jobs").status_code == 200


def test_bearer_tokens(strict_server: ApiServer) -> None:
    # botocore sends AWS_BEARER_TOKEN_BEDROCK only over HTTPS, so this one is plain HTTP:
    # the header exactly as botocore's bearer signer writes it.
    with strict_server.client() as http:
        for token, status in ((BEARER_TOKEN, 200), ("not-the-token", 403)):
            response = http.get(
                "/model-customization-jobs", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status, response.text
        assert response.headers["x-amzn-ErrorType"] == "AccessDeniedException"
        assert "bearer" in response.json()["message"]


def test_too_many_requests_raise_throttling_exception(strict_server: ApiServer) -> None:
    client = make_client(strict_server)  # the server allows 1 request/s, bursts of 4
    answers: list[str] = []
    for _ in range(12):
        try:
            client.list_custom_models()
            answers.append("ok")
        except client.exceptions.ThrottlingException as error:
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            answers.append("throttled")
    assert "throttled" in answers
    time.sleep(1.5)  # the bucket refills at 1 request/s
    client.list_custom_models()
