"""The health gate in front of every Deployment the operator applies.

For each component, judge the rollout of the version now live (from the pods
of that version only), let `policies.rollout.decide_version` pick the version
to run, and when that is the last known-good one, take its exact pod
template from the ReplicaSet Kubernetes retained for it.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any, Protocol

from blogsite_operator import models
from blogsite_operator.policies.readiness import CONDITION_FALSE, CONDITION_TRUE, Verdict
from blogsite_operator.policies.rollout import (
    HEALTHY,
    Decision,
    Health,
    RolloutThresholds,
    VersionMemory,
    decide_version,
    is_rolled_out,
    ready_clock_start,
    rollout_health,
)
from blogsite_operator.render.site import (
    NOT_VERSIONED_ANNOTATIONS,
    VERSION_LABEL,
    Component,
    SiteRef,
    label_selector,
    selector_labels,
    version_of,
)
from blogsite_operator.timestamps import format_time

RETRY_ANNOTATION = "blog.daedalus.dev/retry-rollout"
# The failed version, recorded on the Deployment by the very apply that
# reverts it: a status write that fails afterwards (a 409, a crash, a lost
# Lease) cannot make the next pass forget it and apply the bad version again.
FAILED_VERSION_ANNOTATION = "blog.daedalus.dev/failed-version"
FAILED_REASON_ANNOTATION = "blog.daedalus.dev/failed-reason"
# What status.components.<component> remembers (rather than reports).
ROLLOUT_MEMORY_FIELDS = frozenset(
    {"version", "lastGoodVersion", "failedVersion", "failedReason", "failedAt"}
)
# Pod events drive most checks; a pod that never becomes Ready produces none,
# so a pass in flight is repeated when its oldest unready pod reaches the
# ready timeout, and at least this often.
RECHECK_SECONDS = 30.0


class RolloutApi(Protocol):
    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_objects(
        self, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]: ...


@dataclass
class GateResult:
    objects: list[dict[str, Any]]
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # per component, for status
    condition: Verdict = field(
        default_factory=lambda: Verdict(CONDITION_TRUE, "Healthy", "every component is healthy")
    )
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    retry_consumed: str | None = None
    reverts: list[tuple[str, str]] = field(default_factory=list)  # (component, why), for metrics


def _remembered_memory(entry: dict[str, Any], live: dict[str, Any] | None) -> VersionMemory:
    """The rollout memory from status, with the failure the live Deployment
    records (written with the revert, so never behind the status)."""
    annotations = ((live or {}).get("metadata") or {}).get("annotations") or {}
    if FAILED_VERSION_ANNOTATION in annotations:
        failed = annotations[FAILED_VERSION_ANNOTATION] or None
        reason = annotations.get(FAILED_REASON_ANNOTATION) or None
    else:  # a Deployment applied before the annotation existed
        failed, reason = entry.get("failedVersion"), entry.get("failedReason")
    return VersionMemory(
        last_good=entry.get("lastGoodVersion"), failed=failed, failed_reason=reason
    )


def _with_failure_recorded(deployment: dict[str, Any], memory: VersionMemory) -> dict[str, Any]:
    metadata = {**deployment["metadata"]}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        FAILED_VERSION_ANNOTATION: memory.failed or "",
        FAILED_REASON_ANNOTATION: memory.failed_reason or "",
    }
    return {**deployment, "metadata": metadata}


def _pods_of(
    api: RolloutApi, ref: SiteRef, component: Component, live: dict[str, Any]
) -> list[dict[str, Any]]:
    """The pods of the version the Deployment runs now (from the watch cache)."""
    labels = {**selector_labels(ref.name, component)}
    version = version_of(live)
    if version is not None:
        labels[VERSION_LABEL] = version
    return [
        p
        for p in api.list_objects("Pod", ref.namespace, label_selector(labels))
        if not p["metadata"].get("deletionTimestamp")
    ]


def _judge(
    api: RolloutApi,
    *,
    ref: SiteRef,
    component: Component,
    live: dict[str, Any] | None,
    thresholds: RolloutThresholds,
    now: datetime.datetime,
) -> tuple[Health | None, list[dict[str, Any]]]:
    """The live rollout's health, and the pods it was judged by (none when done)."""
    if live is None:
        return None, []
    if is_rolled_out(live):
        return HEALTHY, []
    pods = _pods_of(api, ref, component, live)
    return rollout_health(live, pods, thresholds, now), pods


def _until_ready_timeout(
    pods: list[dict[str, Any]], thresholds: RolloutThresholds, now: datetime.datetime
) -> float:
    """Seconds until the oldest of these pods reaches the ready timeout."""
    wait = RECHECK_SECONDS
    for pod in pods:
        started = ready_clock_start(pod)
        if started is not None:
            due = (started - now).total_seconds() + thresholds.ready_timeout_seconds + 1
            wait = min(wait, max(1.0, due))
    return wait


def _template_of_version(
    api: RolloutApi, ref: SiteRef, component: Component, version: str, desired: dict[str, Any]
) -> dict[str, Any] | None:
    """The pod template of `version`, from a ReplicaSet that ran it, with the
    desired template's certificate and upstream addresses: a revert never
    brings an old certificate or a dead address back."""
    labels = {**selector_labels(ref.name, component), VERSION_LABEL: version}
    for replica_set in api.list_objects("ReplicaSet", ref.namespace, label_selector(labels)):
        template = copy.deepcopy(replica_set["spec"]["template"])
        metadata = template["metadata"]
        metadata.get("labels", {}).pop("pod-template-hash", None)
        metadata.pop("creationTimestamp", None)
        annotations = {**(metadata.get("annotations") or {})}
        today = desired["spec"]["template"]["metadata"].get("annotations") or {}
        for not_versioned in NOT_VERSIONED_ANNOTATIONS:
            annotations.pop(not_versioned, None)
            if not_versioned in today:
                annotations[not_versioned] = today[not_versioned]
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        return dict(template)
    return None


def gate_deployments(
    api: RolloutApi,
    *,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    objects: list[dict[str, Any]],
    previous_status: dict[str, Any],
    retry_token: str | None,
    now: datetime.datetime,
) -> GateResult:
    """Replace each desired Deployment's template by the version it should run."""
    thresholds = RolloutThresholds(
        max_restarts=spec.rollout.max_restarts,
        ready_timeout_seconds=spec.rollout.ready_timeout_seconds,
    )
    retry = retry_token is not None and retry_token != previous_status.get("rolloutRetry")
    result = GateResult(objects=[], retry_consumed=retry_token if retry else None)
    problems: list[Verdict] = []
    progressing: list[str] = []
    previous_components = previous_status.get("components") or {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            result.objects.append(obj)
            continue
        component = Component(obj["metadata"]["labels"]["app.kubernetes.io/component"])
        desired = version_of(obj)
        assert desired is not None  # noqa: S101 - render_site stamps every Deployment
        live = api.get_child("Deployment", ref.namespace, obj["metadata"]["name"])
        health, pods = _judge(
            api, ref=ref, component=component, live=live, thresholds=thresholds, now=now
        )
        memory = _remembered_memory(previous_components.get(component.value) or {}, live)
        decision = decide_version(
            component=component.value,
            desired=desired,
            live=version_of(live),
            health=health,
            memory=memory,
            auto_revert=spec.rollout.auto_revert,
            retry=retry,
        )
        chosen = obj
        if decision.apply_version != desired:
            template = _template_of_version(api, ref, component, decision.apply_version, obj)
            if template is None:
                problems.append(
                    Verdict(
                        CONDITION_FALSE,
                        "KnownGoodUnavailable",
                        f"{component.value}: no retained ReplicaSet holds the last good version "
                        f"{decision.apply_version}; applying the spec as it is",
                    )
                )
            else:
                chosen = copy.deepcopy(obj)
                chosen["spec"]["template"] = template
        result.objects.append(_with_failure_recorded(chosen, decision.memory))
        result.memory[component.value] = _remembered(
            version_of(chosen), decision.memory, previous_components.get(component.value), now
        )
        event = decision.event or _unrecorded_failure(
            decision, previous_components.get(component.value) or {}
        )
        if event is not None:
            result.events.append(event)
            if event[1] == "RolledBack":
                why = (decision.memory.failed_reason or "Unknown").split(":", 1)[0]
                result.reverts.append((component.value, why))
        status, reason, message = decision.condition
        if status != CONDITION_TRUE:
            problems.append(Verdict(status, reason, message))
        elif reason == "Progressing":
            progressing.append(message)
        if health is not None and health.state == "progressing":
            wait = _until_ready_timeout(pods, thresholds, now)
            result.requeue_after = min(result.requeue_after or wait, wait)
    if problems:
        order = ["RolledBack", "RolloutFailed", "Degraded", "KnownGoodUnavailable"]
        first = min(problems, key=lambda v: order.index(v.reason) if v.reason in order else 99)
        result.condition = Verdict(
            CONDITION_FALSE, first.reason, "; ".join(p.message for p in problems)
        )
    elif progressing:
        result.condition = Verdict(CONDITION_TRUE, "Progressing", "; ".join(progressing))
    return result


def _unrecorded_failure(
    decision: Decision, recorded: dict[str, Any]
) -> tuple[str, str, str] | None:
    """The Event of a failure the Deployment records but the status does not:
    its first pass failed after the revert (a 409, a crash), and the Event
    was never posted."""
    status, reason, message = decision.condition
    failed = decision.memory.failed
    if failed is None or failed == recorded.get("failedVersion"):
        return None
    if status == CONDITION_TRUE or reason not in ("RolledBack", "RolloutFailed"):
        return None
    return ("Warning", reason, message)


def _remembered(
    version: str | None,
    memory: VersionMemory,
    previous: dict[str, Any] | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The component's rollout memory as status shows it; failedAt kept per failure."""
    failed_at = None
    if memory.failed is not None:
        same_failure = (previous or {}).get("failedVersion") == memory.failed
        failed_at = (previous or {}).get("failedAt") if same_failure else format_time(now)
    return {
        "version": version,
        "lastGoodVersion": memory.last_good,
        "failedVersion": memory.failed,
        "failedReason": memory.failed_reason,
        "failedAt": failed_at,
    }
