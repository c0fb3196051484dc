"""Kubernetes launcher: rendered Job manifests pass the Kubernetes schema and carry the
policies the launcher promises; Job/Pod status reads as the right `Observed`.

No cluster exists here: manifests are checked against the OpenAPI-derived JSON schemas
bundled by `kubernetes-validate` (strict: unknown fields are errors), and into the
official client's models.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client

from jobstore.documents import DataLocation, HyperParameters, JobResources, JobSpec, new_job_id
from service.control.launch.kubernetes import (
    KubernetesConfig,
    job_name,
    render_job_manifest,
    render_rendezvous_service,
    tenant_label,
)
from service.control.launch.kubernetes_status import observed_from_status

# Oldest release with podFailurePolicy GA (1.31) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.31", kubernetes_validate.latest_version())

CONFIG = KubernetesConfig(
    namespace="tuneforge",
    image="registry.example/tuneforge-trainer:0.1.0",
    s3_secret_name="tuneforge-s3",
    termination_grace_seconds=300,
)
ENVIRONMENT = {
    "AWS_ENDPOINT_URL": "http://seaweedfs.storage:8333",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "server-key-id",
    "AWS_SECRET_ACCESS_KEY": "server-secret-value",
    "TUNEFORGE_STATE_BUCKET": "tuneforge",
    "TUNEFORGE_HEARTBEAT_SECONDS": "2.0",
}


def make_spec(gpus: int = 0, nodes: int = 1, tenant: str = "acme") -> JobSpec:
    return JobSpec(
        jobId=new_job_id(),
        jobName="k8s-test",
        tenant=tenant,
        createdAt="2026-11-23T00:00:00.000Z",
        baseModelIdentifier="s3://demo/models/tiny-llama/",
        trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
        outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
        hyperParameters=HyperParameters(),
        resources=JobResources(gpus=gpus, nodes=nodes),
    )


REPRESENTATIVE = {
    "one-gpu": make_spec(gpus=1),
    "cpu-only": make_spec(gpus=0),
    "two-nodes-four-gpus": make_spec(gpus=4, nodes=2),
    "one-node-four-gpus": make_spec(gpus=4),
}


def validate(manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def trainer(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(manifest)["containers"]
    assert container["name"] == "trainer"
    return container


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", sorted(REPRESENTATIVE))
def test_rendered_job_passes_the_kubernetes_schema(case: str, version: str) -> None:
    spec = REPRESENTATIVE[case]
    manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
    validate(manifest, version)
    # The official client's models take it too (what create_namespaced_job sends).
    api = client.ApiClient()
    model = api._ApiClient__deserialize(manifest, "V1Job")  # type: ignore[attr-defined]
    assert api.sanitize_for_serialization(model) == manifest


def test_schema_check_catches_a_broken_manifest() -> None:
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    manifest["spec"]["template"]["spec"]["restartPolicy"] = {"not": "a string"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest, KUBERNETES_VERSIONS[-1])
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    manifest["spec"]["backofLimit"] = 3  # misspelt: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest, KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendezvous_service_passes_the_kubernetes_schema(version: str) -> None:
    spec = REPRESENTATIVE["two-nodes-four-gpus"]
    service = render_rendezvous_service(spec, 1, CONFIG, "0f9e-uid")
    validate(service, version)
    assert service["spec"]["clusterIP"] == "None"
    # Owned by its attempt's Job: deleting the Job (TTL, or the reconciler) deletes it.
    (owner,) = service["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job_name(spec.jobId, 1),
        "uid": "0f9e-uid",
        "blockOwnerDeletion": False,
    }


def test_a_finished_job_is_deleted_after_its_ttl() -> None:
    for spec in REPRESENTATIVE.values():
        manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
        assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
    shorter = dataclasses.replace(CONFIG, job_ttl_seconds=600)
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, shorter)
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 600
    with pytest.raises(ValueError, match="job_ttl_seconds"):
        dataclasses.replace(CONFIG, job_ttl_seconds=5)


def test_job_is_named_and_labelled_from_the_job_id_tenant_and_attempt() -> None:
    spec = REPRESENTATIVE["one-gpu"]
    manifest = render_job_manifest(spec, 3, ENVIRONMENT, CONFIG)
    metadata = manifest["metadata"]
    assert metadata["name"] == f"tuneforge-{spec.jobId}-a3"
    assert metadata["namespace"] == "tuneforge"
    expected = {
        "tuneforge.io/job-id": spec.jobId,
        "tuneforge.io/tenant": "acme",
        "tuneforge.io/attempt": "3",
    }
    assert expected.items() <= metadata["labels"].items()
    assert expected.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()


def test_job_names_come_from_validated_ids_only() -> None:
    with pytest.raises(ValueError, match="not a job id"):
        job_name("../../etc", 1)
    with pytest.raises(ValueError, match="not a job id"):
        job_name("UPPERCASEJOBID01", 1)
    with pytest.raises(ValueError, match="attempt"):
        job_name(REPRESENTATIVE["one-gpu"].jobId, 0)


def test_a_tenant_that_is_no_label_value_is_hashed_and_kept_in_an_annotation() -> None:
    tenant = "team_" + "x" * 59 + "-"  # 65 characters ending in '-': not a label value
    spec = make_spec(tenant=tenant)
    manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
    validate(manifest, KUBERNETES_VERSIONS[-1])
    label = manifest["metadata"]["labels"]["tuneforge.io/tenant"]
    assert label == tenant_label(tenant) != tenant
    assert manifest["metadata"]["annotations"]["tuneforge.io/tenant"] == tenant


def test_pods_never_restart_in_place_and_a_crash_ends_the_attempt() -> None:
    # The reconciler spends the crash retry budget, one Job per attempt; a Job that also
    # retried would multiply it.
    for spec in REPRESENTATIVE.values():
        manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
        assert pod_spec(manifest)["restartPolicy"] == "Never"
        assert manifest["spec"]["backoffLimit"] == 0


def test_pod_failure_policy_ignores_disruptions_and_fails_fast_on_bad_input() -> None:
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    rules = manifest["spec"]["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    (fail_job,) = [rule for rule in rules if rule["action"] == "FailJob"]
    assert fail_job["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [2]}


def test_termination_grace_leaves_time_for_a_preemption_checkpoint() -> None:
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    assert pod_spec(manifest)["terminationGracePeriodSeconds"] == 300


def test_gpu_requests_follow_the_job_resources() -> None:
    one = trainer(render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG))
    assert one["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert one["resources"]["requests"]["nvidia.com/gpu"] == "1"
    cpu = trainer(render_job_manifest(REPRESENTATIVE["cpu-only"], 1, ENVIRONMENT, CONFIG))
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in cpu["resources"]["requests"]
    multi = render_job_manifest(REPRESENTATIVE["two-nodes-four-gpus"], 1, ENVIRONMENT, CONFIG)
    assert trainer(multi)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_multi_node_jobs_are_indexed_with_one_pod_per_node() -> None:
    spec = REPRESENTATIVE["two-nodes-four-gpus"]
    manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
    assert manifest["spec"]["completionMode"] == "Indexed"
    assert manifest["spec"]["completions"] == manifest["spec"]["parallelism"] == 2
    name = manifest["metadata"]["name"]
    assert pod_spec(manifest)["subdomain"] == name
    env = {v["name"]: v for v in trainer(manifest)["env"]}
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{name}"
    assert env["TUNEFORGE_NODES"]["value"] == "2"
    assert (
        "job-completion-index" in env["TUNEFORGE_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    )
    single = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    assert "completionMode" not in single["spec"]
    assert single["spec"]["completions"] == 1


def trainer_part(manifest: dict[str, Any], spec: JobSpec) -> list[str]:
    """The trainer's own command, after the log keeper that wraps it."""
    command: list[str] = trainer(manifest)["command"]
    keeper = ["python", "-m", "trainer.log_keeper", "--job-id", spec.jobId, "--"]
    assert command[: len(keeper)] == keeper
    return command[len(keeper) :]


def test_the_log_keeper_wraps_every_trainer_and_keeps_its_log_in_scratch() -> None:
    for spec in REPRESENTATIVE.values():
        manifest = render_job_manifest(spec, 1, ENVIRONMENT, CONFIG)
        assert trainer_part(manifest, spec)[-2:] == ["--job-id", spec.jobId]
        env = {v["name"]: v.get("value") for v in trainer(manifest)["env"]}
        assert env["TUNEFORGE_LOG_FILE"] == "/scratch/trainer.log"


def test_several_nodes_meet_through_an_elastic_rendezvous_a_replaced_pod_can_rejoin() -> None:
    spec = REPRESENTATIVE["two-nodes-four-gpus"]
    command = trainer_part(render_job_manifest(spec, 2, ENVIRONMENT, CONFIG), spec)
    assert command[:3] == ["python", "-m", "trainer.torchrun"]
    assert command[-4:] == ["-m", "trainer", "--job-id", spec.jobId]
    options = dict(zip(command[3:-4:2], command[4:-4:2], strict=True))
    assert options == {
        "--nproc-per-node": "4",
        "--nnodes": "2",
        # c10d, not a static rendezvous: ranks are assigned as pods join, so a pod
        # replaced after an eviction joins again (the group restarts, at most
        # --max-restarts times in the attempt). Its host: the pod of index 0 behind the
        # headless Service, expanded by Kubernetes from the pod's environment.
        "--rdzv-backend": "c10d",
        "--rdzv-endpoint": "$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv-id": job_name(spec.jobId, 2),
        "--max-restarts": "3",
    }
    one_node = REPRESENTATIVE["one-node-four-gpus"]
    command = trainer_part(render_job_manifest(one_node, 1, ENVIRONMENT, CONFIG), one_node)
    assert command[:7] == [
        "python",
        "-m",
        "trainer.torchrun",
        "--nproc-per-node",
        "4",
        "--standalone",
        "-m",
    ]
    one_gpu = REPRESENTATIVE["one-gpu"]
    single = render_job_manifest(one_gpu, 1, ENVIRONMENT, CONFIG)
    assert trainer_part(single, one_gpu) == ["python", "-m", "trainer", "--job-id", one_gpu.jobId]


def test_credentials_come_from_the_secret_and_never_inline() -> None:
    manifest = render_job_manifest(REPRESENTATIVE["one-gpu"], 1, ENVIRONMENT, CONFIG)
    assert "server-secret-value" not in repr(manifest)
    assert "server-key-id" not in repr(manifest)
    env = {v["name"]: v for v in trainer(manifest)["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "tuneforge-s3", "key": name}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://seaweedfs.storage:8333"
    assert env["TUNEFORGE_ATTEMPT"]["value"] == "1"


def test_trainer_runs_non_root_read_only_with_scratch_space() -> None:
    manifest = render_job_manifest(REPRESENTATIVE["cpu-only"], 1, ENVIRONMENT, CONFIG)
    container = trainer(manifest)
    assert container["image"] == CONFIG.image
    assert trainer_part(manifest, REPRESENTATIVE["cpu-only"])[:3] == ["python", "-m", "trainer"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert pod_spec(manifest)["securityContext"]["runAsNonRoot"] is True
    (mount,) = container["volumeMounts"]
    (volume,) = pod_spec(manifest)["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume
    assert container["workingDir"] == mount["mountPath"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["HOME"] == env["TMPDIR"].rsplit("/", 1)[0] == mount["mountPath"]


# -- status mapping -------------------------------------------------------------------


def job_status(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "tuneforge-x"},
        "status": {
            "conditions": [
                {"type": kind, "status": "True", "reason": reason} for kind, reason in conditions
            ]
        },
    }


def failed_pod(
    exit_code: int = 1,
    reason: str = "Error",
    created: str = "2026-11-23T10:00:00Z",
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "pod", "creationTimestamp": created},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
                }
            ],
            **status,
        },
    }


def test_a_pending_or_running_job_is_alive() -> None:
    assert observed_from_status({"status": {}}, []).alive is True
    assert observed_from_status({"status": {"active": 1, "ready": 1}}, []).alive is True


def test_a_complete_job_exited_ok() -> None:
    observed = observed_from_status(job_status(("Complete", "CompletionsReached")), [])
    assert (observed.alive, observed.exit_code) == (False, 0)


def test_a_failed_job_reports_its_last_pods_exit_code() -> None:
    pods = [
        failed_pod(1, created="2026-11-23T10:00:00Z"),
        failed_pod(2, created="2026-11-23T10:05:00Z"),
    ]
    observed = observed_from_status(job_status(("Failed", "PodFailurePolicy")), pods)
    assert (observed.alive, observed.exit_code) == (False, 2)
    assert observed.reason is not None and "PodFailurePolicy" in observed.reason


def test_an_oom_killed_trainer_reads_as_out_of_memory() -> None:
    pods = [failed_pod(137, "OOMKilled")]
    observed = observed_from_status(job_status(("Failed", "BackoffLimitExceeded")), pods)
    assert (observed.alive, observed.exit_code) == (False, 137)
    assert observed.reason is not None and "out of memory" in observed.reason


def test_an_evicted_or_disrupted_pod_reads_as_preempted() -> None:
    evicted = failed_pod(137)
    evicted["status"]["reason"] = "Evicted"
    evicted["status"]["message"] = "The node was low on resource: memory."
    disrupted = failed_pod(143)
    disrupted["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
    ]
    for pod in (evicted, disrupted):
        observed = observed_from_status(job_status(("Failed", "BackoffLimitExceeded")), [pod])
        assert (observed.alive, observed.exit_code) == (False, 143)
        assert observed.reason is not None and "preempted" in observed.reason


def test_a_job_that_is_gone_is_dead_with_no_exit_code() -> None:
    observed = observed_from_status(None, [])
    assert (observed.alive, observed.exit_code) == (False, None)


def test_a_failure_target_counts_as_failed_before_the_pods_are_gone() -> None:
    observed = observed_from_status(job_status(("FailureTarget", "PodFailurePolicy")), [])
    assert observed.alive is False


def test_a_tenant_with_its_own_secret_gets_only_that_secret() -> None:
    config = dataclasses.replace(CONFIG, tenant_secrets={"acme": "tuneforge-s3-acme"})
    references = {}
    for tenant in ("acme", "globex"):
        manifest = render_job_manifest(make_spec(tenant=tenant), 1, ENVIRONMENT, config)
        validate(manifest, KUBERNETES_VERSIONS[-1])
        (container,) = pod_spec(manifest)["containers"]
        references[tenant] = {
            variable["valueFrom"]["secretKeyRef"]["name"]
            for variable in container["env"]
            if "secretKeyRef" in variable.get("valueFrom", {})
        }
        assert "server-secret-value" not in json.dumps(manifest)  # values never, references only
    assert references == {"acme": {"tuneforge-s3-acme"}, "globex": {"tuneforge-s3"}}


def test_an_invalid_tenant_secret_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        dataclasses.replace(CONFIG, tenant_secrets={"acme": "Bad_Name"})
