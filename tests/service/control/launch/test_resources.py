"""`resources` on a job: what a launcher turns into GPU, node and sharding requests.

Over the real REST API: out-of-range values get a 422 naming the field and create
nothing; a valid request is stored in the job's spec and shown on every read.
"""

from __future__ import annotations

from typing import Any

from tests.servers import ApiServer, demo_job

BAD_RESOURCES: list[tuple[dict[str, Any], str]] = [
    ({"gpus": -1}, "resources.gpus"),
    ({"gpus": 65}, "resources.gpus"),
    ({"gpus": "two"}, "resources.gpus"),
    ({"nodes": 0}, "resources.nodes"),
    ({"nodes": 65}, "resources.nodes"),
    ({"sharding": "ZERO3"}, "resources.sharding"),
    ({"cpus": 4}, "resources.cpus"),
]


def test_out_of_range_resources_are_refused_naming_the_field(api_server: ApiServer) -> None:
    # One server for all cases: each start costs seconds on a shared machine.
    with api_server.client() as client:
        for resources, field in BAD_RESOURCES:
            body = demo_job("bad-resources") | {"resources": resources}
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (resources, response.text)
            assert response.json()["error"]["field"] == field, (resources, response.text)
        assert client.get("/v1/jobs").json()["jobs"] == []


def test_resources_are_stored_and_shown(api_server: ApiServer) -> None:
    body = demo_job("with-resources") | {"resources": {"gpus": 0, "sharding": "FSDP"}}
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=body)
        assert created.status_code in (200, 201), created.text
        job_id = created.json()["jobId"]
        client.post(f"/v1/jobs/{job_id}/stop")
        shown = client.get(f"/v1/jobs/{job_id}").json()
        assert shown["resources"] == {"gpus": 0, "nodes": 1, "sharding": "FSDP"}
        default = client.post("/v1/jobs", json=demo_job("no-resources")).json()
        client.post(f"/v1/jobs/{default['jobId']}/stop")
        assert default["resources"] == {"gpus": 0, "nodes": 1, "sharding": "DDP"}
    api_server.wait_for(job_id, {"STOPPED"}, timeout=120)
