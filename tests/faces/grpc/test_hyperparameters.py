"""The training knobs over gRPC: the new HyperParameters fields are validated as REST
validates them (INVALID_ARGUMENT, one field violation naming hyperParameters.<field>),
and a job created with them over gRPC trains with exactly those values.

The server's "trainer" is /bin/false: these jobs are never meant to train.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tuneforge import convert
from tuneforge.v1 import fine_tuning_pb2 as pb
from tuneforge.v1 import fine_tuning_pb2_grpc as pb_grpc

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer, demo_job


@pytest.fixture(scope="module")
def stub(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.FineTuningServiceStub]:
    server = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("grpc-hyper"),
        state_bucket=f"grpc-hyper-{uuid.uuid4().hex[:8]}",
        extra_env={"TUNEFORGE_TRAINER_PYTHON": "/bin/false"},
    )
    server.start()
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FineTuningServiceStub(channel)
    server.stop()


def _request(**hyper: Any) -> pb.CreateJobRequest:
    return convert.create_request(demo_job(f"grpc-hyper-{uuid.uuid4().hex[:6]}", **hyper))


def _violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return {v.field: v.description for v in bad_request.field_violations}
    raise AssertionError("no BadRequest detail")


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("scheduler", {"lrScheduler": "exponential"}, "lrScheduler", "'cosine'"),
    ("precision", {"precision": "fp16"}, "precision", "'bf16'"),
    ("method", {"method": "QLORA"}, "method", "'LORA'"),
    ("dropout", {"dropout": 1.5}, "dropout", "less than 1"),
    ("clipping", {"maxGradNorm": -1.0}, "maxGradNorm", "greater than or equal to 0"),
    ("keep", {"keepCheckpoints": 0}, "keepCheckpoints", "greater than or equal to 1"),
    ("rank", {"method": "LORA", "loraRank": 0}, "loraRank", "greater than or equal to 1"),
    ("rank with FULL", {"loraRank": 32}, "loraRank", "only to method LORA"),
    ("merge with FULL", {"mergeAdapter": True}, "mergeAdapter", "only to method LORA"),
    ("beta with FINE_TUNING", {"dpoBeta": 0.2}, "dpoBeta", "only to customizationType PREFERENCE"),
    ("beta 0", {"dpoBeta": 0.0}, "dpoBeta", "greater than 0"),
    (
        "module name",
        {"method": "LORA", "loraTargetModules": ["q_proj", "v proj"]},
        "loraTargetModules",
        "v proj",
    ),
]


@pytest.mark.parametrize(
    ("hyper", "field", "words"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_hyperparameter_is_invalid_argument_naming_the_field(
    stub: pb_grpc.FineTuningServiceStub, hyper: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(_request(**hyper), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(caught.value)
    assert list(violations) == [f"hyperParameters.{field}"], violations
    assert words in violations[f"hyperParameters.{field}"]


def test_lora_job_keeps_its_values_and_defaults_fill_the_rest(
    stub: pb_grpc.FineTuningServiceStub,
) -> None:
    request = _request(method="LORA", loraRank=4, mergeAdapter=True, lrScheduler="constant")
    request.hyper_parameters.lora_target_modules.extend(["q_proj", "v_proj"])
    created = stub.CreateJob(request, timeout=30)
    hyper = created.job.hyper_parameters
    assert (hyper.method, hyper.lora_rank, hyper.merge_adapter) == ("LORA", 4, True)
    assert hyper.lr_scheduler == "constant"
    assert list(hyper.lora_target_modules) == ["q_proj", "v_proj"]
    # Unset fields come back set to their defaults; an unset dropout stays unset.
    assert (hyper.precision, hyper.lora_alpha, hyper.keep_checkpoints) == ("auto", 16.0, 2)
    assert hyper.HasField("packing") and hyper.packing
    assert not hyper.HasField("dropout")


def test_a_preference_job_keeps_its_beta(stub: pb_grpc.FineTuningServiceStub) -> None:
    request = _request(dpoBeta=0.2)
    request.customization_type = pb.PREFERENCE
    created = stub.CreateJob(request, timeout=30)
    assert created.job.customization_type == pb.PREFERENCE
    assert created.job.hyper_parameters.dpo_beta == 0.2
    described = stub.GetJob(pb.GetJobRequest(job_id=created.job.job_id), timeout=30)
    assert described.customization_type == pb.PREFERENCE
    assert described.hyper_parameters.dpo_beta == 0.2

    # Out of range with PREFERENCE too: the same one violation.
    request = _request(dpoBeta=11.0)
    request.customization_type = pb.PREFERENCE
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(_violations(caught.value)) == ["hyperParameters.dpoBeta"]
