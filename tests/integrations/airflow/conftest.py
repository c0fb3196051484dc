"""A real tuneforge server with real trainers, for the example DAG to drive over its
Bedrock face with the access key that the Airflow connection holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.faces.bedrock.conftest import ACCESS_KEY, ACCOUNT, REGION, SECRET_KEY
from tests.servers import ApiServer


@pytest.fixture(scope="session")
def bedrock_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """Signatures checked against one access key, as on a real deployment."""
    server = ApiServer(
        s3_server,
        tmp_path_factory.mktemp("airflow-server"),
        state_bucket=f"airflow-{uuid.uuid4().hex[:12]}",
        extra_env={
            "TUNEFORGE_BEDROCK_REGION": REGION,
            "TUNEFORGE_BEDROCK_ACCOUNT_ID": ACCOUNT,
            "TUNEFORGE_BEDROCK_ACCESS_KEYS": json.dumps({ACCESS_KEY: SECRET_KEY}),
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
