"""Is a rollout failing, and which version should the Deployment run?

Kubernetes keeps old pods serving while new ones fail readiness
(`maxUnavailable: 0`) but never reverts. These two pure functions add the
revert, Argo-Rollouts style: a version is the hash of the rendered pod
template; the status remembers the last version that became fully available
and the last one that failed. While the spec still renders to the failed
version, the last good one stays in place; a new spec (a new hash) or a retry
request tries again. That memory is what stops flip-flopping.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from blogsite_operator.timestamps import parse_time

# Waiting reasons that fail a pod at once. CrashLoopBackOff is not among
# them: a real kubelet shows it during the back-off after even one crash (and
# `terminated` for most of each back-off), so crashes are judged by
# restartCount against `maxRestarts`, which then means what it says.
FAILING_WAIT_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class RolloutThresholds:
    max_restarts: int
    ready_timeout_seconds: int


@dataclass(frozen=True)
class Health:
    """The verdict on the version a Deployment is rolling out."""

    state: str  # "healthy" | "progressing" | "failed"
    reason: str = ""
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.state == "failed"


HEALTHY = Health("healthy")


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def is_ready(pod: dict[str, Any]) -> bool:
    return _condition(pod, "Ready").get("status") == "True"


def is_unschedulable(pod: dict[str, Any]) -> bool:
    """Waiting for room on a node: nothing is known about the version yet."""
    scheduled = _condition(pod, "PodScheduled")
    return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"


def ready_clock_start(pod: dict[str, Any]) -> datetime.datetime | None:
    """Where the ready timeout starts: when the pod got a node, if known (a
    pod that waited for room had no chance to become Ready), else its creation."""
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "True" and scheduled.get("lastTransitionTime"):
        return parse_time(scheduled["lastTransitionTime"])
    return parse_time(pod["metadata"].get("creationTimestamp"))


def pod_failure(
    pod: dict[str, Any], thresholds: RolloutThresholds, now: datetime.datetime
) -> str | None:
    """Why this pod of the new version counts as failed, or None."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            return f"pod {name}: container {container.get('name')} {waiting['reason']}"
        restarts = int(container.get("restartCount", 0))
        if restarts >= thresholds.max_restarts:
            return (
                f"pod {name}: container {container.get('name')} restarted {restarts} times "
                f"(limit {thresholds.max_restarts})"
            )
    if is_unschedulable(pod):
        return None
    started = ready_clock_start(pod)
    waited = (now - started).total_seconds() if started is not None else 0.0
    if waited > thresholds.ready_timeout_seconds and not is_ready(pod):
        # No elapsed time in the message: it lands in status, which must not
        # change on every pass.
        return f"pod {name}: not Ready within {thresholds.ready_timeout_seconds}s of getting a node"
    return None


def rollout_health(
    deployment: dict[str, Any],
    new_pods: list[dict[str, Any]],
    thresholds: RolloutThresholds,
    now: datetime.datetime,
) -> Health:
    """Judge the rollout by the pods of the new ReplicaSet only."""
    failures = [reason for pod in new_pods if (reason := pod_failure(pod, thresholds, now))]
    if failures:
        return Health("failed", "PodsFailing", "; ".join(sorted(failures)[:5]))
    if any(is_unschedulable(pod) for pod in new_pods):
        # The Deployment's deadline passes too while pods wait for a node; a
        # full cluster is not the version's fault: it waits, as Kubernetes does.
        return Health("progressing")
    deadline = _progress_deadline_exceeded(deployment)
    if deadline is not None:
        return Health("failed", "ProgressDeadlineExceeded", deadline)
    return HEALTHY if is_rolled_out(deployment) else Health("progressing")


def _progress_deadline_exceeded(deployment: dict[str, Any]) -> str | None:
    """The Deployment controller's message when its progress deadline passed.

    Only from a status that has seen the latest template: right after an
    apply the condition still speaks of the version before it.
    """
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("status") == "False"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return str(condition.get("message", ""))
    return None


def is_rolled_out(deployment: dict[str, Any]) -> bool:
    """Every replica runs the latest template and is available; old ones are gone.

    Read from the Deployment alone: when it holds, no pod needs reading.
    """
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    return (
        status.get("observedGeneration", 0) >= generation
        and int(status.get("updatedReplicas", 0)) >= replicas
        and int(status.get("availableReplicas", 0)) >= replicas
        and int(status.get("replicas", 0)) <= replicas
        and _progress_deadline_exceeded(deployment) is None
    )


@dataclass(frozen=True)
class VersionMemory:
    """What status.components.<c> remembers between passes (and restarts)."""

    last_good: str | None = None
    failed: str | None = None
    failed_reason: str | None = None


@dataclass(frozen=True)
class Decision:
    """Which version to put in the Deployment, and what to tell the user."""

    apply_version: str  # the hash whose template goes into the Deployment
    memory: VersionMemory
    event: tuple[str, str, str] | None = None  # (type, reason, message)
    condition: tuple[str, str, str] = ("True", "Healthy", "")  # RolloutHealthy


def decide_version(
    *,
    component: str,
    desired: str,
    live: str | None,
    health: Health | None,
    memory: VersionMemory,
    auto_revert: bool,
    retry: bool,
) -> Decision:
    """The version to run, given the desired one, the live one and its health.

    `live` is the version in the Deployment now and `health` the verdict on
    its rollout (None when there is no Deployment yet). `retry` is a new retry
    request from the user: forget that `desired` failed and try it again.
    """
    event: tuple[str, str, str] | None = None
    if retry and memory.failed == desired:
        memory = VersionMemory(last_good=memory.last_good)

    newly_failed = False
    if live is not None and health is not None:
        if health.state == "healthy" and (memory.last_good != live or memory.failed == live):
            if memory.last_good is not None and memory.last_good != live:
                # A new version replaced a good one. A site's first version
                # gets no Event of its own: the site's Ready Event says it.
                event = ("Normal", "RolloutHealthy", f"{component}: version {live} is available")
            keep_failed = memory.failed != live
            memory = VersionMemory(
                last_good=live,
                failed=memory.failed if keep_failed else None,
                failed_reason=memory.failed_reason if keep_failed else None,
            )
        elif health.failed and live not in (memory.last_good, memory.failed):
            memory = VersionMemory(memory.last_good, live, f"{health.reason}: {health.message}")
            newly_failed = True

    if desired == memory.failed:
        if auto_revert and memory.last_good is not None:
            message = (
                f"{component}: version {desired} failed ({memory.failed_reason}); running the "
                f"last good version {memory.last_good} until the spec changes or a retry"
            )
            if newly_failed:
                event = ("Warning", "RolledBack", message)
            return Decision(memory.last_good, memory, event, ("False", "RolledBack", message))
        why = "automatic revert is off" if not auto_revert else "there is no known-good version"
        message = f"{component}: version {desired} failed ({memory.failed_reason}); {why}"
        if newly_failed:
            event = ("Warning", "RolloutFailed", message)
        return Decision(desired, memory, event, ("False", "RolloutFailed", message))

    if health is not None and health.failed and live == memory.last_good:
        message = f"{component}: the known-good version {live} is failing: {health.message}"
        return Decision(desired, memory, event, ("False", "Degraded", message))
    if health is not None and health.state == "progressing":
        return Decision(
            desired, memory, event, ("True", "Progressing", f"{component}: rolling out {desired}")
        )
    return Decision(desired, memory, event, ("True", "Healthy", f"{component}: {desired}"))
