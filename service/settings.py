"""Typed settings for the API server.

Built once in `main()` (or by a test) and passed down. Nothing in the project reads
the environment at import time.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobstore.storage import parse_s3_uri
from service.errors import InvalidArgument

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A device as CUDA_VISIBLE_DEVICES names it: an index, a GPU-/MIG- UUID.
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.-]{0,127}$")


def gpu_names(listed: str) -> list[str]:
    """The devices a comma-separated list names (TUNEFORGE_GPUS, CUDA_VISIBLE_DEVICES), in
    order. Raises ValueError for a name CUDA would not take or a device named twice."""
    devices = [name.strip() for name in listed.split(",") if name.strip()]
    # CUDA stops at the first invalid entry: "-1" hides every device after it.
    if "-1" in devices:
        devices = devices[: devices.index("-1")]
    for name in devices:
        if not _DEVICE_NAME.match(name):
            raise ValueError(f"GPU {name!r} is not a device index or UUID")
    if len(set(devices)) != len(devices):
        raise ValueError(f"GPUs {listed!r} name a device twice")
    return devices


class TenantLimitOverrides(BaseModel):
    """One tenant's limits where they differ from the defaults (unset: the default)."""

    model_config = ConfigDict(extra="forbid")

    max_running_jobs: int | None = Field(default=None, ge=0)
    max_queued_jobs: int | None = Field(default=None, ge=0)
    requests_per_second: float | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=1)


class BedrockAccessKey(BaseModel):
    """A SigV4 key pair of the Bedrock face and the tenant whose jobs it acts on."""

    model_config = ConfigDict(extra="forbid")

    secret: SecretStr
    tenant: str = Field(default="default", pattern=r"^[a-zA-Z0-9_-]{1,64}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore")

    # Where local state lives: the embedded store's data, trainer working directories,
    # the `env` file for the AWS CLI. Ignored by git.
    home: Path = Path(".tuneforge")

    rest_host: str = "127.0.0.1"
    rest_port: int = 8000
    # How long an idle keep-alive connection stays open. Longer than a load balancer's
    # idle timeout (60 s on AWS ALB, nginx's upstream default), so the server is never
    # the side that closes a connection a client is about to reuse (uvicorn's 5 s made
    # busy clients see ReadError on a request sent into a just-closed connection).
    rest_keep_alive_seconds: int = Field(default=65, ge=1)
    # Serving processes on the REST port (service/server/workers.py): each one a replica with
    # its own reconciler; for hosts with cores to spare (one Python process uses one).
    api_workers: int = Field(default=1, ge=1, le=64)

    # gRPC (proto/tuneforge/v1/), in the same process as REST, over the same core.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # How often a gRPC WatchJob stream reads the job for changes to send.
    grpc_watch_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    # Open job streams (SSE /v1/jobs/{id}/stream and gRPC WatchJob) one replica serves,
    # per tenant and in all; one past either is refused with 429 / RESOURCE_EXHAUSTED.
    # Each watched job is read once per poll however many follow it
    # (service/core/job_feed.py). 0: no limit.
    max_watchers_per_tenant: int = Field(default=1000, ge=0)
    max_watchers: int = Field(default=4000, ge=0)

    # Object store. With no endpoint configured the service starts an embedded
    # SeaweedFS on loopback (`weed mini`) and seeds the demo bucket.
    s3_endpoint_url: str | None = None
    embedded_s3_port: int = 8333
    # Credentials for the store. For an external store, unset means boto3's usual chain
    # (environment, instance profile...). The embedded store uses `tuneforge` and a
    # random secret generated on first start and kept in `<home>/s3-secret`.
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    state_bucket: str = "tuneforge"
    seed_demo: bool = True
    # Files uploaded through the OpenAI-compatible face (POST /v1/files): each tenant's
    # under s3://<files_bucket>/<tenant>/, a folder every tenant is granted (its trainers
    # read their data there). Created at start, like the state bucket.
    files_bucket: str = Field(
        default="tuneforge-files", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )
    # The largest file an upload may be (413 beyond it); request bodies elsewhere keep
    # max_request_bytes.
    max_file_bytes: int = Field(default=1 << 30, ge=1)
    # The base models the OpenAI face lists and takes by name (`model`), each an s3://
    # folder: TUNEFORGE_BASE_MODELS='{"qwen2-0.5b": "s3://models/qwen2-0.5b/"}'. The demo's
    # tiny model is listed as `tiny-llama` wherever the demo assets are in the store.
    base_models: dict[str, str] = {}

    # Where trainers run: `local` subprocesses, jobs on a `ray` cluster (ray_address),
    # or `kubernetes` Jobs (kubernetes_*). docs/scaling.md.
    launcher: str = Field(default="local", pattern="^(local|ray|kubernetes)$")
    # How often each replica looks at the store for work (queued jobs, stop
    # requests to escalate, dead trainers).
    reconcile_interval_seconds: float = 2.0
    # A waiting job the reconciler has read is not read again each pass while its
    # markers say nothing changed; it is read anyway about this often (the bound on a
    # change written behind the service's back). 0: every waiting job, every pass.
    reconcile_waiting_refresh_seconds: float = Field(default=300.0, ge=0)
    # How old a describe or list of a job not finished may be: within this many seconds a
    # replica answers from what it read or wrote, not the store (jobstore/recent_jobs.py).
    # A change made through this replica shows at once; one by a trainer or another
    # replica within this bound. 0: read the store on every call.
    read_staleness_seconds: float = Field(default=1.0, ge=0, le=60)
    # A running trainer writes a heartbeat every few seconds; one older than this
    # is dead.
    heartbeat_timeout_seconds: float = 60.0
    # A trainer a replica cannot observe (started by a replica that died before recording
    # its process, pod or Ray job; or on another host) that has sent no heartbeat since
    # its launch is given this long from the launch before it is taken for lost and
    # relaunched: starting (imports on a busy host) may take longer than the heartbeat
    # timeout. Never less than the heartbeat timeout.
    trainer_start_timeout_seconds: float = Field(default=300.0, gt=0)
    # After a stop request: how long the trainer has to notice and exit on its own
    # before SIGTERM, and after SIGTERM before SIGKILL of its process group.
    stop_grace_seconds: float = 20.0
    kill_grace_seconds: float = 10.0
    # A job whose reconcile fails (a record that does not parse, a launcher's API error)
    # this many passes in a row, over at least this long, is failed (INTERNAL, naming the
    # cause); one whose status cannot even be written is set aside and tried again every
    # `reconcile_set_aside_seconds` (service/control/reconcile_faults.py). Store outages do not
    # count. Other jobs are never held up by it.
    reconcile_give_up_failures: int = Field(default=10, ge=1, le=100_000)
    reconcile_give_up_seconds: float = Field(default=300.0, ge=0)
    reconcile_set_aside_seconds: float = Field(default=600.0, gt=0)
    # A crashed trainer is relaunched at most this many times; preemptions (SIGTERM)
    # and lost nodes do not count, but no job gets more than `max_attempts` trainers.
    crash_retry_budget: int = Field(default=2, ge=0, le=100)
    # The GPUs the local launcher gives trainers (service/control/launch/gpus.py), as
    # CUDA_VISIBLE_DEVICES names them: "0,1,2,3", or UUIDs; "" for none. Unset: the
    # server's own CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists. A job with
    # resources.gpus N >= 1 takes N free ones of these (docs/gpus.md).
    gpus: str | None = None
    # Trainers without GPUs the local launcher runs at once (jobs with resources.gpus 0,
    # or every job on a host without GPUs); more wait QUEUED in creation order.
    local_slots: int = Field(default=1, ge=1, le=1024)
    # A job asking for resources.gpus N > 1 on a host with fewer GPUs runs as N CPU
    # processes under torchrun (gloo) instead of being refused at create: the
    # multi-process path without GPUs (docs/scaling.md).
    local_cpu_ranks: bool = False
    max_attempts: int = Field(default=10, ge=1, le=1000)
    # Passed to the trainer: how often it writes its heartbeat and looks for a stop
    # request.
    trainer_heartbeat_seconds: float = Field(default=2.0, gt=0)
    # Passed to the trainer (TUNEFORGE_STORE_OUTAGE_PATIENCE_SECONDS): how long each of
    # its store calls waits out an unreachable store before the attempt fails over it.
    trainer_store_outage_patience_seconds: float = Field(default=120.0, ge=0)
    # Passed to the trainer (TUNEFORGE_TORCH_COMPILE): compile the model with
    # torch.compile on a GPU. Off by default: compiling costs minutes before the first
    # step and pays off on long runs only.
    trainer_torch_compile: bool = False
    trainer_python: str | None = None
    # Spare trainer processes per replica that have already imported torch and
    # transformers (local launcher: service/control/launch/warm_pool.py); a job handed
    # to one starts about two seconds sooner. Each idle spare holds a few hundred MB of
    # memory. 0: every trainer starts cold.
    warm_trainers: int = Field(default=1, ge=0, le=64)
    # Store credentials per tenant for its trainers (service/control/trainer_credentials.py): a
    # JSON file {"<tenant>": {"access_key_id": ..., "secret_access_key": ...}}. Tenants
    # not in it (or no file) give their trainers the store's own credentials.
    trainer_credentials_file: Path | None = None
    # With authentication on and an external store, the service refuses to start when no
    # tenant has credentials of its own (above, or TUNEFORGE_KUBERNETES_TENANT_S3_SECRETS):
    # true says every tenant's trainers may share the service's on purpose.
    trainer_shared_credentials: bool = False

    # -- cluster launchers (service/control/launch/ray.py and kubernetes.py) ------------
    # Attempts a cluster launcher has submitted at once; the cluster queues the rest.
    cluster_slots: int = Field(default=100, ge=1, le=100_000)
    # The Ray dashboard's address (Jobs API), e.g. http://127.0.0.1:8265.
    ray_address: str | None = None
    # The Python on the Ray nodes that has tuneforge installed.
    ray_trainer_python: str = "python"
    ray_trainer_cpus: float = Field(default=1.0, gt=0, le=1024)
    # Send the S3 credentials with each Ray job. A Ray job's environment is readable on
    # the dashboard; by default the Ray nodes hold the credentials themselves.
    ray_forward_s3_credentials: bool = False
    # Run every job with several ranks as a Ray Train group, not only multi-node ones
    # (a one-node multi-GPU job otherwise runs torchrun inside one Ray job).
    ray_train: bool = False
    # Where a Ray Train group's workers (one a job node) go: STRICT_SPREAD puts each on
    # its own Ray node (the job waits until `nodes` nodes have room); SPREAD prefers
    # that but packs when it cannot (a one-node cluster, as in the tests); PACK fills
    # as few nodes as fit. Each worker's ranks use its own GPUs under any of them.
    ray_train_placement: Literal["STRICT_SPREAD", "SPREAD", "PACK"] = "STRICT_SPREAD"
    kubernetes_namespace: str = Field(
        default="tuneforge", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63
    )
    kubernetes_trainer_image: str = "tuneforge-trainer:0.1.0"
    # A Secret in that namespace with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    kubernetes_s3_secret: str = "tuneforge-s3"
    # SIGTERM to SIGKILL of a trainer pod: time to commit a preemption checkpoint.
    kubernetes_termination_grace_seconds: int = Field(default=300, ge=1, le=86_400)
    kubernetes_trainer_cpu: str = "2"
    kubernetes_trainer_memory: str = "8Gi"
    kubernetes_trainer_memory_limit: str | None = None
    kubernetes_scratch_size: str = "50Gi"
    kubernetes_trainer_service_account: str | None = None
    # Tenant -> a Secret in the trainers' namespace holding that tenant's store pair
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as JSON: {"acme": "tuneforge-s3-acme"}.
    # The Kubernetes counterpart of trainer_credentials_file; others get kubernetes_s3_secret.
    kubernetes_tenant_s3_secrets: dict[str, str] = Field(default_factory=dict)
    # A finished trainer Job (and its pods) is deleted this long after it ends, should no
    # reconciler have deleted it first (it does once it has seen the job end).
    kubernetes_job_ttl_seconds: int = Field(default=3600, ge=60, le=30 * 86_400)
    # How often torchrun may restart a multi-node group within one attempt: a pod replaced
    # after an eviction rejoins this way (so does a crashed rank: torchrun cannot tell).
    kubernetes_rendezvous_restarts: int = Field(default=3, ge=0, le=100)

    max_request_bytes: int = 1_048_576

    # -- observability (service/observability/, service/webhooks/delivery.py) -------------------
    # Log lines: `json` (one JSON object a line) or `console` (readable, coloured on a
    # terminal); unset: console when stderr is a terminal, else json.
    log_format: Literal["json", "console"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Hosts a job's notifications.webhookUrl may point at (exact host names or IPs);
    # empty: webhooks are off and a create that asks for one is refused.
    webhook_allowed_hosts: list[str] = []
    # HMAC-SHA256 key of the X-Tuneforge-Signature header; required with allowed hosts.
    webhook_secret: SecretStr | None = None
    # Tries per delivery (exponential backoff from webhook_retry_seconds) before
    # WEBHOOK_FAILED.
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_retry_seconds: float = Field(default=1.0, gt=0, le=600)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Hosts a job's integrations.mlflow.trackingUri may point at (exact host names or
    # IPs), e.g. TUNEFORGE_MLFLOW_ALLOWED_HOSTS='["mlflow.internal"]'; empty: a create
    # that asks for MLflow is refused. The trainer connects there from the cluster.
    mlflow_allowed_hosts: list[str] = []
    # The Bedrock-compatible face (service/faces/bedrock/): ARNs are built from these.
    bedrock_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,20}$")
    bedrock_account_id: str = Field(default="000000000000", pattern=r"^[0-9]{12}$")
    # SigV4 access key id -> secret key, or -> {"secret": ..., "tenant": ...} (a bare
    # secret acts for tenant "default"). Requests signed with any other key are refused.
    bedrock_access_keys: dict[str, SecretStr | BedrockAccessKey] = {}
    # Bearer tokens accepted in `Authorization: Bearer <token>` (AWS_BEARER_TOKEN_BEDROCK).
    bedrock_bearer_tokens: list[SecretStr] = []
    # Development only: accept any signature (or none). Refused unless REST is on loopback.
    bedrock_dev_mode_any_signature: bool = False
    # Requests per second per caller (access key) on the Bedrock face; 0: no limit.
    bedrock_requests_per_second: float = Field(default=0.0, ge=0)
    bedrock_burst: int = Field(default=20, ge=1)
    # GPUs each job created through the Bedrock face asks for (its resources.gpus:
    # Bedrock's API has no such field). Unset: 1 when the local launcher has GPUs, else 0
    # (0 trains on the CPU).
    bedrock_job_gpus: int | None = Field(default=None, ge=0, le=64)

    # -- authentication, tenancy and per-tenant limits (service/auth/) -----------------
    # The operator's key for /v1/admin/keys (`tuneforge keys create --tenant T`). Setting
    # it turns authentication on for every face; so does any API key in the store. With
    # neither, the service runs in development mode (no auth, tenant "default"), which
    # it allows only when REST and gRPC listen on loopback.
    admin_key: SecretStr | None = Field(default=None, min_length=16)
    # How long a replica trusts what it read of an API key: a revocation takes effect
    # on every replica within this many seconds.
    key_cache_seconds: float = Field(default=2.0, ge=0, le=30)
    # Per client address and replica: lookups of API key ids the replica has never seen
    # exist (a made-up key costs a store read); past it, 429 before any read.
    unknown_key_lookups_per_second: float = Field(default=2.0, gt=0)
    unknown_key_lookup_burst: int = Field(default=20, ge=1)
    # Defaults for every tenant; `tenant_limits` overrides them per tenant, e.g.
    # TUNEFORGE_TENANT_LIMITS='{"acme": {"max_running_jobs": 4}}'. 0: no limit.
    tenant_max_running_jobs: int = Field(default=0, ge=0)
    tenant_max_queued_jobs: int = Field(default=100, ge=0)
    tenant_requests_per_second: float = Field(default=0.0, ge=0)
    tenant_burst: int = Field(default=50, ge=1)
    tenant_limits: dict[str, TenantLimitOverrides] = {}
    # Grants: the buckets and folders job data, base models and outputs may live in,
    # each "bucket", "bucket/folder/" or "*" (any bucket but the state bucket, which no
    # job may ever name). `allowed_buckets`: for every tenant; unset means none with
    # authentication on, "*" with it off (development mode). `tenant_allowed_buckets`:
    # per tenant, replacing `allowed_buckets`. `tenant_home_bucket`: each tenant is also
    # granted its own folder there, s3://<bucket>/<tenant>/ (service/auth/limits.py).
    allowed_buckets: list[str] | None = None
    tenant_allowed_buckets: dict[str, list[str]] = {}
    tenant_home_bucket: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
    )

    # -- the trainer's resource limits (service/control/launch/local.py; 0: unlimited) ---------
    trainer_max_memory_bytes: int = Field(default=0, ge=0)
    trainer_max_processes: int = Field(default=0, ge=0)
    trainer_max_open_files: int = Field(default=4096, ge=0)
    # Resident memory of a trainer (with its ranks): a memory cgroup of its own under the
    # service's, where the host lets the service make one (service/control/launch/memory.py).
    trainer_memory_limit_bytes: int = Field(default=0, ge=0)
    # Dry runs (POST /v1/jobs with validateOnly, service/control/dry_run.py): a
    # subprocess of the API replica running the trainer's preflight, under the limits
    # above, killed past this many seconds (the caller is told to create the job, whose
    # VALIDATING stage has no such bound); at most this many at once per replica (more:
    # 429). The time estimate assumes each trainer rank sustains these FLOP/s.
    dry_run_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    dry_run_max_concurrent: int = Field(default=2, ge=1, le=64)
    dry_run_cpu_flops: float = Field(default=5e10, gt=0)
    dry_run_gpu_flops: float = Field(default=1e14, gt=0)

    @field_validator("gpus")
    @classmethod
    def _gpus_are_device_names(cls, value: str | None) -> str | None:
        if value is not None:
            gpu_names(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("base_models")
    @classmethod
    def _base_models_are_named_folders(cls, value: dict[str, str]) -> dict[str, str]:
        for name, uri in value.items():
            if not _MODEL_NAME.match(name):
                raise ValueError(
                    f"base model name {name!r}: letters, digits, '.', '_' and '-', 1-64"
                )
            location = parse_s3_uri(uri, field=f"base_models.{name}")
            if not location.key.endswith("/"):
                raise ValueError(f"base model {name!r}: {uri} must be a folder (end with '/')")
        return value

    @field_validator("allowed_buckets")
    @classmethod
    def _grants_are_buckets_or_folders(cls, value: list[str] | None) -> list[str] | None:
        for grant in value or []:
            _check_grant(grant)
        return value

    @field_validator("tenant_home_bucket")
    @classmethod
    def _home_bucket_is_a_bucket(cls, value: str | None) -> str | None:
        if value is not None:
            _check_grant(value)
        return value

    @field_validator("tenant_allowed_buckets")
    @classmethod
    def _tenant_grants_are_buckets_or_folders(
        cls, value: dict[str, list[str]]
    ) -> dict[str, list[str]]:
        for grants in value.values():
            for grant in grants:
                _check_grant(grant)
        return value

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> Settings:
        if self.webhook_allowed_hosts and self.webhook_secret is None:
            raise ValueError(
                "webhook_allowed_hosts is set but webhook_secret is not: deliveries are "
                "signed with it; set TUNEFORGE_WEBHOOK_SECRET"
            )
        return self

    @model_validator(mode="after")
    def _dev_mode_only_on_loopback(self) -> Settings:
        if self.bedrock_dev_mode_any_signature and not _is_loopback(self.rest_host):
            raise ValueError(
                "bedrock_dev_mode_any_signature is only allowed when rest_host is a loopback "
                f"address, not {self.rest_host!r}"
            )
        return self

    @property
    def embedded_store(self) -> bool:
        return self.s3_endpoint_url is None

    @property
    def endpoint_url(self) -> str:
        if self.s3_endpoint_url:
            return self.s3_endpoint_url
        return f"http://127.0.0.1:{self.embedded_s3_port}"


def _check_grant(grant: str) -> None:
    """A grant is "*", "bucket", "bucket/folder/" or "s3://bucket/folder/"."""
    if grant == "*":
        return
    try:
        parse_s3_uri(grant if grant.startswith("s3://") else f"s3://{grant}", field="grant")
    except InvalidArgument as error:
        raise ValueError(f"grant {grant!r}: {error.message}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
