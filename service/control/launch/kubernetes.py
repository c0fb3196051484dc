"""The Kubernetes launcher: each trainer attempt is one `batch/v1` Job.
Long because the manifest and the calls that use it read best side by side.

`render_job_manifest()` is a pure function from a job's spec and attempt to the Job
manifest (a plain dict); `KubernetesLauncher` creates, observes and deletes those Jobs
with the official `kubernetes` client, and `observed_from_status()`
(service/control/launch/kubernetes_status.py) is the pure mapping from a Job and its Pods (plain
dicts, as the API returns them) to `Observed`.

Invariants of every rendered Job:

- its name is `tuneforge-<job-id>-a<attempt>`, built from a validated job id only, so
  one attempt is one Job and a repeated create of the same attempt is a no-op (409);
- `restartPolicy: Never` and `backoffLimit: 0`: a crashed pod fails its Job, and the
  reconciler relaunches the job as the next attempt (a new Job) while the crash retry
  budget lasts. The budget is counted in one place: a Job that retried crashes itself
  would multiply it ((budget + 1) squared tries), retry an out-of-memory kill the
  reconciler never retries, and leave no RETRY event for the attempt;
- `podFailurePolicy` ignores disruptions (preemption, eviction, node drain: the pod is
  replaced and does not count as a failure) and fails the Job at once on the trainer's
  "bad input" exit code, which no retry can fix;
- the pod gets `terminationGracePeriodSeconds` long enough to commit a checkpoint after
  SIGTERM, which the trainer treats as preemption;
- S3 credentials come from a Secret by reference: the tenant's own Secret when the
  operator named one (`tenant_secrets`, so one tenant's trainer cannot reach another's
  data), else the store's; no secret value is ever in the manifest;
- the container runs as non-root, without privilege escalation, on a read-only root
  filesystem; its only writable place is an emptyDir mounted at /scratch (its working
  directory and HOME);
- multi-node jobs (`resources.nodes` > 1) are Indexed Jobs (completions = parallelism
  = nodes); their pods find each other through torchrun's elastic c10d rendezvous,
  hosted by the pod of index 0 at `<job name>-0.<job name>` (a headless Service of the
  same name), so a pod replaced after an eviction joins again (the group restarts from
  the newest checkpoint, at most `rendezvous_restarts` times within the attempt);
- nothing outlives its job: the Job's pods are its own, the rendezvous Service is
  owned by the Job (ownerReferences), the Job is deleted by Kubernetes
  `ttlSecondsAfterFinished` after it ends, or sooner by the reconciler (`release`)
  once it has seen the job end, with every earlier attempt's that has finished;
- the trainer's output goes to the pod log and, through `python -m trainer.log_keeper`
  (the container's command, wrapping the trainer's), to the attempt's log in the store,
  uploaded when the trainer ends however it ends;
- the container runs `python -m trainer` for one process, and torchrun
  (`python -m trainer.torchrun`, which keeps the trainer's exit codes) for several:
  `--nproc-per-node` = the GPUs per node, and for several nodes `--nnodes` and the c10d
  rendezvous above (`trainer_command`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobstore.documents import JOB_ID_PATTERN, JobSpec, LaunchRecord, TrainerExit
from service.control.launch.base import Observed, Started
from service.control.launch.gpus import DeviceLease
from service.control.launch.kubernetes_status import observed_from_status, true_condition

log = logging.getLogger(__name__)

LABEL_JOB_ID = "tuneforge.io/job-id"
LABEL_TENANT = "tuneforge.io/tenant"
LABEL_ATTEMPT = "tuneforge.io/attempt"
ANNOTATION_TENANT = "tuneforge.io/tenant"
# The trainer's environment never carries these: they come from the Secret.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SCRATCH = "/scratch"
# torch.distributed's rendezvous port on rank 0 of a multi-node job.
RENDEZVOUS_PORT = 29500

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class KubernetesConfig:
    """Where and how trainer Jobs run; built from Settings in `main()`."""

    namespace: str
    image: str
    s3_secret_name: str
    termination_grace_seconds: int = 300
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    memory_limit: str | None = None
    scratch_size: str = "50Gi"
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    # tenant -> a Secret (same keys as s3_secret_name's) with that tenant's store pair.
    tenant_secrets: Mapping[str, str] = field(default_factory=dict)
    # Kubernetes deletes a finished Job (and its pods) this long after it ends, should
    # the reconciler not have (`release`). Long enough for a reconciler to see the end:
    # a Job gone before that reads as a lost trainer.
    job_ttl_seconds: int = 3600
    # Times torchrun restarts a multi-node group within an attempt when its membership
    # changes (a pod replaced) or a rank fails (torchrun cannot tell them apart).
    rendezvous_restarts: int = 3

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise ValueError(f"kubernetes namespace {self.namespace!r} is not a DNS label")
        if not self.image.strip():
            raise ValueError("the trainer image is not set")
        for secret in (self.s3_secret_name, *self.tenant_secrets.values()):
            if not _DNS_LABEL.match(secret.replace(".", "-")) or len(secret) > 253:
                raise ValueError(f"secret name {secret!r} is not a valid name")
        if self.termination_grace_seconds < 1:
            raise ValueError("termination_grace_seconds must be at least 1")
        if self.job_ttl_seconds < 60:
            raise ValueError("job_ttl_seconds must be at least 60")


def job_name(job_id: str, attempt: int) -> str:
    """The Kubernetes Job (and headless Service) name of one attempt."""
    if not re.match(JOB_ID_PATTERN, job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    if not 1 <= attempt <= 9999:
        raise ValueError(f"attempt out of range: {attempt}")
    return f"tuneforge-{job_id}-a{attempt}"


def tenant_label(tenant: str) -> str:
    """The tenant as a label value: itself when it is a valid one (at most 63
    characters of the allowed set), else a stable hash; the annotation keeps it whole."""
    if len(tenant) <= 63 and _LABEL_VALUE.match(tenant):
        return tenant
    return "h-" + hashlib.sha256(tenant.encode()).hexdigest()[:20]


def _labels(spec: JobSpec, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tuneforge-trainer",
        "app.kubernetes.io/managed-by": "tuneforge",
        LABEL_JOB_ID: spec.jobId,
        LABEL_TENANT: tenant_label(spec.tenant),
        LABEL_ATTEMPT: str(attempt),
    }


def _environment(
    spec: JobSpec, attempt: int, environment: Mapping[str, str], config: KubernetesConfig
) -> list[dict[str, Any]]:
    name = job_name(spec.jobId, attempt)
    nodes = spec.resources.nodes
    values = {k: v for k, v in environment.items() if k not in CREDENTIAL_VARIABLES}
    values.update(
        {
            "HOME": SCRATCH,
            "HF_HOME": f"{SCRATCH}/hf-home",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": f"{SCRATCH}/tmp",
            "TUNEFORGE_LOG_FILE": f"{SCRATCH}/trainer.log",
            "TUNEFORGE_ATTEMPT": str(attempt),
            "TUNEFORGE_NODES": str(nodes),
            "TUNEFORGE_GPUS_PER_NODE": str(spec.resources.gpus),
            "TUNEFORGE_SHARDING": spec.resources.sharding,
        }
    )
    if nodes > 1:
        values["MASTER_ADDR"] = f"{name}-0.{name}"
        values["MASTER_PORT"] = str(RENDEZVOUS_PORT)
    variables: list[dict[str, Any]] = [
        {"name": key, "value": value} for key, value in sorted(values.items())
    ]
    secret = config.tenant_secrets.get(spec.tenant, config.s3_secret_name)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        variables.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if nodes > 1:
        # The rank of this pod: the Job controller's completion index.
        index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        variables.append(
            {"name": "TUNEFORGE_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}}
        )
    return variables


def trainer_command(spec: JobSpec, attempt: int = 1, rendezvous_restarts: int = 3) -> list[str]:
    """The trainer container's command: one process, or torchrun over the GPUs of each
    node and the nodes (Kubernetes expands `$(VAR)` from the container's environment).

    Several nodes meet through c10d (elastic): ranks are assigned as nodes join, and a
    node that joins later (a pod replaced after an eviction) makes the group restart
    and meet again, from the newest checkpoint."""
    trainer = ["-m", "trainer", "--job-id", spec.jobId]
    resources = spec.resources
    if resources.nodes == 1 and resources.gpus <= 1:
        return ["python", *trainer]
    command = ["python", "-m", "trainer.torchrun", "--nproc-per-node", str(max(resources.gpus, 1))]
    if resources.nodes == 1:
        return [*command, "--standalone", *trainer]
    return [
        *command,
        "--nnodes",
        str(resources.nodes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv-id",
        job_name(spec.jobId, attempt),
        "--max-restarts",
        str(rendezvous_restarts),
        *trainer,
    ]


def render_job_manifest(
    spec: JobSpec, attempt: int, environment: Mapping[str, str], config: KubernetesConfig
) -> dict[str, Any]:
    """The `batch/v1` Job of one attempt of `spec` (see the module docstring)."""
    name = job_name(spec.jobId, attempt)
    labels = _labels(spec, attempt)
    resources = spec.resources
    requests: dict[str, str] = {"cpu": config.cpu_request, "memory": config.memory_request}
    limits: dict[str, str] = {}
    if config.memory_limit:
        limits["memory"] = config.memory_limit
    if resources.gpus:
        # Extended resources must be requested and limited alike.
        requests["nvidia.com/gpu"] = str(resources.gpus)
        limits["nvidia.com/gpu"] = str(resources.gpus)
    container: dict[str, Any] = {
        "name": "trainer",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        # The log keeper copies the trainer's output to the pod log and a file it uploads
        # as the attempt's log when the trainer ends (trainer/log_keeper.py).
        "command": [
            "python",
            "-m",
            "trainer.log_keeper",
            "--job-id",
            spec.jobId,
            "--",
            *trainer_command(spec, attempt, config.rendezvous_restarts),
        ],
        "workingDir": SCRATCH,
        "env": _environment(spec, attempt, environment, config),
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }
    if resources.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": config.scratch_size}}],
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if resources.nodes > 1:
        pod_spec["subdomain"] = name
    job_spec: dict[str, Any] = {
        # Crashes are retried by the reconciler, as a new attempt (module docstring).
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": config.job_ttl_seconds,
        "completions": resources.nodes,
        "parallelism": resources.nodes,
        "podFailurePolicy": {
            "rules": [
                {
                    # Preempted, evicted, drained: not the trainer's fault; the pod is
                    # replaced within the attempt without counting as a failure.
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                {
                    # Bad data or a refused model: no retry can fix it.
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "trainer",
                        "operator": "In",
                        "values": [int(TrainerExit.BAD_INPUT)],
                    },
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if resources.nodes > 1:
        job_spec["completionMode"] = "Indexed"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_TENANT: spec.tenant},
        },
        "spec": job_spec,
    }


def render_rendezvous_service(
    spec: JobSpec, attempt: int, config: KubernetesConfig, job_uid: str
) -> dict[str, Any]:
    """The headless Service that gives a multi-node attempt's pods DNS names, owned by
    the attempt's Job (`job_uid`): deleting the Job deletes it."""
    name = job_name(spec.jobId, attempt)
    labels = _labels(spec, attempt)
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": job_uid,
        "blockOwnerDeletion": False,
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_ID: spec.jobId, LABEL_ATTEMPT: str(attempt)},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }


# -- the launcher ---------------------------------------------------------------------


def _api_status(error: Exception) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


class KubernetesLauncher:
    """Creates, observes and deletes one `batch/v1` Job per trainer attempt."""

    name = "kubernetes"

    def __init__(self, config: KubernetesConfig, api_client: Any | None = None) -> None:
        from kubernetes import client
        from kubernetes import config as kube_config

        self.config = config
        if config.tenant_secrets:
            log.info(
                "trainer pods of tenants %s get their own store Secret",
                sorted(config.tenant_secrets),
            )
        else:
            log.warning(
                "no per-tenant store Secrets: every trainer pod gets Secret %s, which reaches "
                "every bucket the service can (TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS)",
                config.s3_secret_name,
            )
        if api_client is None:
            # In a pod: its service account; elsewhere: the operator's kubeconfig.
            try:
                kube_config.load_incluster_config()
            except kube_config.ConfigException:
                kube_config.load_kube_config()
            api_client = client.ApiClient()
        self._client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    def _create(self, create: Any, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            create(namespace=self.config.namespace, body=body)
        except ApiException as error:
            if _api_status(error) != 409:
                raise
            # AlreadyExists: an earlier try of this very attempt created it.
            log.info("%s %s exists already", body["kind"], body["metadata"]["name"])

    def start(
        self,
        spec: JobSpec,
        attempt: int,
        environment: dict[str, str],
        devices: DeviceLease | None = None,  # the cluster places GPUs: never given here
    ) -> Started:
        manifest = render_job_manifest(spec, attempt, environment, self.config)
        name = manifest["metadata"]["name"]
        self._create(self._batch.create_namespaced_job, manifest)
        log.info("created Kubernetes Job %s/%s", self.config.namespace, name)
        if spec.resources.nodes > 1:
            # After the Job, whose uid it names as its owner; the pods' rendezvous waits
            # for its DNS names meanwhile.
            job = self._batch.read_namespaced_job(name, self.config.namespace)
            uid = self._client.sanitize_for_serialization(job)["metadata"]["uid"]
            service = render_rendezvous_service(spec, attempt, self.config, str(uid))
            self._create(self._core.create_namespaced_service, service)
        return Started(f"{self.config.namespace}/{name}", None, None)

    def _job_of(self, launch: LaunchRecord) -> str | None:
        namespace, _, name = launch.host.partition("/")
        if namespace != self.config.namespace or not name.startswith("tuneforge-"):
            return None
        return name

    def observe(self, launch: LaunchRecord) -> Observed:
        from kubernetes.client.exceptions import ApiException

        name = self._job_of(launch)
        if name is None:
            return Observed(alive=None)
        try:
            job = self._batch.read_namespaced_job(name, self.config.namespace)
        except ApiException as error:
            if _api_status(error) == 404:
                return observed_from_status(None, [])
            raise
        job_data = self._client.sanitize_for_serialization(job)
        pods: list[Mapping[str, Any]] = []
        if true_condition(job_data, "Failed", "FailureTarget"):
            listing = self._core.list_namespaced_pod(
                self.config.namespace, label_selector=f"job-name={name}"
            )
            pods = self._client.sanitize_for_serialization(listing).get("items") or []
        return observed_from_status(job_data, pods)

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        """SIGTERM: delete the Job, its pods get their termination grace (a checkpoint);
        SIGKILL: delete it with no grace."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        name = self._job_of(launch)
        if name is None:
            return
        grace = 0 if which == signal.SIGKILL else self.config.termination_grace_seconds
        options = client.V1DeleteOptions(
            propagation_policy="Foreground", grace_period_seconds=grace
        )
        try:
            self._batch.delete_namespaced_job(name, self.config.namespace, body=options)
            log.info("deleted Kubernetes Job %s (%s, grace %ds)", name, which.name, grace)
        except ApiException as error:
            if _api_status(error) != 404:
                raise
        try:
            self._core.delete_namespaced_service(name, self.config.namespace)
        except ApiException as error:
            if _api_status(error) != 404:
                raise

    def local_log(self, job_id: str, attempt: int) -> None:
        return None  # the trainer uploads its own log

    def release(self, job_id: str) -> None:
        """Delete the finished Jobs of every attempt of a job that ended; their pods and
        rendezvous Services go with them (owned). A Job still running (its trainer
        uploading its last log lines, its pods stopping) is left to its
        ttlSecondsAfterFinished, which starts when it finishes."""
        from kubernetes import client

        if not re.match(JOB_ID_PATTERN, job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        listing = self._batch.list_namespaced_job(
            self.config.namespace, label_selector=f"{LABEL_JOB_ID}={job_id}"
        )
        for job in self._client.sanitize_for_serialization(listing).get("items") or []:
            if not true_condition(job, "Complete", "Failed"):
                continue
            name = job["metadata"]["name"]
            self._batch.delete_namespaced_job(
                name,
                self.config.namespace,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
            log.info("deleted the finished Kubernetes Job %s of job %s", name, job_id)

    def shutdown(self, grace_seconds: float) -> None:
        return None  # trainer Jobs outlive API replicas by design
