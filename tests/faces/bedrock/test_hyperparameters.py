"""The training knobs through boto3's bedrock client: Bedrock's hyperParameters map holds
strings only, so numbers, booleans ("true"/"false"), choices and the comma-separated
loraTargetModules are parsed with the native ranges, and a bad one is a
ValidationException naming the key and what it accepts."""

from __future__ import annotations

import pytest

from tests.faces.bedrock.conftest import create_body, make_client
from tests.servers import ApiServer


@pytest.mark.parametrize(
    ("hyper", "message"),
    [
        ({"packing": "yes"}, r"hyperParameters\.packing must be true or false, got 'yes'"),
        ({"lrScheduler": "exp"}, r"lrScheduler must be one of linear, cosine, constant"),
        ({"precision": "fp16"}, r"precision must be one of auto, bf16, fp32"),
        ({"method": "lora"}, r"method must be one of FULL, LORA, got 'lora'"),
        ({"dropout": "1"}, r"dropout must be a number in the range \[0, 1\)"),
        ({"loraDropout": "high"}, r"loraDropout must be a number in the range \[0, 1\)"),
        ({"maxGradNorm": "-2"}, r"maxGradNorm must be a number in the range 0-1000"),
        ({"keepCheckpoints": "0"}, r"keepCheckpoints must be an integer in the range 1-100"),
        ({"loraRank": "8.5", "method": "LORA"}, r"loraRank must be an integer in the range"),
        ({"loraAlpha": "0", "method": "LORA"}, r"loraAlpha must be a number in the range \(0,"),
        ({"loraRank": "16"}, r"hyperParameters\.loraRank: loraRank applies only to method LORA"),
        ({"mergeAdapter": "true"}, r"mergeAdapter applies only to method LORA"),
        (
            {"dpoBeta": "0.2"},
            r"hyperParameters\.dpoBeta: dpoBeta applies only to customizationType PREFERENCE",
        ),
        ({"dpoBeta": "0"}, r"dpoBeta must be a number in the range \(0, 10\], got '0'"),
        (
            {"method": "LORA", "loraTargetModules": "q_proj,v-proj"},
            r"hyperParameters\.loraTargetModules: .*'v-proj'",
        ),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else None,
)
def test_bad_hyperparameters_raise_validation_exception(
    cheap_server: ApiServer, hyper: dict[str, str], message: str
) -> None:
    client = make_client(cheap_server)
    with pytest.raises(client.exceptions.ValidationException, match=message):
        client.create_model_customization_job(**create_body("bad-hyper-job", **hyper))


def test_lora_knobs_are_parsed_and_described_as_strings(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    body = create_body(
        "lora-knobs-job",
        method="LORA",
        loraRank="4",
        loraTargetModules="q_proj, v_proj",
        mergeAdapter="TRUE",
        packing="false",
        lrScheduler="cosine",
        dropout="0.1",
    )
    arn = client.create_model_customization_job(**body)["jobArn"]
    described = client.get_model_customization_job(jobIdentifier=arn)["hyperParameters"]
    assert described["method"] == "LORA"
    assert described["loraRank"] == "4"
    assert described["loraTargetModules"] == "q_proj,v_proj"
    assert (described["mergeAdapter"], described["packing"]) == ("true", "false")
    assert (described["lrScheduler"], described["dropout"]) == ("cosine", "0.1")
    # Every described value parses back: the map can be sent again as it is.
    again = create_body("lora-knobs-again", **described)
    client.create_model_customization_job(**again)


def test_a_preference_job_keeps_its_beta(cheap_server: ApiServer) -> None:
    client = make_client(cheap_server)
    body = create_body("dpo-beta-job", dpoBeta="0.2")
    body["customizationType"] = "PREFERENCE"
    arn = client.create_model_customization_job(**body)["jobArn"]
    described = client.get_model_customization_job(jobIdentifier=arn)
    assert described["customizationType"] == "PREFERENCE"
    assert described["hyperParameters"]["dpoBeta"] == "0.2"
    listed = client.list_model_customization_jobs(nameContains="dpo-beta-job")
    assert [job["customizationType"] for job in listed["modelCustomizationJobSummaries"]] == [
        "PREFERENCE"
    ]
    with cheap_server.client() as rest:
        native = rest.get(f"/v1/jobs/{arn.rsplit('/', 1)[-1]}").json()
    assert (native["customizationType"], native["hyperParameters"]["dpoBeta"]) == (
        "PREFERENCE",
        0.2,
    )
