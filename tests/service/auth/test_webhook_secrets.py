"""Webhook secrets per tenant: each tenant reads and rotates its own (REST and the CLI),
and its jobs' notifications are signed with it, so a receiver holding one tenant's
secret rejects a notification signed for another (no tenant can forge another's).

The `auth_server` sends webhooks to loopback; its trainers sleep, so a job ends when it
is stopped (STOPPED), which is what is notified here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.webhooks.delivery import SIGNATURE_HEADER, verify_signature
from tests.servers import ApiServer, demo_job
from tests.service.auth.conftest import OPERATOR_WEBHOOK_SECRET, unique
from tests.webhook_receiver import Delivery, WebhookReceiver, receiving_webhooks

SCRIPT = Path(sys.executable).parent / "tuneforge"


def _cli(server: ApiServer, api_key: str, *arguments: str) -> Any:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tuneforge"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    environment |= {"TUNEFORGE_REST_URL": server.url, "TUNEFORGE_API_KEY": api_key}
    done = subprocess.run(
        [*command, "webhooks", *arguments, "--output", "json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _notified(server: ApiServer, key: str, receiver: WebhookReceiver, path: str) -> Delivery:
    """Create a job that notifies `path`, stop it, and return the notification."""
    body = demo_job(unique("hooked")) | {"notifications": {"webhookUrl": receiver.url(path)}}
    with server.client(key) as rest:
        created = rest.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
        assert rest.post(f"/v1/jobs/{job_id}/stop").status_code == 202
    (delivery,) = receiver.wait_for(path, timeout=90)
    assert json.loads(delivery.body)["jobId"] == job_id
    return delivery


def test_each_tenant_signs_with_its_own_secret_and_rotates_it(auth_server: ApiServer) -> None:
    first, second = unique("hooks-a"), unique("hooks-b")
    first_key = auth_server.create_api_key(first)
    second_key = auth_server.create_api_key(second)
    with auth_server.client(first_key) as rest:
        mine = rest.get("/v1/webhook-secret").json()
    with auth_server.client(second_key) as rest:
        theirs = rest.get("/v1/webhook-secret").json()
    assert (mine["tenant"], mine["generation"], mine["rotatedAt"]) == (first, 1, None)
    assert mine["secret"].startswith("whsec_")
    assert len({mine["secret"], theirs["secret"], OPERATOR_WEBHOOK_SECRET}) == 3
    assert _cli(auth_server, first_key, "secret") == mine  # the CLI shows the same

    with receiving_webhooks() as receiver:
        delivery = _notified(auth_server, first_key, receiver, "/hooks/first")
        signature = delivery.headers[SIGNATURE_HEADER]
        assert verify_signature(mine["secret"], delivery.body, signature)
        # A receiver of the other tenant (or holding the operator's) rejects it.
        assert not verify_signature(theirs["secret"], delivery.body, signature)
        assert not verify_signature(OPERATOR_WEBHOOK_SECRET, delivery.body, signature)

        rotated = _cli(auth_server, first_key, "rotate-secret")
        assert rotated["generation"] == 2 and rotated["rotatedAt"]
        assert rotated["secret"] not in (mine["secret"], theirs["secret"])
        with auth_server.client(second_key) as rest:  # the other tenant's is untouched
            assert rest.get("/v1/webhook-secret").json() == theirs
        delivery = _notified(auth_server, first_key, receiver, "/hooks/first-rotated")
        signature = delivery.headers[SIGNATURE_HEADER]
        assert verify_signature(rotated["secret"], delivery.body, signature)
        assert not verify_signature(mine["secret"], delivery.body, signature)


def test_the_secret_needs_a_key_and_names_only_the_callers_tenant(auth_server: ApiServer) -> None:
    with auth_server.client() as rest:
        assert rest.get("/v1/webhook-secret").status_code == 401
        assert rest.post("/v1/webhook-secret/rotate").status_code == 401
    with auth_server.client(auth_server.create_api_key(unique("hooks-c"))) as rest:
        # No way to name another tenant: the path has no tenant, unknown fields are ignored.
        answer = rest.get("/v1/webhook-secret", params={"tenant": "someone-else"}).json()
    assert answer["tenant"].startswith("hooks-c")
