"""The canary's sequential test and the step machine around it."""

from __future__ import annotations

import dataclasses
import datetime
import random

import pytest

from blogsite_operator import models
from blogsite_operator.policies.canary import (
    LATENCY_BOUNDS,
    Baseline,
    PoolCounts,
    baseline_of,
    judge,
    overall,
)
from blogsite_operator.policies.canary_steps import (
    ABORT,
    BAKE,
    PAUSE,
    PROMOTE,
    PROMOTING,
    RESUME,
    STARTING,
    STEP,
    CanaryDecision,
    CanaryInputs,
    CanaryState,
    Reading,
    decide_canary,
    replicas_for,
    state_from_dict,
    state_to_dict,
)
from blogsite_operator.policies.rollout import HEALTHY, Health

T0 = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


def pool(requests: int) -> PoolCounts:
    """`requests` answered within 5 ms."""
    return PoolCounts(requests, 0, (requests,) * len(LATENCY_BOUNDS))


def counts(requests: int, failed: int) -> PoolCounts:
    return dataclasses.replace(pool(requests), failed=failed)


def requests_until(verdict: str, canary_rate: float, stable_rate: float = 0.01) -> int:
    """Requests until a canary failing exactly this share (spread evenly) gets
    this verdict; -1 if it never does within 5000."""
    baseline = Baseline(failed_rate=stable_rate)
    for n in range(1, 5000):
        failed = int(n * canary_rate + 1e-9)
        if overall(judge(counts(n, failed), baseline, 5)) == verdict:
            return n
    return -1


def first_failure(canary_rate: float, stable_rate: float = 0.01) -> int:
    return requests_until("fail", canary_rate, stable_rate)


def first_pass(canary_rate: float, stable_rate: float = 0.01) -> int:
    return requests_until("pass", canary_rate, stable_rate)


class TestSequentialTest:
    def test_a_canary_failing_everything_fails_within_a_handful_of_requests(self) -> None:
        assert first_failure(1.0) == 7

    def test_a_canary_failing_a_fifth_fails_within_a_few_dozen(self) -> None:
        assert 20 <= first_failure(0.2) <= 45

    def test_a_good_canary_passes_after_about_a_hundred_requests(self) -> None:
        assert 100 <= first_pass(0.0) <= 120
        assert first_failure(0.0) == -1

    def test_a_canary_as_good_as_a_flaky_stable_passes(self) -> None:
        assert 120 <= first_pass(0.01) <= 200
        assert first_failure(0.01) == -1

    def test_false_alarms_stay_under_wald_bound_for_a_canary_as_good_as_stable(self) -> None:
        """Random failures at stable's rate, read every 10 requests, as a pass does."""
        chance = random.Random(20261205)  # noqa: S311 - a simulation, not a secret
        alarms = 0
        runs = 3000
        for _ in range(runs):
            failed = requests = 0
            while True:
                requests += 10
                failed += sum(chance.random() < 0.01 for _ in range(10))
                verdict = overall(judge(counts(requests, failed), Baseline(0.01), 5))
                if verdict != "undecided":
                    alarms += verdict == "fail"
                    break
        assert alarms / runs <= 0.002

    def test_slow_requests_fail_like_failed_ones(self) -> None:
        stable = pool(1000)
        baseline = baseline_of(stable, ratio=3, floor_seconds=0.5)
        assert baseline.slow_bound == 0.5
        slow_canary = PoolCounts(20, 0, tuple(0 if b < 2.5 else 20 for b in LATENCY_BOUNDS))
        failed, slow = judge(slow_canary, baseline, 5)
        assert (failed.verdict, slow.verdict) == ("undecided", "fail")
        assert "slower than 0.5s" in slow.describe()

    def test_the_latency_bound_follows_a_slow_stable_version(self) -> None:
        slow_stable = PoolCounts(100, 0, tuple(0 if b < 0.25 else 100 for b in LATENCY_BOUNDS))
        assert baseline_of(slow_stable, ratio=3, floor_seconds=0.1).slow_bound == 1.0
        too_few = PoolCounts(5, 0, tuple(0 if b < 0.25 else 5 for b in LATENCY_BOUNDS))
        assert baseline_of(too_few, ratio=3, floor_seconds=0.1).slow_bound == 0.1

    def test_windows_are_differences_of_readings(self) -> None:
        early = Reading("boot-1", counts(10, 1), counts(2, 0))
        late = Reading("boot-1", counts(30, 2), counts(7, 5))
        window = late.window_since(early)
        assert window is not None
        assert (window.stable.requests, window.stable.failed) == (20, 1)
        assert (window.canary.requests, window.canary.failed) == (5, 5)
        assert late.window_since(dataclasses.replace(early, boot="boot-0")) is None


SETTINGS = models.Canary(steps=[10, 50], step_seconds=10, max_step_seconds=60, bake_seconds=120)


def inputs(**changes: object) -> CanaryInputs:
    base = CanaryInputs(
        desired="new",
        stable="old",
        last_good="old",
        failed=None,
        canary_version="new",
        canary_health=HEALTHY,
        canary_replicas=1,
        canary_ready_pods=2,
        canary_other_pods=0,
        stable_rolled_out=True,
        stable_other_pods=0,
        reading=Reading("boot"),
        replicas=2,
        settings=SETTINGS,
        auto_revert=True,
        command=None,
        now=T0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def traffic(stable: int, canary: int, canary_failed: int = 0) -> Reading:
    return Reading("boot", pool(stable), dataclasses.replace(pool(canary), failed=canary_failed))


def run_to_step(step: int) -> CanaryState:
    """A canary whose pods are ready, at `step` (0-based) since T0."""
    decision = decide_canary(None, inputs(canary_replicas=1))
    assert decision.state is not None
    state = decision.state
    for index in range(step):
        state = dataclasses.replace(state, step=index + 1, since=None)
    decision = decide_canary(
        state, inputs(canary_replicas=replicas_for(SETTINGS.steps[step], 2), now=T0)
    )
    assert decision.state is not None
    assert decision.state.phase == STEP
    return decision.state


class TestSteps:
    def test_nothing_to_do_when_stable_runs_the_desired_version(self) -> None:
        decision = decide_canary(None, inputs(stable="new", last_good="new"))
        assert decision == CanaryDecision(None, "new", 0, 0)

    def test_a_first_version_has_no_canary(self) -> None:
        decision = decide_canary(None, inputs(stable=None, last_good=None))
        assert (decision.state, decision.stable_version, decision.weight) == (None, "new", 0)

    def test_a_failed_version_gets_no_canary_again(self) -> None:
        decision = decide_canary(None, inputs(failed="new"))
        assert (decision.state, decision.canary_replicas, decision.weight) == (None, 0, 0)

    def test_a_new_version_starts_with_no_share_until_its_pods_are_ready(self) -> None:
        decision = decide_canary(None, inputs(canary_version="old", canary_replicas=0))
        assert decision.state is not None
        assert decision.state.phase == STARTING
        assert (decision.stable_version, decision.canary_replicas, decision.weight) == ("old", 1, 0)
        assert decision.events[0][1] == "CanaryStarted"
        ready = decide_canary(decision.state, inputs(canary_replicas=1, now=at(3)))
        assert ready.state is not None
        assert ready.state.phase == STEP
        assert (ready.weight, ready.canary_replicas) == (10, 1)
        assert ready.events[-1][1] == "CanaryStep"
        assert "step 1 of 2 (10% of requests)" in (ready.progressing or "")

    def test_no_share_until_the_versions_pods_are_ready(self) -> None:
        """The Deployment may count a scaled-down version's pods as available."""
        starting = decide_canary(None, inputs(canary_ready_pods=0)).state
        waiting = decide_canary(starting, inputs(canary_ready_pods=0, now=at(1)))
        assert (waiting.weight, waiting.state.phase if waiting.state else None) == (0, STARTING)
        leaving = decide_canary(waiting.state, inputs(canary_other_pods=1, now=at(2)))
        assert leaving.weight == 0  # the version before still has a pod, going
        ready = decide_canary(waiting.state, inputs(canary_ready_pods=1, now=at(2)))
        assert (ready.weight, ready.state.phase if ready.state else None) == (10, STEP)

    def test_one_replica_still_gets_a_canary_pod(self) -> None:
        assert replicas_for(5, 1) == 1
        assert replicas_for(50, 10) == 5
        assert replicas_for(25, 10) == 3

    def test_a_failing_canary_is_reverted_at_once(self) -> None:
        state = dataclasses.replace(run_to_step(0), window_start=traffic(0, 0))
        decision = decide_canary(state, inputs(reading=traffic(100, 10, 10), now=at(2)))
        assert decision.state is None
        assert (decision.stable_version, decision.canary_replicas, decision.weight) == ("old", 0, 0)
        assert decision.failed is not None
        assert decision.failed.startswith("AnalysisFailed: 10 of 10")

    def test_a_crashing_canary_is_reverted_like_a_failed_rolling_update(self) -> None:
        crashing = Health("failed", "PodsFailing", "pod p: container daedalus restarted 3 times")
        decision = decide_canary(run_to_step(0), inputs(canary_health=crashing, now=at(2)))
        assert (decision.state, decision.weight) == (None, 0)
        assert decision.failed == "PodsFailing: pod p: container daedalus restarted 3 times"

    def test_a_step_passes_once_judged_good_and_held(self) -> None:
        state = dataclasses.replace(
            run_to_step(0), window_start=traffic(0, 0), analysis_start=traffic(0, 0)
        )
        good = traffic(2000, 200)
        early = decide_canary(state, inputs(reading=good, now=at(5)))
        assert early.state is not None
        assert (early.state.step, early.weight) == (0, 10)
        held = decide_canary(state, inputs(reading=good, now=at(10)))
        assert held.state is not None
        assert (held.state.step, held.state.since) == (1, None)
        assert (held.weight, held.canary_replicas) == (10, 1)  # scale first, then the share
        assert held.state.health_only == ()

    def test_a_step_without_enough_requests_passes_on_health_alone_and_says_so(self) -> None:
        state = dataclasses.replace(run_to_step(0), window_start=traffic(0, 0))
        waiting = decide_canary(state, inputs(reading=traffic(10, 1), now=at(59)))
        assert waiting.state is not None
        assert waiting.state.step == 0
        moved = decide_canary(state, inputs(reading=traffic(10, 1), now=at(60)))
        assert moved.state is not None
        assert moved.state.health_only == (1,)

    def test_the_last_step_leads_to_the_bake_then_promotion(self) -> None:
        state = dataclasses.replace(
            run_to_step(1), window_start=traffic(0, 0), analysis_start=traffic(0, 0)
        )
        baking = decide_canary(
            state, inputs(reading=traffic(2000, 2000), now=at(60), canary_replicas=1)
        )
        assert baking.state is not None
        assert baking.state.phase == BAKE
        assert baking.state.baseline is not None
        assert (baking.canary_replicas, baking.weight) == (2, 50)
        started = decide_canary(
            baking.state, inputs(canary_replicas=2, reading=traffic(2000, 2000), now=at(61))
        )
        assert started.state is not None
        assert started.weight == 100
        done = decide_canary(
            started.state, inputs(canary_replicas=2, reading=traffic(2000, 3000), now=at(181))
        )
        assert done.state is not None
        assert done.state.phase == PROMOTING
        assert (done.stable_version, done.weight, done.canary_replicas) == ("new", 100, 2)
        draining = decide_canary(
            done.state, inputs(stable="new", canary_replicas=2, stable_other_pods=1, now=at(190))
        )
        assert draining.weight == 100  # the old stable pods still drain: not back yet
        promoted = decide_canary(
            done.state, inputs(stable="new", canary_replicas=2, stable_rolled_out=True, now=at(190))
        )
        # desired == stable now: the canary is over.
        assert (promoted.state, promoted.weight, promoted.canary_replicas) == (None, 0, 0)

    def test_a_late_failure_in_the_bake_is_reverted(self) -> None:
        state = CanaryState(
            "new",
            BAKE,
            step=2,
            weight=100,
            since=T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
            window_start=traffic(0, 0),
            baseline=Baseline(0.01),
        )
        good = decide_canary(state, inputs(canary_replicas=2, reading=traffic(0, 5000), now=at(60)))
        assert good.state is not None
        assert good.state.window_start == traffic(0, 5000)
        bad = decide_canary(
            good.state, inputs(canary_replicas=2, reading=traffic(0, 5020, 20), now=at(61))
        )
        assert (bad.state, bad.weight, bad.stable_version) == (None, 0, "old")

    def test_pause_holds_a_step_and_resume_lets_it_go(self) -> None:
        state = dataclasses.replace(run_to_step(0), window_start=traffic(0, 0))
        paused = decide_canary(state, inputs(command=PAUSE, reading=traffic(10, 1), now=at(100)))
        assert paused.state is not None
        assert (paused.state.paused, paused.state.step) == (True, 0)
        resumed = decide_canary(
            paused.state, inputs(command=RESUME, reading=traffic(10, 1), now=at(101))
        )
        assert resumed.state is not None
        assert resumed.state.step == 1

    def test_promote_skips_the_remaining_steps(self) -> None:
        decision = decide_canary(run_to_step(0), inputs(command=PROMOTE, now=at(1)))
        assert decision.state is not None
        assert decision.state.phase == PROMOTING
        assert (decision.stable_version, decision.weight) == ("new", 10)

    def test_abort_reverts(self) -> None:
        decision = decide_canary(run_to_step(0), inputs(command=ABORT, now=at(1)))
        assert (decision.state, decision.weight, decision.failed) == (
            None,
            0,
            "Aborted: kubectl blogsite abort",
        )

    def test_with_auto_revert_off_a_failure_pauses_and_is_reported_once(self) -> None:
        state = dataclasses.replace(run_to_step(0), window_start=traffic(0, 0))
        decision = decide_canary(
            state, inputs(auto_revert=False, reading=traffic(100, 10, 10), now=at(2))
        )
        assert decision.state is not None
        assert decision.state.paused
        assert (decision.weight, decision.failed) == (10, None)
        assert [e[1] for e in decision.events] == ["RolloutFailed"]
        again = decide_canary(
            decision.state, inputs(auto_revert=False, reading=traffic(100, 20, 20), now=at(3))
        )
        assert again.events == ()

    def test_a_restarted_collector_starts_a_new_window(self) -> None:
        state = dataclasses.replace(
            run_to_step(0), window_start=Reading("boot-0", pool(9), pool(9))
        )
        decision = decide_canary(state, inputs(reading=traffic(1, 1, 1), now=at(2)))
        assert decision.state is not None
        assert decision.state.window_start == traffic(1, 1, 1)

    def test_a_new_spec_replaces_the_canary_under_way(self) -> None:
        decision = decide_canary(run_to_step(0), inputs(desired="newer", canary_version="new"))
        assert decision.state is not None
        assert decision.state.version == "newer"
        assert [e[1] for e in decision.events] == ["CanaryCancelled", "CanaryStarted"]
        assert decision.weight == 0

    @pytest.mark.parametrize("phase", [STARTING, STEP, BAKE, PROMOTING])
    def test_the_state_survives_its_annotation(self, phase: str) -> None:
        state = CanaryState(
            "new",
            phase,
            step=1,
            weight=50,
            since="2026-12-05T12:00:00Z",
            analysis_start=traffic(1, 2, 1),
            window_start=traffic(3, 4),
            baseline=Baseline(0.01, 0.5, 0.02),
            paused=True,
            health_only=(1,),
            failure="x",
        )
        assert state_from_dict(state_to_dict(state)) == state
        judged = dataclasses.replace(state, last=judge(pool(10), Baseline(), 5))
        assert state_from_dict(state_to_dict(judged)) == state  # judged again each pass

    def test_an_unreadable_state_is_none(self) -> None:
        assert state_from_dict({"phase": "Step"}) is None
        assert state_from_dict({"phase": "Elsewhere", "version": "x"}) is None
