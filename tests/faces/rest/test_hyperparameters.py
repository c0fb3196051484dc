"""The training knobs over REST: every bad value of a new hyperparameter is a 422 naming
the field and creates nothing; good values are stored and described back as sent, and the
gRPC face describes the same job with the same values.

The server's "trainer" is /bin/false: these jobs are never meant to train.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job

LORA = {"method": "LORA"}

# (id, hyperParameters, the field named in the error, words the message must hold)
BAD_VALUES: list[tuple[str, dict[str, Any], str, str]] = [
    ("dropout 1", {"dropout": 1.0}, "dropout", "less than 1"),
    ("dropout negative", {"dropout": -0.1}, "dropout", "greater than or equal to 0"),
    ("lrScheduler unknown", {"lrScheduler": "exponential"}, "lrScheduler", "'cosine'"),
    ("maxGradNorm negative", {"maxGradNorm": -1.0}, "maxGradNorm", "greater than or equal"),
    ("evalIntervalSteps negative", {"evalIntervalSteps": -1}, "evalIntervalSteps", "greater"),
    (
        "checkpointIntervalSteps a string",
        {"checkpointIntervalSteps": "ten"},
        "checkpointIntervalSteps",
        "integer",
    ),
    ("keepCheckpoints 0", {"keepCheckpoints": 0}, "keepCheckpoints", "greater than or equal"),
    ("earlyStoppingPatience huge", {"earlyStoppingPatience": 5000}, "earlyStoppingPatience", ""),
    ("earlyStoppingThreshold negative", {"earlyStoppingThreshold": -0.5}, "earlyStopping", ""),
    ("precision fp16", {"precision": "fp16"}, "precision", "'bf16'"),
    ("method QLORA", {"method": "QLORA"}, "method", "'LORA'"),
    ("loraRank 0", LORA | {"loraRank": 0}, "loraRank", "greater than or equal to 1"),
    ("loraAlpha 0", LORA | {"loraAlpha": 0}, "loraAlpha", "greater than 0"),
    ("loraDropout 1", LORA | {"loraDropout": 1.0}, "loraDropout", "less than 1"),
    ("loraTargetModules a string", LORA | {"loraTargetModules": "q_proj"}, "loraTarget", "list"),
    (
        "loraTargetModules bad name",
        LORA | {"loraTargetModules": ["q_proj", "v-proj"]},
        "loraTargetModules",
        "v-proj",
    ),
    ("loraTargetModules empty", LORA | {"loraTargetModules": []}, "loraTargetModules", "left out"),
    (
        "loraTargetModules too many",
        LORA | {"loraTargetModules": [f"m{i}" for i in range(65)]},
        "loraTargetModules",
        "",
    ),
    ("packing a string", {"packing": "yes"}, "packing", "boolean"),
    ("mergeAdapter a string", LORA | {"mergeAdapter": "true"}, "mergeAdapter", "boolean"),
    ("loraRank with FULL", {"loraRank": 16}, "loraRank", "only to method LORA"),
    ("mergeAdapter with FULL", {"mergeAdapter": True}, "mergeAdapter", "only to method LORA"),
    (
        "loraTargetModules with FULL",
        {"method": "FULL", "loraTargetModules": ["q_proj"]},
        "loraTargetModules",
        "only to method LORA",
    ),
    ("dpoBeta 0", {"dpoBeta": 0}, "dpoBeta", "greater than 0"),
    ("dpoBeta 11", {"dpoBeta": 11}, "dpoBeta", "less than or equal to 10"),
    (
        "dpoBeta with FINE_TUNING",
        {"dpoBeta": 0.2},
        "dpoBeta",
        "dpoBeta applies only to customizationType PREFERENCE",
    ),
]

GOOD_VALUES: dict[str, Any] = {
    "dropout": 0.2,
    "lrScheduler": "cosine",
    "maxGradNorm": 0.0,
    "evalIntervalSteps": 5,
    "checkpointIntervalSteps": 10,
    "keepCheckpoints": 3,
    "earlyStoppingPatience": 2,
    "earlyStoppingThreshold": 0.01,
    "precision": "fp32",
    "method": "LORA",
    "loraRank": 4,
    "loraAlpha": 8.0,
    "loraDropout": 0.0,
    "loraTargetModules": ["q_proj", "v_proj"],
    "packing": False,
    "mergeAdapter": True,
}


@pytest.fixture(scope="module")
def server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    running = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("hyperparameters"),
        state_bucket=f"hyper-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_TRAINER_PYTHON": "/bin/false"},
    )
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("hyper", "field", "words"),
    [case[1:] for case in BAD_VALUES],
    ids=[case[0] for case in BAD_VALUES],
)
def test_bad_hyperparameter_is_422_naming_the_field(
    server: ApiServer, hyper: dict[str, Any], field: str, words: str
) -> None:
    body = demo_job("bad-hyper", **hyper)
    response = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field"].startswith(f"hyperParameters.{field}"), error
    assert words in error["message"], error


def test_bad_hyperparameters_create_nothing(server: ApiServer) -> None:
    for _, hyper, _, _ in BAD_VALUES:
        body = demo_job("bad-hyper", **hyper)
        assert httpx.post(server.url + "/v1/jobs", json=body, timeout=10).status_code == 422
    assert httpx.get(server.url + "/v1/jobs", timeout=10).json()["jobs"] == []


def test_new_hyperparameters_are_stored_and_read_back_on_rest_and_grpc(server: ApiServer) -> None:
    body = demo_job(f"good-hyper-{uuid.uuid4().hex[:6]}", **GOOD_VALUES)
    created = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["jobId"]
    described = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    for key, value in GOOD_VALUES.items():
        assert described["hyperParameters"][key] == value, key

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        over_grpc = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
    hyper = over_grpc.hyper_parameters
    assert hyper.lr_scheduler == "cosine"
    assert hyper.method == "LORA"
    assert list(hyper.lora_target_modules) == ["q_proj", "v_proj"]
    assert hyper.HasField("max_grad_norm") and hyper.max_grad_norm == 0.0
    assert hyper.HasField("packing") and not hyper.packing
    again = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    assert convert.job_to_dict(over_grpc)["hyperParameters"] == again["hyperParameters"]


def test_a_preference_job_keeps_its_beta_on_rest_and_grpc(server: ApiServer) -> None:
    body = demo_job(f"dpo-{uuid.uuid4().hex[:6]}", dpoBeta=0.2)
    body["customizationType"] = "PREFERENCE"
    created = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["jobId"]
    described = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    assert described["customizationType"] == "PREFERENCE"
    assert described["hyperParameters"]["dpoBeta"] == 0.2

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FineTuningServiceStub(channel)
        over_grpc = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
    assert over_grpc.customization_type == pb.PREFERENCE
    assert over_grpc.hyper_parameters.dpo_beta == 0.2

    # Out of range with PREFERENCE too; a default beta is taken with any type.
    body["hyperParameters"]["dpoBeta"] = 10.5
    refused = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == "hyperParameters.dpoBeta"
    default = demo_job(f"dpo-default-{uuid.uuid4().hex[:6]}", dpoBeta=0.1)
    assert httpx.post(server.url + "/v1/jobs", json=default, timeout=10).status_code == 201


def test_unset_dropout_and_target_modules_read_back_as_null(server: ApiServer) -> None:
    body = demo_job(f"defaults-{uuid.uuid4().hex[:6]}")
    created = httpx.post(server.url + "/v1/jobs", json=body, timeout=10)
    assert created.status_code == 201, created.text
    hyper = created.json()["hyperParameters"]
    assert hyper["dropout"] is None
    assert hyper["loraTargetModules"] is None
    assert (hyper["method"], hyper["lrScheduler"], hyper["precision"]) == ("FULL", "linear", "auto")
    # A described job's values, defaults included, are a valid create body again.
    reused = dict(body, jobName=f"reused-{uuid.uuid4().hex[:6]}", hyperParameters=hyper)
    response = httpx.post(server.url + "/v1/jobs", json=reused, timeout=10)
    assert response.status_code == 201, response.text
