"""Rollout health from the new pods, and the version decision without flip-flops."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from blogsite_operator.policies.rollout import (
    HEALTHY,
    Health,
    RolloutThresholds,
    VersionMemory,
    decide_version,
    pod_failure,
    rollout_health,
)

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
LIMITS = RolloutThresholds(max_restarts=3, ready_timeout_seconds=120)
FAILED = Health("failed", "PodsFailing", "pod p: container c CrashLoopBackOff")
PROGRESSING = Health("progressing")


def ago(seconds: int) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    *,
    age: int = 10,
    ready: bool = False,
    waiting: str | None = None,
    restarts: int = 0,
    scheduled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", **scheduled})
    return {
        "metadata": {"name": "p", "creationTimestamp": ago(age)},
        "status": {
            "conditions": conditions,
            "containerStatuses": [{"name": "c", "state": state, "restartCount": restarts}],
        },
    }


UNSCHEDULABLE = {"status": "False", "reason": "Unschedulable"}


class TestPodFailure:
    def test_a_pod_waiting_for_a_node_is_no_evidence_against_its_version(self) -> None:
        waiting = pod(age=1000, scheduled=UNSCHEDULABLE)
        assert pod_failure(waiting, LIMITS, NOW) is None
        # Nor is the Deployment's deadline, passed while it waited.
        deadline = {
            "metadata": {"generation": 2},
            "spec": {"replicas": 2},
            "status": {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ],
            },
        }
        assert rollout_health(deadline, [waiting], LIMITS, NOW) == PROGRESSING
        assert rollout_health(deadline, [pod(ready=True)], LIMITS, NOW).failed

    def test_the_ready_timeout_counts_from_getting_a_node(self) -> None:
        late = {"status": "True", "lastTransitionTime": ago(60)}
        assert pod_failure(pod(age=1000, scheduled=late), LIMITS, NOW) is None
        early = {"status": "True", "lastTransitionTime": ago(121)}
        assert "not Ready within 120s" in (
            pod_failure(pod(age=1000, scheduled=early), LIMITS, NOW) or ""
        )
        assert "not Ready within 120s" in (pod_failure(pod(age=121), LIMITS, NOW) or "")

    @pytest.mark.parametrize(
        "reason",
        ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"],
    )
    def test_failing_waiting_reasons(self, reason: str) -> None:
        assert reason in (pod_failure(pod(waiting=reason), LIMITS, NOW) or "")

    def test_one_crash_in_back_off_is_not_a_failure(self) -> None:
        # What a real kubelet reports after a container crashed once.
        assert pod_failure(pod(waiting="CrashLoopBackOff", restarts=1), LIMITS, NOW) is None
        crashing = pod(waiting="CrashLoopBackOff", restarts=3)
        assert "restarted 3 times" in (pod_failure(crashing, LIMITS, NOW) or "")

    def test_restart_count_at_the_limit(self) -> None:
        assert pod_failure(pod(restarts=2), LIMITS, NOW) is None
        assert "restarted 3 times" in (pod_failure(pod(restarts=3), LIMITS, NOW) or "")

    def test_not_ready_for_too_long(self) -> None:
        assert pod_failure(pod(age=119), LIMITS, NOW) is None
        assert "not Ready within 120s" in (pod_failure(pod(age=121), LIMITS, NOW) or "")
        assert pod_failure(pod(age=1000, ready=True), LIMITS, NOW) is None

    def test_container_creating_is_not_a_failure(self) -> None:
        assert pod_failure(pod(waiting="ContainerCreating"), LIMITS, NOW) is None


def deployment(
    updated: int = 2, available: int = 2, total: int = 2, **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 2,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "replicas": total,
            **status,
        },
    }


class TestRolloutHealth:
    def test_healthy_when_all_new_replicas_available_and_old_ones_gone(self) -> None:
        assert rollout_health(deployment(), [pod(ready=True)], LIMITS, NOW) == HEALTHY
        assert rollout_health(deployment(total=3), [], LIMITS, NOW).state == "progressing"

    def test_failing_new_pod_fails_the_rollout(self) -> None:
        health = rollout_health(
            deployment(updated=1), [pod(waiting="ImagePullBackOff")], LIMITS, NOW
        )
        assert health.failed
        assert "ImagePullBackOff" in health.message

    def test_progress_deadline_is_the_last_resort(self) -> None:
        conditions = [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]
        health = rollout_health(deployment(updated=1, conditions=conditions), [], LIMITS, NOW)
        assert (health.state, health.reason) == ("failed", "ProgressDeadlineExceeded")

    def test_a_deadline_from_before_the_latest_change_is_not_held_against_it(self) -> None:
        # Right after an apply the status still describes the previous template.
        conditions = [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]
        stale = deployment(updated=1, conditions=conditions, observedGeneration=1)
        assert rollout_health(stale, [], LIMITS, NOW).state == "progressing"


def decide(**kwargs: Any) -> Any:
    arguments: dict[str, Any] = {
        "component": "daedalus",
        "desired": "v2",
        "live": "v2",
        "health": HEALTHY,
        "memory": VersionMemory(last_good="v1"),
        "auto_revert": True,
        "retry": False,
    }
    arguments.update(kwargs)
    return decide_version(**arguments)


class TestDecideVersion:
    def test_first_deployment(self) -> None:
        decision = decide(live=None, health=None, memory=VersionMemory())
        assert decision.apply_version == "v2"

    def test_healthy_new_version_becomes_last_good(self) -> None:
        decision = decide()
        assert decision.memory.last_good == "v2"
        assert decision.event[1] == "RolloutHealthy"
        assert decision.condition[0] == "True"

    def test_a_first_version_becomes_last_good_without_an_event_of_its_own(self) -> None:
        decision = decide(memory=VersionMemory())
        assert decision.memory.last_good == "v2"
        assert decision.event is None
        assert decision.condition[0] == "True"

    def test_failing_version_is_reverted_to_last_good_once(self) -> None:
        decision = decide(health=FAILED)
        assert decision.apply_version == "v1"
        assert decision.memory == VersionMemory("v1", "v2", f"PodsFailing: {FAILED.message}")
        assert decision.event[:2] == ("Warning", "RolledBack")
        assert decision.condition[:2] == ("False", "RolledBack")
        # Next passes: the Deployment is back on v1 and healthy; the spec still says v2.
        again = decide(live="v1", health=HEALTHY, memory=decision.memory)
        assert again.apply_version == "v1"
        assert again.event is None
        assert again.condition[1] == "RolledBack"

    def test_new_spec_is_tried(self) -> None:
        memory = VersionMemory("v1", "v2", "PodsFailing")
        decision = decide(desired="v3", live="v1", memory=memory)
        assert decision.apply_version == "v3"

    def test_retry_tries_the_failed_version_again(self) -> None:
        memory = VersionMemory("v1", "v2", "PodsFailing")
        decision = decide(live="v1", memory=memory, retry=True)
        assert decision.apply_version == "v2"
        assert decision.memory.failed is None

    def test_auto_revert_off_only_reports(self) -> None:
        decision = decide(health=FAILED, auto_revert=False)
        assert decision.apply_version == "v2"
        assert decision.event[1] == "RolloutFailed"
        assert decision.memory.failed == "v2"

    def test_first_deployment_failing_is_reported_not_reverted_to_nothing(self) -> None:
        decision = decide(health=FAILED, memory=VersionMemory())
        assert decision.apply_version == "v2"
        assert decision.condition[1] == "RolloutFailed"
        assert "no known-good" in decision.condition[2]

    def test_progressing_is_left_alone(self) -> None:
        decision = decide(health=PROGRESSING)
        assert decision.apply_version == "v2"
        assert decision.condition[1] == "Progressing"
        assert decision.memory.last_good == "v1"

    def test_retry_that_fails_again_reverts_again(self) -> None:
        memory = VersionMemory("v1")  # after a retry cleared the failure
        decision = decide(health=FAILED, memory=memory)
        assert decision.apply_version == "v1"
        assert decision.event[1] == "RolledBack"

    def test_no_flip_flop_over_many_passes(self) -> None:
        memory = VersionMemory("v1", "v2", "PodsFailing")
        for live, health in [("v1", HEALTHY), ("v1", PROGRESSING), ("v1", HEALTHY)] * 5:
            decision = decide(live=live, health=health, memory=memory)
            assert decision.apply_version == "v1"
            memory = decision.memory

    def test_the_known_good_version_failing_is_degraded_and_kept(self) -> None:
        # Nothing better to go back to: keep it, and say that it fails.
        memory = VersionMemory("v1")
        decision = decide(desired="v1", live="v1", health=FAILED, memory=memory)
        assert decision.apply_version == "v1"
        assert decision.condition[:2] == ("False", "Degraded")
        assert "the known-good version v1 is failing" in decision.condition[2]
        assert decision.memory == memory
