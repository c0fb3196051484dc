"""The tuneforge client: gRPC (`Client`), REST (`RestClient`) and the `tuneforge` CLI.

    from tuneforge import Client

    with Client("127.0.0.1:50051") as client:
        job = client.create_job(
            {
                "jobName": "my-job",
                "baseModelIdentifier": "s3://demo/models/tiny-llama/",
                "trainingDataConfig": {"s3Uri": "s3://demo/datasets/sample-train.jsonl"},
                "outputDataConfig": {"s3Uri": "s3://demo/output/"},
                "hyperParameters": {"epochCount": 1},
            }
        ).job
        final = client.wait(job.job_id)

Messages are the generated ones (`tuneforge.v1.fine_tuning_pb2`, exported here as
`pb`); errors are `tuneforge.errors.ApiError` subclasses. No torch, no server code.
"""

from __future__ import annotations

from tuneforge import errors
from tuneforge.client import Client
from tuneforge.convert import job_to_dict
from tuneforge.errors import (
    AlreadyExists,
    ApiError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from tuneforge.rest import RestClient
from tuneforge.v1 import fine_tuning_pb2 as pb

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "ApiError",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "RestClient",
    "Unavailable",
    "__version__",
    "errors",
    "job_to_dict",
    "pb",
]
