"""Where a canary rollout stands, and what the next pass should do about it.

A pure state machine over one new daedalus version (README, "Rollouts"):

  Starting   the canary Deployment runs the new version with the replicas of
             the first step; no requests yet (weight 0) until it is rolled out
  Step i     the canary has `steps[i]` percent of requests; the window of
             requests since the step began is judged (policies/canary.py);
             a pass moves on once `stepSeconds` have gone by, a window too
             thin to judge moves on after `maxStepSeconds` on health alone.
             Before a larger share, the canary is scaled and must be ready.
  Bake       the canary, at full replicas, has every request for
             `bakeSeconds`; the stable version keeps running, unused, so a
             revert is one weight away. Judged against what stable showed
             during the steps, in windows that restart whenever they pass.
  Promoting  the stable Deployment rolls to the new version (no requests:
             the canary still has them all); once it is rolled out, every
             request goes back to it and the canary scales to zero.

A failure anywhere (the canary's pods failing as in a rolling update, or its
requests failing) sends every request back to stable at once and scales the
canary to zero. The state lives in an annotation of the canary Deployment,
written by the very apply that acts on it, and is shown in status.canary.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field, replace
from typing import Any

from blogsite_operator import models
from blogsite_operator.policies.canary import (
    Baseline,
    PoolCounts,
    Question,
    baseline_of,
    counts_from_dict,
    judge,
    overall,
)
from blogsite_operator.policies.rollout import Health
from blogsite_operator.timestamps import format_time, parse_time

STARTING, STEP, BAKE, PROMOTING = "Starting", "Step", "Bake", "Promoting"
# How often a pass reads the traffic while a canary is judged: at a 5 % share
# of a busy site, a canary failing every request is seen within this.
ANALYSIS_SECONDS = 0.5
# Commands from `kubectl blogsite`, through an annotation.
PROMOTE, ABORT, PAUSE, RESUME = "promote", "abort", "pause", "resume"
COMMANDS = (PROMOTE, ABORT, PAUSE, RESUME)
ABORTED = "Aborted: kubectl blogsite abort"


@dataclass(frozen=True)
class Reading:
    """The collector's cumulative counts at one moment; `boot` names the
    collector's lifetime (a restarted collector counts from zero again)."""

    boot: str
    stable: PoolCounts = field(default_factory=PoolCounts)
    canary: PoolCounts = field(default_factory=PoolCounts)

    def window_since(self, earlier: Reading | None) -> Reading | None:
        """The counts since `earlier`, or None when it was another collector's."""
        if earlier is None or earlier.boot != self.boot:
            return None
        return Reading(
            self.boot, self.stable.since(earlier.stable), self.canary.since(earlier.canary)
        )


@dataclass(frozen=True)
class CanaryState:
    version: str
    phase: str
    step: int = 0  # the step under way (or being scaled for); len(steps) in Bake/Promoting
    weight: int = 0  # the canary's share the frontends are to use
    since: str | None = None  # when the current weight began (None: waiting for replicas)
    analysis_start: Reading | None = None  # stable's counts from the first step on
    window_start: Reading | None = None
    baseline: Baseline | None = None  # stable's figures, for the bake
    paused: bool = False
    health_only: tuple[int, ...] = ()  # steps (1-based) that passed on health alone
    last: tuple[Question, ...] = ()  # the latest judgment, for status
    failure: str | None = None  # why it failed, when autoRevert is off (it waits, paused)


@dataclass(frozen=True)
class CanaryInputs:
    desired: str  # the version the spec renders to
    stable: str | None  # the version the stable Deployment runs
    last_good: str | None
    failed: str | None
    canary_version: str | None  # the version the canary Deployment runs
    canary_health: Health | None  # its rollout, judged like any (None: no Deployment)
    canary_replicas: int  # the replicas the canary Deployment has now
    # Its pods of the canary's version that are Ready (and not going): what a
    # share may be given to. The Deployment's own counts lag a scale-down of
    # the version before (its pods still counted available while they go).
    canary_ready_pods: int
    # Its pods of any other version, going or not: a share waits for them to
    # be gone, or kept-alive connections would still reach the version before.
    canary_other_pods: int
    stable_rolled_out: bool  # the stable Deployment runs its version everywhere
    # Its pods of any other version, going or not: requests go back to stable
    # after a promotion only once they are gone (while they drain, kube-proxy
    # may still send new connections to them).
    stable_other_pods: int
    reading: Reading | None  # None: the collector could not be read
    replicas: int  # spec.daedalus.replicas
    settings: models.Canary
    auto_revert: bool
    command: str | None  # a new command from kubectl blogsite
    now: datetime.datetime


@dataclass(frozen=True)
class CanaryDecision:
    state: CanaryState | None  # None: no canary rollout under way
    stable_version: str  # the version the stable Deployment is to run
    canary_replicas: int
    weight: int
    failed: str | None = None  # why the canary failed this pass (it is reverted)
    events: tuple[tuple[str, str, str], ...] = ()
    progressing: str | None = None  # the Progressing condition's message
    requeue_after: float | None = None


def replicas_for(weight: int, replicas: int) -> int:
    """Canary pods for a share of requests: in proportion, at least one."""
    return max(1, math.ceil(replicas * weight / 100))


def _idle(inputs: CanaryInputs, stable: str, *events: tuple[str, str, str]) -> CanaryDecision:
    return CanaryDecision(None, stable, 0, 0, events=events)


def decide_canary(state: CanaryState | None, inputs: CanaryInputs) -> CanaryDecision:
    """The next step of the canary rollout of `inputs.desired`."""
    desired, stable = inputs.desired, inputs.stable or inputs.desired
    promoting = state is not None and state.version == desired and state.phase == PROMOTING
    if (
        desired == inputs.failed
        or inputs.last_good is None
        or (desired == stable and not promoting)
    ):
        # Nothing to judge: the version failed already (the rollout gate
        # keeps the last good one), the site has no good version to compare
        # with yet (its first rollout is a plain one), or stable runs it (and
        # is not still rolling to it at the end of a canary).
        if state is not None and state.version != desired:
            event = ("Normal", "CanaryCancelled", f"daedalus: canary of {state.version} stopped")
            return _idle(inputs, desired, event)
        return _idle(inputs, desired)
    events: list[tuple[str, str, str]] = []
    if state is None or state.version != desired:
        if state is not None:
            events.append(
                (
                    "Normal",
                    "CanaryCancelled",
                    f"daedalus: canary of {state.version} replaced by {desired}",
                )
            )
        state = CanaryState(version=desired, phase=STARTING)
        events.append(("Normal", "CanaryStarted", f"daedalus: canary of {desired} starting"))
    return _advance(state, inputs, events)


def _advance(  # noqa: PLR0911 - one return per transition of the state machine
    state: CanaryState, inputs: CanaryInputs, events: list[tuple[str, str, str]]
) -> CanaryDecision:
    state, aborted = _obey(state, inputs.command, len(inputs.settings.steps), events)
    if aborted:
        return _fail(state, inputs, events, ABORTED)
    health = inputs.canary_health
    if state.phase == PROMOTING:
        return _promote(state, inputs, events)
    if health is not None and health.failed:
        return _fail(state, inputs, events, f"{health.reason}: {health.message}")
    wanted = _wanted_replicas(state, inputs)
    if state.since is None or state.phase == STARTING:
        ready = (
            inputs.canary_version == state.version
            and inputs.canary_replicas == wanted
            and inputs.canary_ready_pods >= wanted
            and inputs.canary_other_pods == 0
            and health is not None
            and health.state == "healthy"
        )
        if not ready:
            return _hold(state, inputs, events, wanted, f"waiting for {wanted} canary pods")
        state = _take_share(state, inputs)
        events.append(("Normal", "CanaryStep", f"daedalus: {_where(state, inputs.settings)}"))
        return _hold(state, inputs, events, wanted, "")
    state, verdict = _judge_window(state, inputs)
    if verdict == "fail":
        failing = next(q for q in state.last if q.verdict == "fail")
        return _fail(state, inputs, events, f"AnalysisFailed: {failing.describe()}")
    held = (inputs.now - (parse_time(state.since) or inputs.now)).total_seconds()
    if state.phase == BAKE:
        if verdict == "pass" and inputs.reading is not None:
            state = replace(state, window_start=inputs.reading)  # a new window: quick to alarm
        if held >= inputs.settings.bake_seconds and not state.paused:
            events.append(("Normal", "CanaryBaked", f"daedalus: {state.version} baked"))
            return _promote(replace(state, phase=PROMOTING), inputs, events)
        return _hold(state, inputs, events, wanted, "")
    enough = verdict == "pass" and held >= inputs.settings.step_seconds
    if state.paused or not (enough or held >= inputs.settings.max_step_seconds):
        return _hold(state, inputs, events, wanted, "")
    state = _next_step(state, inputs, judged=enough)
    return _hold(state, inputs, events, _wanted_replicas(state, inputs), "")


def _obey(
    state: CanaryState, command: str | None, steps: int, events: list[tuple[str, str, str]]
) -> tuple[CanaryState, bool]:
    """The state after a command from kubectl blogsite; True: abort it."""
    if command == PAUSE and not state.paused:
        events.append(("Normal", "CanaryPaused", f"daedalus: canary of {state.version} paused"))
        return replace(state, paused=True), False
    if command == RESUME and state.paused:
        events.append(("Normal", "CanaryResumed", f"daedalus: canary of {state.version} resumed"))
        return replace(state, paused=False), False
    if command == PROMOTE and state.phase != PROMOTING:
        events.append(("Normal", "CanaryPromoted", f"daedalus: {state.version} promoted by hand"))
        return replace(state, phase=PROMOTING, step=steps, paused=False), False
    return state, command == ABORT


def _wanted_replicas(state: CanaryState, inputs: CanaryInputs) -> int:
    if state.phase == BAKE:
        return inputs.replicas
    return replicas_for(inputs.settings.steps[state.step], inputs.replicas)


def _take_share(state: CanaryState, inputs: CanaryInputs) -> CanaryState:
    """The canary's pods are ready: the step's share (all, for the bake) from now on."""
    bake = state.phase == BAKE
    return replace(
        state,
        phase=BAKE if bake else STEP,
        weight=100 if bake else inputs.settings.steps[state.step],
        since=format_time(inputs.now),
        window_start=inputs.reading,
        analysis_start=state.analysis_start or inputs.reading,
    )


def _judge_window(state: CanaryState, inputs: CanaryInputs) -> tuple[CanaryState, str]:
    """The verdict on the requests since the window began ("undecided" without counts)."""
    reading, settings = inputs.reading, inputs.settings
    if reading is None:
        return state, "undecided"
    window = reading.window_since(state.window_start)
    if window is None:  # a restarted collector: its counts start from here
        return replace(state, window_start=reading), "undecided"
    baseline = state.baseline or Baseline()
    if state.phase == STEP:
        # Stable's figures from the first step on: more requests, a steadier rate.
        since_start = reading.window_since(state.analysis_start) or window
        baseline = _baseline(since_start.stable, settings)
    questions = judge(window.canary, baseline, settings.max_error_rate_increase)
    return replace(state, last=questions), overall(questions)


def _baseline(stable: PoolCounts, settings: models.Canary) -> Baseline:
    return baseline_of(stable, settings.latency_ratio, settings.latency_floor_milliseconds / 1000)


def _next_step(state: CanaryState, inputs: CanaryInputs, *, judged: bool) -> CanaryState:
    """The step passed (judged, or on health alone): the next one, or the bake."""
    if not judged:
        state = replace(state, health_only=(*state.health_only, state.step + 1))
    if state.step + 1 < len(inputs.settings.steps):
        return replace(state, step=state.step + 1, since=None)
    since_start = inputs.reading.window_since(state.analysis_start) if inputs.reading else None
    stable = since_start.stable if since_start is not None else PoolCounts()
    return replace(
        state,
        phase=BAKE,
        step=len(inputs.settings.steps),
        since=None,
        baseline=_baseline(stable, inputs.settings),
    )


def _hold(
    state: CanaryState,
    inputs: CanaryInputs,
    events: list[tuple[str, str, str]],
    canary_replicas: int,
    doing: str,
) -> CanaryDecision:
    where = _where(state, inputs.settings)
    message = f"daedalus: {where}" + (f"; {doing}" if doing else "")
    if state.paused:
        message += " (paused)"
    if state.last:
        message += "; " + "; ".join(q.describe() for q in state.last)
    return CanaryDecision(
        state,
        inputs.stable or inputs.desired,
        canary_replicas,
        state.weight,
        events=tuple(events),
        progressing=message,
        requeue_after=ANALYSIS_SECONDS,
    )


def _where(state: CanaryState, settings: models.Canary) -> str:
    if state.phase == STARTING:
        return f"canary of {state.version} starting"
    if state.phase == STEP:
        return (
            f"canary of {state.version} at step {state.step + 1} of {len(settings.steps)} "
            f"({state.weight}% of requests)"
        )
    if state.phase == BAKE:
        return f"canary of {state.version} baking ({state.weight}% of requests)"
    return f"promoting {state.version}"


def _promote(
    state: CanaryState, inputs: CanaryInputs, events: list[tuple[str, str, str]]
) -> CanaryDecision:
    """Stable rolls to the version while the canary has every request; then
    requests go back to stable and the canary goes."""
    if inputs.stable == state.version and inputs.stable_rolled_out and not inputs.stable_other_pods:
        events.append(
            ("Normal", "CanaryPromoted", f"daedalus: {state.version} is the stable version")
        )
        return CanaryDecision(None, state.version, 0, 0, events=tuple(events))
    # The canary keeps its share (all of it after a bake) until stable is ready.
    state = replace(state, phase=PROMOTING, paused=False)
    return CanaryDecision(
        state,
        state.version,
        inputs.canary_replicas,
        state.weight,
        events=tuple(events),
        progressing=f"daedalus: promoting {state.version}: rolling the stable Deployment",
        requeue_after=ANALYSIS_SECONDS,
    )


def _fail(
    state: CanaryState,
    inputs: CanaryInputs,
    events: list[tuple[str, str, str]],
    reason: str,
) -> CanaryDecision:
    """Every request back to stable, and the canary gone; with autoRevert
    off, the canary stays where it is and the failure is only reported."""
    if not inputs.auto_revert and reason != ABORTED:
        message = (
            f"daedalus: canary of {state.version} failed ({reason}); automatic revert is off: "
            "paused where it is (kubectl blogsite promote or abort)"
        )
        if state.failure is None:
            events.append(("Warning", "RolloutFailed", message))
        paused = replace(state, paused=True, failure=state.failure or reason)
        return CanaryDecision(
            paused,
            inputs.stable or inputs.desired,
            inputs.canary_replicas,
            state.weight,
            events=tuple(events),
            progressing=message,
            requeue_after=ANALYSIS_SECONDS,
        )
    stable = inputs.last_good or inputs.stable or inputs.desired
    return CanaryDecision(None, stable, 0, 0, failed=reason, events=tuple(events))


def _counts_to_dict(counts: PoolCounts) -> dict[str, Any]:
    return {"requests": counts.requests, "failed": counts.failed, "latency": list(counts.latency)}


def reading_to_dict(reading: Reading) -> dict[str, Any]:
    return {
        "boot": reading.boot,
        "stable": _counts_to_dict(reading.stable),
        "canary": _counts_to_dict(reading.canary),
    }


def reading_from_dict(raw: dict[str, Any] | None) -> Reading | None:
    if not raw or not isinstance(raw.get("boot"), str):
        return None
    return Reading(
        raw["boot"],
        counts_from_dict(raw.get("stable") or {}),
        counts_from_dict(raw.get("canary") or {}),
    )


def state_to_dict(state: CanaryState) -> dict[str, Any]:
    """The state as the canary Deployment's annotation keeps it (JSON); not
    the latest judgment, which each pass makes again (and status shows), so
    the Deployment changes only when the rollout moves."""
    return {
        "version": state.version,
        "phase": state.phase,
        "step": state.step,
        "weight": state.weight,
        "since": state.since,
        "analysisStart": reading_to_dict(state.analysis_start) if state.analysis_start else None,
        "windowStart": reading_to_dict(state.window_start) if state.window_start else None,
        "baseline": (
            {
                "failedRate": state.baseline.failed_rate,
                "slowBound": state.baseline.slow_bound,
                "slowRate": state.baseline.slow_rate,
            }
            if state.baseline
            else None
        ),
        "paused": state.paused,
        "healthOnly": list(state.health_only),
        "failure": state.failure,
    }


def state_from_dict(raw: dict[str, Any] | None) -> CanaryState | None:
    """The state back from the annotation; None for anything unreadable
    (the rollout then starts over from its first step, which is safe)."""
    if not raw or raw.get("phase") not in (STARTING, STEP, BAKE, PROMOTING):
        return None
    try:
        baseline = raw.get("baseline")
        return CanaryState(
            version=str(raw["version"]),
            phase=str(raw["phase"]),
            step=int(raw.get("step", 0)),
            weight=int(raw.get("weight", 0)),
            since=raw.get("since"),
            analysis_start=reading_from_dict(raw.get("analysisStart")),
            window_start=reading_from_dict(raw.get("windowStart")),
            baseline=(
                Baseline(
                    float(baseline["failedRate"]),
                    float(baseline["slowBound"]),
                    float(baseline["slowRate"]),
                )
                if baseline
                else None
            ),
            paused=bool(raw.get("paused", False)),
            health_only=tuple(int(n) for n in raw.get("healthOnly") or ()),
            failure=raw.get("failure"),
        )
    except (KeyError, TypeError, ValueError):
        return None
