"""The health gate in front of every Deployment the operator applies.

For each component, judge the rollout of the version now live (from the pods
of that version only), let `policies.rollout.decide_version` pick the version
to run, and when that is the last known-good one, take its exact pod
template from the ReplicaSet Kubernetes retained for it.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blogsite_operator import models
from blogsite_operator.policies.canary_steps import (
    COMMANDS,
    CanaryDecision,
    CanaryInputs,
    CanaryState,
    Reading,
    decide_canary,
    state_from_dict,
    state_to_dict,
)
from blogsite_operator.policies.readiness import CONDITION_FALSE, CONDITION_TRUE, Verdict
from blogsite_operator.policies.rollout import (
    HEALTHY,
    Decision,
    Health,
    RolloutThresholds,
    VersionMemory,
    decide_version,
    is_ready,
    is_rolled_out,
    ready_clock_start,
    rollout_health,
)
from blogsite_operator.render.site import (
    NOT_VERSIONED_ANNOTATIONS,
    VERSION_LABEL,
    Component,
    SiteRef,
    canary_template,
    label_selector,
    selector_labels,
    version_of,
)
from blogsite_operator.timestamps import format_time

RETRY_ANNOTATION = "blog.daedalus.dev/retry-rollout"
# "<promote|abort|pause|resume> <time>", from kubectl blogsite; acted on once.
COMMAND_ANNOTATION = "blog.daedalus.dev/rollout-command"
# The canary rollout's state (policies/canary_steps.py), on the canary
# Deployment, written by the apply that acts on it.
CANARY_STATE_ANNOTATION = "blog.daedalus.dev/canary-state"
CANARY_REASON = "Canary"
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
    command_consumed: str | None = None
    canary_weight: int | None = None  # the canary's share for the frontends (None: no canary)
    pool_versions: dict[str, str] = field(default_factory=dict)  # pool -> version, for metrics
    canary_status: dict[str, Any] | None = None


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
    """The pod template of `version`, from a ReplicaSet that ran it."""
    labels = {**selector_labels(ref.name, component), VERSION_LABEL: version}
    replica_sets = api.list_objects("ReplicaSet", ref.namespace, label_selector(labels))
    return _template_like(replica_sets[0]["spec"]["template"], desired) if replica_sets else None


def _template_like(live_template: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A pod template that ran, with the desired template's certificate and
    upstream addresses: a revert never brings an old certificate or a dead
    address back."""
    template = copy.deepcopy(live_template)
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


def gate_deployments(
    api: RolloutApi,
    *,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    objects: list[dict[str, Any]],
    previous_status: dict[str, Any],
    retry_token: str | None,
    now: datetime.datetime,
    command_token: str | None = None,
    read_traffic: Callable[[SiteRef], Reading | None] | None = None,
) -> GateResult:
    """Replace each desired Deployment's template by the version it should run."""
    thresholds = RolloutThresholds(
        max_restarts=spec.rollout.max_restarts,
        ready_timeout_seconds=spec.rollout.ready_timeout_seconds,
    )
    retry = retry_token is not None and retry_token != previous_status.get("rolloutRetry")
    result = GateResult(objects=[], retry_consumed=retry_token if retry else None)
    command = canary_command(command_token, previous_status.get("rolloutCommand"))
    result.command_consumed = command_token if command is not None else None
    gate = _Gate(api, ref, spec, thresholds, previous_status, retry, now, result)
    canary_object = next((o for o in objects if _component(o) == Component.CANARY), None)
    for obj in objects:
        if obj["kind"] != "Deployment":
            result.objects.append(obj)
        elif (
            _component(obj) == Component.DAEDALUS
            and canary_object is not None
            and uses_canary(spec)
        ):
            gate.daedalus_with_canary(obj, canary_object, command, read_traffic)
        elif _component(obj) == Component.CANARY:
            if not uses_canary(spec):
                gate.canary_at_rest(obj)
        else:
            gate.component(obj, version_of(obj))
    if gate.problems:
        order = ["RolledBack", "RolloutFailed", "Degraded", "KnownGoodUnavailable"]
        problems = gate.problems
        first = min(problems, key=lambda v: order.index(v.reason) if v.reason in order else 99)
        result.condition = Verdict(
            CONDITION_FALSE, first.reason, "; ".join(p.message for p in problems)
        )
    elif gate.canary_message:
        result.condition = Verdict(CONDITION_TRUE, CANARY_REASON, gate.canary_message)
    elif gate.progressing:
        result.condition = Verdict(CONDITION_TRUE, "Progressing", "; ".join(gate.progressing))
    return result


def _component(obj: dict[str, Any]) -> Component:
    return Component(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def uses_canary(spec: models.BlogSiteSpec) -> bool:
    """Canary steps need two versions running at once: not with a volume only
    one pod may mount."""
    volume = spec.daedalus.persistent_volume
    return spec.rollout.strategy == models.RolloutStrategy.CANARY and (
        volume is None or volume.access_mode != models.VolumeAccessMode.READ_WRITE_ONCE_POD
    )


def canary_command(token: str | None, consumed: str | None) -> str | None:
    """The command of a new `kubectl blogsite promote|abort|pause|resume`."""
    if token is None or token == consumed:
        return None
    command = token.split(" ", 1)[0]
    return command if command in COMMANDS else None


class _Gate:
    """One pass of the gate over a site's Deployments, collecting its verdicts."""

    def __init__(  # noqa: PLR0917 - one pass's context
        self,
        api: RolloutApi,
        ref: SiteRef,
        spec: models.BlogSiteSpec,
        thresholds: RolloutThresholds,
        previous_status: dict[str, Any],
        retry: bool,
        now: datetime.datetime,
        result: GateResult,
    ) -> None:
        self.api, self.ref, self.spec, self.thresholds = api, ref, spec, thresholds
        self.previous = previous_status.get("components") or {}
        self.retry, self.now, self.result = retry, now, result
        self.problems: list[Verdict] = []
        self.progressing: list[str] = []
        self.canary_message = ""
        self.stable_template: dict[str, Any] | None = None

    def _requeue(self, wait: float) -> None:
        self.result.requeue_after = min(self.result.requeue_after or wait, wait)

    def component(
        self, obj: dict[str, Any], target: str | None, memory: VersionMemory | None = None
    ) -> tuple[dict[str, Any], Decision]:
        """Gate one Deployment aiming at version `target`; returns what is applied."""
        component = _component(obj)
        desired = target or version_of(obj)
        assert desired is not None  # noqa: S101 - render_site stamps every Deployment
        live = self.api.get_child("Deployment", self.ref.namespace, obj["metadata"]["name"])
        health, pods = _judge(
            self.api,
            ref=self.ref,
            component=component,
            live=live,
            thresholds=self.thresholds,
            now=self.now,
        )
        previous = self.previous.get(component.value) or {}
        decision = decide_version(
            component=component.value,
            desired=desired,
            live=version_of(live),
            health=health,
            memory=memory or _remembered_memory(previous, live),
            auto_revert=self.spec.rollout.auto_revert,
            retry=self.retry and memory is None,
        )
        chosen = obj
        if decision.apply_version != version_of(obj):
            # The live Deployment's own template when it runs that version (a
            # canary holding stable where it is), else a retained ReplicaSet's.
            template = (
                _template_like(live["spec"]["template"], obj)
                if live is not None and version_of(live) == decision.apply_version
                else _template_of_version(
                    self.api, self.ref, component, decision.apply_version, obj
                )
            )
            if template is None:
                self.problems.append(
                    Verdict(
                        CONDITION_FALSE,
                        "KnownGoodUnavailable",
                        f"{component.value}: no retained ReplicaSet holds the version "
                        f"{decision.apply_version}; applying the spec as it is",
                    )
                )
            else:
                chosen = copy.deepcopy(obj)
                chosen["spec"]["template"] = template
        chosen = _with_failure_recorded(chosen, decision.memory)
        self.result.objects.append(chosen)
        if component == Component.DAEDALUS:
            self.stable_template = chosen["spec"]["template"]
        self.result.memory[component.value] = _remembered(
            version_of(chosen), decision.memory, previous, self.now
        )
        event = decision.event or _unrecorded_failure(decision, previous)
        if event is not None:
            self.result.events.append(event)
            if event[1] == "RolledBack":
                why = (decision.memory.failed_reason or "Unknown").split(":", 1)[0]
                self.result.reverts.append((component.value, why))
        status, reason, message = decision.condition
        if status != CONDITION_TRUE:
            self.problems.append(Verdict(status, reason, message))
        elif reason == "Progressing":
            self.progressing.append(message)
        if health is not None and health.state == "progressing":
            self._requeue(_until_ready_timeout(pods, self.thresholds, self.now))
        return chosen, decision

    def canary_at_rest(self, canary: dict[str, Any]) -> None:
        """No canary strategy: the canary Deployment stays empty, its template
        the stable one's (so it changes only when stable does)."""
        rest = copy.deepcopy(canary)
        if self.stable_template is not None:
            rest["spec"]["template"] = canary_template(self.stable_template)
        rest["spec"]["replicas"] = 0
        rest["metadata"].setdefault("annotations", {})[CANARY_STATE_ANNOTATION] = ""
        self.result.objects.append(rest)
        self.result.canary_weight = 0
        labels = (self.stable_template or {}).get("metadata", {}).get("labels") or {}
        self.result.pool_versions = {"stable": labels.get(VERSION_LABEL, ""), "canary": ""}

    def daedalus_with_canary(
        self,
        daedalus: dict[str, Any],
        canary: dict[str, Any],
        command: str | None,
        read_traffic: Callable[[SiteRef], Reading | None] | None,
    ) -> None:
        """The stable daedalus Deployment and the canary, moved together."""
        ref, spec = self.ref, self.spec
        desired = version_of(daedalus)
        assert desired is not None  # noqa: S101 - render_site stamps every Deployment
        live_stable = self.api.get_child("Deployment", ref.namespace, daedalus["metadata"]["name"])
        live_canary = self.api.get_child("Deployment", ref.namespace, canary["metadata"]["name"])
        memory = _remembered_memory(self.previous.get("daedalus") or {}, live_stable)
        if self.retry and memory.failed == desired:
            memory = VersionMemory(last_good=memory.last_good)
        state = canary_state_of(live_canary)
        canary_health, pods = _judge(
            self.api,
            ref=ref,
            component=Component.CANARY,
            live=live_canary,
            thresholds=self.thresholds,
            now=self.now,
        )
        stable_version = version_of(live_stable)
        canary_version = state.version if state is not None else None
        ready, others = _pods_by_version(self.api, ref, Component.CANARY, canary_version)
        _, stable_others = _pods_by_version(self.api, ref, Component.DAEDALUS, stable_version)
        judging = state is not None or (
            memory.last_good is not None and desired not in (stable_version, memory.failed)
        )
        decision = decide_canary(
            state,
            CanaryInputs(
                desired=desired,
                stable=stable_version,
                last_good=memory.last_good,
                failed=memory.failed,
                canary_version=version_of(live_canary),
                canary_health=canary_health,
                canary_replicas=int(((live_canary or {}).get("spec") or {}).get("replicas", 0)),
                canary_ready_pods=ready,
                canary_other_pods=others,
                stable_rolled_out=live_stable is not None and is_rolled_out(live_stable),
                stable_other_pods=stable_others,
                reading=read_traffic(ref) if judging and read_traffic is not None else None,
                replicas=spec.daedalus.replicas,
                settings=spec.rollout.canary,
                auto_revert=spec.rollout.auto_revert,
                command=command,
                now=self.now,
            ),
        )
        self.result.events.extend(decision.events)
        target = decision.stable_version
        if decision.failed is not None:
            # Remembered as any failed version: the gate keeps the last good
            # one, reports RolledBack and posts its Event.
            memory = VersionMemory(memory.last_good, desired, decision.failed)
            target = desired
        stable, _ = self.component(daedalus, target, memory)
        applied = copy.deepcopy(canary)
        # The version under analysis; at rest, stable's (changed only with it).
        source = daedalus if decision.state is not None else stable
        applied["spec"]["template"] = canary_template(source["spec"]["template"])
        applied["spec"]["replicas"] = decision.canary_replicas
        applied["metadata"].setdefault("annotations", {})[CANARY_STATE_ANNOTATION] = (
            json.dumps(state_to_dict(decision.state), separators=(",", ":"))
            if decision.state is not None
            else ""
        )
        self.result.objects.append(applied)
        self.result.canary_weight = decision.weight
        self.result.pool_versions = {
            "stable": version_of(stable) or "",
            "canary": version_of(applied) or "" if decision.state is not None else "",
        }
        self.result.canary_status = canary_status(decision, spec.rollout.canary)
        if decision.state is not None and decision.state.failure is not None:
            self.problems.append(
                Verdict(CONDITION_FALSE, "RolloutFailed", decision.progressing or "")
            )
        elif decision.progressing:
            self.canary_message = decision.progressing
        if decision.requeue_after is not None:
            self._requeue(decision.requeue_after)
        if canary_health is not None and canary_health.state == "progressing":
            self._requeue(_until_ready_timeout(pods, self.thresholds, self.now))


def _pods_by_version(
    api: RolloutApi, ref: SiteRef, component: Component, version: str | None
) -> tuple[int, int]:
    """The component's Ready pods of `version` (not going away), and its pods
    of any other version (going away or not)."""
    selector = label_selector(selector_labels(ref.name, component))
    ready = others = 0
    for pod in api.list_objects("Pod", ref.namespace, selector):
        labels = pod["metadata"].get("labels") or {}
        if version is None or labels.get(VERSION_LABEL) != version:
            others += 1
        elif is_ready(pod) and not pod["metadata"].get("deletionTimestamp"):
            ready += 1
    return ready, others


def canary_state_of(live_canary: dict[str, Any] | None) -> CanaryState | None:
    annotations = ((live_canary or {}).get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(CANARY_STATE_ANNOTATION)
    if not raw:
        return None
    try:
        return state_from_dict(json.loads(raw))
    except ValueError:
        return None


def canary_status(decision: CanaryDecision, settings: models.Canary) -> dict[str, Any] | None:
    """status.canary: where the canary stands, in the user's words."""
    state = decision.state
    if state is None:
        return None
    failed = next((q for q in state.last if q.name == "failed"), None)
    status: dict[str, Any] = {
        "version": state.version,
        "phase": state.phase,
        "step": min(state.step + 1, len(settings.steps)),
        "steps": len(settings.steps),
        "weight": decision.weight,
        "paused": state.paused,
        "since": state.since,
        "healthOnlySteps": list(state.health_only),
        "message": decision.progressing,
    }
    if failed is not None:
        status["canaryRequests"] = failed.canary_requests
        status["canaryFailed"] = failed.canary_bad
        status["stableFailedRate"] = f"{failed.stable_rate:.2%}"
    if state.failure:
        status["failure"] = state.failure
    return status


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
