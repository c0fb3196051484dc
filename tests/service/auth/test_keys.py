"""API keys: `tuneforge keys create/list/revoke`, and what each face does without one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuneforge import Client, RestClient
from tuneforge.errors import Unauthenticated

from jobstore.storage import ObjectStore, S3Location
from tests.servers import ApiServer
from tests.service.auth.conftest import ADMIN_KEY, bedrock_client, unique, unsigned_bedrock_client

SCRIPT = Path(sys.executable).parent / "tuneforge"


def _tuneforge(server: ApiServer, *arguments: str, admin_key: str | None = ADMIN_KEY) -> str:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tuneforge"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    environment["TUNEFORGE_REST_URL"] = server.url
    if admin_key is not None:
        environment["TUNEFORGE_ADMIN_KEY"] = admin_key
    done = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, env=environment, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_keys_create_list_revoke_with_the_cli(
    auth_server: ApiServer, object_store: ObjectStore
) -> None:
    tenant = unique("cli")
    printed = _tuneforge(auth_server, "keys", "create", "--tenant", tenant)
    key = printed.splitlines()[0]
    assert key.startswith("tfk_") and "not shown again" in printed
    key_id = key.split("_")[1]

    # Only a hash is stored.
    found = object_store.get_json(S3Location(auth_server.state_bucket, f"keys/{key_id}.json"))
    assert found is not None
    record = found[0]
    assert record["tenant"] == tenant and len(record["sha256"]) == 64
    assert key not in str(record) and key.split("_", 2)[2] not in str(record)

    listed = _tuneforge(auth_server, "keys", "list")
    line = next(line for line in listed.splitlines() if line.startswith(key_id))
    assert f"tenant={tenant}" in line and "active" in line
    assert key.split("_", 2)[2] not in listed

    with auth_server.client(key) as rest:
        assert rest.get("/v1/jobs").status_code == 200
        revoked = _tuneforge(auth_server, "keys", "revoke", key_id)
        assert "revoked" in revoked
        # Every replica trusts a key for at most TUNEFORGE_KEY_CACHE_SECONDS (2 s).
        deadline = time.monotonic() + 15
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = rest.get("/v1/jobs").status_code
            time.sleep(0.2)
        assert status == 401
    assert "revoked" in next(
        line for line in _tuneforge(auth_server, "keys", "list").splitlines() if key_id in line
    )


def test_key_administration_needs_the_admin_key(auth_server: ApiServer) -> None:
    with auth_server.client() as anonymous:
        assert anonymous.post("/v1/admin/keys", json={"tenant": "x"}).status_code == 401
        assert anonymous.get("/v1/admin/keys").status_code == 401
    tenant_key = auth_server.create_api_key(unique("not-admin"))
    for key in (tenant_key, "wrong-admin-key-0123456789"):
        with auth_server.client(key) as client:
            assert client.post("/v1/admin/keys", json={"tenant": "x"}).status_code == 401
            assert client.get("/v1/admin/keys").status_code == 401
    with auth_server.client(ADMIN_KEY) as admin:
        refused = admin.post("/v1/admin/keys", json={"tenant": "no spaces/allowed"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "tenant"


def _revoked_key(server: ApiServer) -> str:
    key = server.create_api_key(unique("revoked"))
    with server.client(ADMIN_KEY) as admin:
        assert admin.post(f"/v1/admin/keys/{key.split('_')[1]}/revoke").status_code == 200
    time.sleep(2.5)  # past the key cache
    return key


def test_rest_without_a_valid_key_is_401(auth_server: ApiServer) -> None:
    good = auth_server.create_api_key(unique("rest"))
    revoked = _revoked_key(auth_server)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    with httpx.Client(base_url=auth_server.url, timeout=30) as http:
        for headers in (
            {},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": f"Basic {good}"},
            {"Authorization": f"Bearer {forged}"},
            {"Authorization": f"Bearer {revoked}"},
        ):
            for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/0000000000000000")):
                response = http.request(method, path, headers=headers)
                assert response.status_code == 401, (headers, response.text)
                assert response.json()["error"]["code"] == "UNAUTHENTICATED"
                assert response.headers["WWW-Authenticate"] == "Bearer"
            created = http.post("/v1/jobs", json={}, headers=headers)
            assert created.status_code in (401, 422)  # never creates anything
        assert http.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        # Open without a key: probes and the API description.
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert http.get(path).status_code == 200, path
        schemes = http.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(scheme.get("scheme", "").lower() == "bearer" for scheme in schemes.values())
    with RestClient(auth_server.url, api_key=revoked) as client, pytest.raises(Unauthenticated):
        client.list_jobs()


def test_grpc_without_a_valid_key_is_unauthenticated(auth_server: ApiServer) -> None:
    good = auth_server.create_api_key(unique("grpc"))
    revoked = _revoked_key(auth_server)
    for key in (None, "not-a-key", revoked):
        with Client(auth_server.grpc_target, api_key=key, timeout=30) as client:
            with pytest.raises(Unauthenticated):
                client.list_jobs()
            with pytest.raises(Unauthenticated):
                next(iter(client.watch("0000000000000000")))
    with Client(auth_server.grpc_target, api_key=good, timeout=30) as client:
        assert list(client.list_jobs().jobs) == []
    # Health checking stays open (load balancers probe without keys).
    with grpc.insecure_channel(auth_server.grpc_target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_bedrock_without_a_valid_key_is_access_denied(auth_server: ApiServer) -> None:
    revoked = _revoked_key(auth_server)
    for client in (
        bedrock_client(auth_server, "AKIATENANTALPHA", "the-wrong-secret"),
        bedrock_client(auth_server, "AKIAUNKNOWN", "whatever"),
        unsigned_bedrock_client(auth_server),
    ):
        with pytest.raises(client.exceptions.AccessDeniedException):
            client.list_model_customization_jobs()
    with httpx.Client(base_url=auth_server.url, timeout=30) as http:
        for token in ("not-a-key", revoked):
            response = http.get(
                "/model-customization-jobs", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 403
            assert response.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert (
        "modelCustomizationJobSummaries"
        in bedrock_client(auth_server, "AKIATENANTALPHA").list_model_customization_jobs()
    )
