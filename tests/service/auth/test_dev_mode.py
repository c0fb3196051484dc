"""Development mode: no keys and loopback only -> auth off, said at start; anything
else without keys refuses to start."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer


@pytest.mark.parametrize("variable", ["TUNEFORGE_REST_HOST", "TUNEFORGE_GRPC_HOST"])
def test_non_loopback_bind_without_keys_refuses_to_start(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path, variable: str
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"open-{uuid.uuid4().hex[:12]}",
        extra_env={variable: "0.0.0.0"},
    )
    with pytest.raises(RuntimeError, match="API server exited"):
        server.start()
    assert server.process is not None and server.process.returncode == 2
    log = server.log_path.read_text()
    assert "tuneforge cannot start: authentication is off" in log
    assert "0.0.0.0 is not a loopback address" in log and "TUNEFORGE_ADMIN_KEY" in log


def test_loopback_without_keys_runs_open_and_says_so(api_server: ApiServer) -> None:
    assert "authentication is OFF (development mode" in api_server.log_path.read_text()
    with api_server.client() as rest:
        assert rest.get("/v1/jobs").status_code == 200  # no key needed
        # Key administration stays closed: there is no admin key to check.
        assert rest.get("/v1/admin/keys").status_code == 401


def test_non_loopback_bind_with_an_admin_key_starts_with_auth_on(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"bound-{uuid.uuid4().hex[:12]}",
        admin_key="an-admin-key-0123456789abcdef",
        extra_env={
            "TUNEFORGE_REST_HOST": "0.0.0.0",
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
        },
    )
    server.start()
    try:
        with server.client() as rest:
            assert rest.get("/v1/jobs").status_code == 401
        with server.client(server.create_api_key("team")) as rest:
            assert rest.get("/v1/jobs").status_code == 200
    finally:
        server.stop()


def test_auth_on_with_no_trainer_credentials_of_their_own_refuses_to_start(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> None:
    """With an external store, every tenant's trainers would hold the service's store
    credentials: not started unless the operator says sharing them is meant."""
    server = ApiServer(
        s3_server,
        tmp_path / "home",
        state_bucket=f"shared-{uuid.uuid4().hex[:12]}",
        admin_key="an-admin-key-0123456789abcdef",
    )
    with pytest.raises(RuntimeError, match="API server exited"):
        server.start()
    assert server.process is not None and server.process.returncode == 2
    log = server.log_path.read_text()
    assert "tuneforge cannot start: authentication is on, but no tenant has store" in log
    assert "TUNEFORGE_TRAINER_CREDENTIALS_FILE" in log
    assert "TUNEFORGE_TRAINER_SHARED_CREDENTIALS=true" in log
