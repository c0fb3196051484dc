"""The Ray launcher: each trainer attempt is one job on a Ray cluster, through the Ray
Jobs API (`ray.job_submission.JobSubmissionClient`, the dashboard's HTTP address).

Invariants:

- an attempt's `submission_id` is `tuneforge-<job-id>-a<attempt>`, built from a
  validated job id only: a submit retried after a lost answer finds the job it already
  created ("already exists" is success), and a relaunch is a new attempt, a new id;
- the entrypoint is the same `python -m trainer --job-id <id>` the local launcher runs,
  with the same environment, in a fresh temporary working directory on the Ray node;
  its output goes to `trainer.log` there, which the trainer uploads as the job's log;
  a job with `resources.gpus` > 1 runs torchrun (`python -m trainer.torchrun`, one
  rank per GPU, standalone rendezvous) on that one node;
- a job with `resources.nodes` > 1 (or a one-node job with several GPUs, with
  `ray_train` set) runs as a Ray Train group instead (`python -m trainer.ray_train`):
  one Ray worker a node, asking for that node's `gpus` GPUs and `cpus_per_trainer`
  CPUs a rank, which runs one rank a GPU (one on CPUs) as torchrun's agent would; the
  workers are placed by `placement` (STRICT_SPREAD by default: each on its own Ray
  node, so a job spans the `nodes` machines it asked for); the driver asks for nothing
  (it only waits), and exits with the group's code by torchrun's rules, so the
  reconciler reads it as any other;
- S3 credentials are not sent with the job unless `forward_credentials` is set: a Ray
  job's runtime environment is readable by anyone who can read the dashboard, so by
  default the Ray nodes hold the credentials themselves (their environment, an
  instance profile);
- a one-node entrypoint asks Ray for the job's GPUs (`entrypoint_num_gpus`) and CPUs;
  a job the cluster cannot fit yet stays PENDING (or, under Ray Train, RUNNING while
  its workers wait for resources), which reads as alive (queued by Ray);
- a stop (SIGTERM or SIGKILL) is Ray's `stop_job`: SIGTERM to the trainer (to the Ray
  Train driver, which passes it to every rank), SIGKILL after `stop_grace_seconds`
  (RAY_JOB_STOP_WAIT_TIME_S of the job's supervisor).
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jobstore.documents import JOB_ID_PATTERN, JobResources, JobSpec, LaunchRecord, TrainerExit
from service.control.launch.base import Observed, Started
from service.control.launch.gpus import DeviceLease

log = logging.getLogger(__name__)

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SUBMISSION_ID = re.compile(r"^tuneforge-[0-9a-z]{16}-a[0-9]{1,4}$")


def submission_id(job_id: str, attempt: int) -> str:
    """The Ray submission id of one attempt."""
    if not re.match(JOB_ID_PATTERN, job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    if not 1 <= attempt <= 9999:
        raise ValueError(f"attempt out of range: {attempt}")
    return f"tuneforge-{job_id}-a{attempt}"


# Ray's placement group strategies that make sense for a Ray Train group of nodes.
RayPlacement = Literal["STRICT_SPREAD", "SPREAD", "PACK"]


@dataclass(frozen=True)
class RayPlan:
    """How one attempt runs on Ray: its nodes (one Ray Train worker each) and GPUs a
    node, and whether as a Ray Train group."""

    workers: int
    gpus_per_worker: int
    ray_train: bool

    @property
    def ranks_per_worker(self) -> int:
        """One rank a GPU, as torchrun's `--nproc-per-node`; one on CPUs."""
        return max(self.gpus_per_worker, 1)

    @property
    def ranks(self) -> int:
        return self.workers * self.ranks_per_worker

    @classmethod
    def of(cls, resources: JobResources, *, ray_train: bool = False) -> RayPlan:
        """One worker a node with the node's GPUs; Ray Train for several nodes, or for
        one node with several GPUs when `ray_train` forces it (instead of torchrun)."""
        group = resources.nodes > 1 or (ray_train and resources.gpus > 1)
        return cls(resources.nodes, resources.gpus, group)


def entrypoint(
    python: str,
    job_id: str,
    attempt: int,
    *,
    processes: int = 1,
    plan: RayPlan | None = None,
    cpus_per_rank: float = 1.0,
    placement: RayPlacement = "STRICT_SPREAD",
) -> str:
    """The shell command Ray runs: a fresh working directory, then the trainer in it.

    `exec` makes the trainer (or torchrun's agent, or the Ray Train driver, each of
    which passes the signal to every rank) the process Ray signals on a stop, so it gets
    the SIGTERM itself and can commit a checkpoint.
    """
    name = submission_id(job_id, attempt)
    program = "-m trainer"
    if plan is not None and plan.ray_train:
        # Each rank gets its own directory on its own node (trainer/ray_train.py).
        return (
            f'work="$(mktemp -d "${{TMPDIR:-/tmp}}/{name}-XXXXXX")" && cd "$work" && '
            f"exec {shlex.quote(python)} -m trainer.ray_train --job-id {job_id} "
            f"--name {name} --workers {int(plan.workers)} "
            f"--gpus-per-worker {int(plan.gpus_per_worker)} "
            f"--cpus-per-worker {float(cpus_per_rank * plan.ranks_per_worker)} "
            f"--placement {shlex.quote(placement)}"
        )
    if processes > 1:
        program = f"-m trainer.torchrun --nproc-per-node {int(processes)} --standalone -m trainer"
    return (
        f'work="$(mktemp -d "${{TMPDIR:-/tmp}}/{name}-XXXXXX")" && cd "$work" && '
        f'export HOME="$work" HF_HOME="$work/hf-home" TUNEFORGE_LOG_FILE="$work/trainer.log" '
        f"&& exec {shlex.quote(python)} {program} --job-id {job_id} "
        f'>>"$work/trainer.log" 2>&1'
    )


def observed_from_job_info(info: Mapping[str, Any] | None) -> Observed:
    """What Ray's job info (None: Ray has no such job) says about an attempt.

    PENDING (waiting for resources or its runtime environment) and RUNNING: alive.
    SUCCEEDED, FAILED: exited, with the trainer's exit code where Ray recorded one.
    STOPPED: stopped through Ray; without an exit code it reads as preempted (143).
    """
    if info is None:
        return Observed(alive=False, reason="Ray has no record of the job")
    status = str(info.get("status") or "")
    status = status.rsplit(".", 1)[-1]  # "JobStatus.RUNNING" or "RUNNING"
    code = info.get("driver_exit_code")
    message = (info.get("message") or "").strip().splitlines()
    reason = message[0][:300] if message else None
    if status in ("PENDING", "RUNNING"):
        return Observed(alive=True)
    if status == "SUCCEEDED":
        return Observed(alive=False, exit_code=int(code) if code is not None else 0)
    if status == "STOPPED":
        stopped = int(code) if code is not None else int(TrainerExit.PREEMPTED)
        return Observed(alive=False, exit_code=stopped, reason="stopped through Ray")
    if status == "FAILED":
        return Observed(
            alive=False,
            exit_code=int(code) if code is not None else None,
            reason=reason or str(info.get("error_type") or "failed"),
        )
    return Observed(alive=None, reason=f"unknown Ray job status {status!r}")


class RayLauncher:
    """Submits, observes and stops one Ray job per trainer attempt."""

    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        python: str = "python",
        cpus_per_trainer: float = 1.0,
        forward_credentials: bool = False,
        stop_grace_seconds: float = 30.0,
        ray_train: bool = False,
        placement: RayPlacement = "STRICT_SPREAD",
    ) -> None:
        self.address = address
        self.python = python
        self.cpus_per_trainer = cpus_per_trainer
        self.forward_credentials = forward_credentials
        self.stop_grace_seconds = stop_grace_seconds
        self.ray_train = ray_train
        self.placement = placement
        self._client: Any | None = None

    @property
    def client(self) -> Any:
        """The Jobs API client, connected on first use (so a Ray cluster that is down
        when the API starts delays trainers, not the API)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address)
        return self._client

    def runtime_environment(self, attempt: int, environment: Mapping[str, str]) -> dict[str, Any]:
        variables = {
            key: value
            for key, value in environment.items()
            if self.forward_credentials or key not in CREDENTIAL_VARIABLES
        }
        variables.update(
            {
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "TUNEFORGE_ATTEMPT": str(attempt),
                # Read by the job's supervisor: SIGKILL this long after a stop's SIGTERM.
                "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, round(self.stop_grace_seconds))),
            }
        )
        return {"env_vars": variables}

    def _job_info(self, name: str) -> Mapping[str, Any] | None:
        try:
            info = self.client.get_job_info(name)
        except RuntimeError as error:
            # The SDK raises RuntimeError with the HTTP status in its message.
            if "404" in str(error) or "does not exist" in str(error):
                return None
            raise
        return {
            "status": str(info.status),
            "driver_exit_code": getattr(info, "driver_exit_code", None),
            "message": info.message,
            "error_type": getattr(info, "error_type", None),
        }

    def start(
        self,
        spec: JobSpec,
        attempt: int,
        environment: dict[str, str],
        devices: DeviceLease | None = None,  # the cluster places GPUs: never given here
    ) -> Started:
        name = submission_id(spec.jobId, attempt)
        plan = RayPlan.of(spec.resources, ray_train=self.ray_train)
        if plan.ray_train:
            # The driver only waits; each rank's worker asks for its own GPU and CPUs.
            requests: dict[str, Any] = {"entrypoint_num_cpus": 0}
        else:
            requests = {
                "entrypoint_num_cpus": self.cpus_per_trainer,
                "entrypoint_num_gpus": spec.resources.gpus or None,
            }
        try:
            self.client.submit_job(
                entrypoint=entrypoint(
                    self.python,
                    spec.jobId,
                    attempt,
                    processes=spec.resources.gpus,
                    plan=plan,
                    cpus_per_rank=self.cpus_per_trainer,
                    placement=self.placement,
                ),
                submission_id=name,
                runtime_env=self.runtime_environment(attempt, environment),
                metadata={"tuneforge_job_id": spec.jobId, "tenant": spec.tenant[:64]},
                **requests,
            )
        except RuntimeError:
            # Ray answers a duplicate submission id with an error (HTTP 500 whose text
            # varies by release); if the job is there, an earlier try created it.
            if self._job_info(name) is None:
                raise
            log.info("Ray job %s exists already", name)
        log.info("submitted Ray job %s for job %s attempt %d", name, spec.jobId, attempt)
        return Started(name, None, None)

    def observe(self, launch: LaunchRecord) -> Observed:
        if not _SUBMISSION_ID.match(launch.host):
            return Observed(alive=None)
        return observed_from_job_info(self._job_info(launch.host))

    def signal(self, launch: LaunchRecord, which: signal.Signals) -> None:
        """Ray has one stop: SIGTERM to the trainer, SIGKILL after the stop grace."""
        if not _SUBMISSION_ID.match(launch.host):
            return
        try:
            stopped = self.client.stop_job(launch.host)
        except RuntimeError as error:
            if "404" in str(error) or "does not exist" in str(error):
                return
            raise
        log.info("asked Ray to stop job %s (%s): %s", launch.host, which.name, stopped)

    def local_log(self, job_id: str, attempt: int) -> None:
        return None  # the trainer uploads its own log

    def release(self, job_id: str) -> None:
        return None  # Ray keeps a finished job's record under its own retention

    def shutdown(self, grace_seconds: float) -> None:
        return None  # Ray jobs outlive API replicas by design
