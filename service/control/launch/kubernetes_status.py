"""What a Kubernetes Job and its Pods say about a trainer attempt: a pure mapping from the
API's plain dicts to `Observed` (service/control/launch/kubernetes.py asks the API and calls it).

An evicted or disrupted pod is a preemption (the trainer's PREEMPTED exit code), an
OOMKilled container is out of memory, whatever its exit code says; a Job that is gone is
dead with its exit unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobstore.documents import TrainerExit
from service.control.launch.base import Observed


def true_condition(resource: Mapping[str, Any], *types: str) -> Mapping[str, Any] | None:
    for condition in (resource.get("status") or {}).get("conditions") or []:
        if condition.get("type") in types and condition.get("status") == "True":
            return condition
    return None


def _pod_end(pod: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The exit code of a failed pod's trainer container and why, as far as known."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted" or true_condition(pod, "DisruptionTarget"):
        why = status.get("message") or status.get("reason") or "disrupted"
        return int(TrainerExit.PREEMPTED), f"preempted (the pod was evicted: {why})"
    for container in status.get("containerStatuses") or []:
        if container.get("name") != "trainer":
            continue
        terminated = (container.get("state") or {}).get("terminated") or (
            container.get("lastState") or {}
        ).get("terminated")
        if not terminated:
            continue
        code = terminated.get("exitCode")
        reason = terminated.get("reason")
        if reason == "OOMKilled":
            return code, "out of memory (OOMKilled: the container passed its memory limit)"
        return code, reason
    return None, status.get("reason")


def observed_from_status(job: Mapping[str, Any] | None, pods: list[Mapping[str, Any]]) -> Observed:
    """What a Job (None: not found) and its pods say about an attempt.

    Not finished (pending, scheduling, running, a pod being replaced): alive. Complete:
    exited 0. Failed: the exit code and reason of its last failed pod; an evicted or
    disrupted pod reads as preempted (exit 143). A Job that is gone: dead, exit unknown.
    """
    if job is None:
        return Observed(alive=False, reason="its Kubernetes Job is gone (deleted)")
    if true_condition(job, "Complete", "SuccessCriteriaMet"):
        return Observed(alive=False, exit_code=int(TrainerExit.OK))
    failed = true_condition(job, "Failed", "FailureTarget")
    if failed is None:
        return Observed(alive=True)
    job_reason = failed.get("reason") or "Failed"
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed_pods.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    if not failed_pods:
        return Observed(alive=False, reason=f"its Kubernetes Job failed ({job_reason})")
    code, pod_reason = _pod_end(failed_pods[-1])
    reason = f"{pod_reason}; " if pod_reason else ""
    return Observed(alive=False, exit_code=code, reason=f"{reason}Job {job_reason}")
