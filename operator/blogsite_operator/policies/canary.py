"""Is the canary failing the requests it serves? A sequential test per step.

The frontend reports every request it proxies to daedalus to the site's
traffic collector (cert-refresh), by pool: stable or canary. The collector
keeps cumulative counts (requests, failed ones, a latency histogram); a
window is the difference of two readings. Two questions are asked of each
window, the same way:

* failed: the share of canary requests answered 5xx, or whose connection
  nginx saw refused or timed out;
* slow: the share of canary requests slower than `latency_ratio` times the
  stable version's 95th percentile (never below the floor).

Each is Wald's sequential probability ratio test (SPRT) between
H0: rate = stable's + increase/5 (a canary as good as stable, give or take)
and H1: rate = stable's + increase (`maxErrorRateIncrease` points). With n
canary requests of which k are bad, the evidence is the log-likelihood ratio

    LLR = k ln(p1/p0) + (n - k) ln((1 - p1)/(1 - p0))

and the step fails once LLR >= ln((1 - BETA)/ALPHA), passes (on this
question) once LLR <= ln(BETA/(1 - ALPHA)), and otherwise waits for more
requests. Wald's bounds: a canary at H0 fails a step with probability at
most ALPHA/(1 - BETA) (0.1 %), a canary at H1 passes with at most
BETA/(1 - ALPHA) (1 %); a canary better than H0 fails less often still.
Reading the counts every second or so instead of per request only stops
later, on the safe side. Stable's rate is estimated from the same window,
which the test takes as known: with a few stable requests that estimate is
rough, and with too few canary requests nothing is decided: the step waits
up to `maxStepSeconds` and then passes on health alone, and says so.

At the default increase of 5 points and a stable version failing 1 %: a
canary failing every request fails after 7 requests, one failing 20 % after
40, and a good one passes after 112 (138 if it fails 1 % too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALPHA = 0.001  # a good canary failed: Wald's bound on a false revert per test
BETA = 0.01  # a bad canary passed
FAIL_AT = math.log((1 - BETA) / ALPHA)
PASS_AT = math.log(BETA / (1 - ALPHA))
# H0 sits a fifth of the way to H1: between them the test may go either way.
INDIFFERENCE = 0.2
# Upper bounds (seconds) of the collector's latency buckets; the last one is +Inf.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Fewer stable requests than this in a window say nothing about its latency:
# the bound is the floor (or what the steps measured, in the bake).
MIN_STABLE_FOR_LATENCY = 20


@dataclass(frozen=True)
class PoolCounts:
    """One pool's requests as the collector counts them (cumulative), or a window."""

    requests: int = 0
    failed: int = 0
    # Requests at or under each of LATENCY_BOUNDS (cumulative buckets, like Prometheus).
    latency: tuple[int, ...] = (0,) * len(LATENCY_BOUNDS)

    def since(self, earlier: PoolCounts) -> PoolCounts:
        """The window from `earlier` (a reading of the same collector) to this one."""
        return PoolCounts(
            requests=max(0, self.requests - earlier.requests),
            failed=max(0, self.failed - earlier.failed),
            latency=tuple(
                max(0, a - b) for a, b in zip(self.latency, earlier.latency, strict=True)
            ),
        )

    def slower_than(self, bound: float) -> int:
        """Requests above `bound`, which must be one of LATENCY_BOUNDS."""
        return self.requests - self.latency[LATENCY_BOUNDS.index(bound)]

    def percentile_bound(self, share: float) -> float | None:
        """The smallest bucket bound under which `share` of the requests fall."""
        if self.requests == 0:
            return None
        for bound, at_most in zip(LATENCY_BOUNDS, self.latency, strict=True):
            if at_most >= share * self.requests:
                return bound
        return math.inf


def counts_from_dict(raw: Any) -> PoolCounts:
    """A pool's counts from JSON (the collector's, or the state annotation's);
    anything unreadable counts as nothing."""
    raw = raw if isinstance(raw, dict) else {}
    latency = tuple(int(n) for n in raw.get("latency") or ())
    if len(latency) != len(LATENCY_BOUNDS):
        latency = PoolCounts().latency
    return PoolCounts(int(raw.get("requests", 0)), int(raw.get("failed", 0)), latency)


@dataclass(frozen=True)
class Baseline:
    """What the stable version showed, for a window where it serves nothing (the bake)."""

    failed_rate: float = 0.0
    slow_bound: float = LATENCY_BOUNDS[6]
    slow_rate: float = 0.0


@dataclass(frozen=True)
class Question:
    """One SPRT's state: the evidence so far and what it says."""

    name: str  # "failed" | "slow"
    canary_bad: int
    canary_requests: int
    stable_rate: float
    llr: float

    @property
    def verdict(self) -> str:
        if self.llr >= FAIL_AT:
            return "fail"
        if self.llr <= PASS_AT:
            return "pass"
        return "undecided"

    def describe(self) -> str:
        rate = self.canary_bad / self.canary_requests if self.canary_requests else 0.0
        return (
            f"{self.canary_bad} of {self.canary_requests} canary requests {self.name} "
            f"({rate:.1%}, stable {self.stable_rate:.1%})"
        )


def llr(bad: int, total: int, stable_rate: float, increase: float) -> float:
    """The log-likelihood ratio of H1 (stable + increase) against H0 (stable
    + INDIFFERENCE x increase) for `bad` of `total` canary requests."""
    stable_rate = min(stable_rate, 0.5)  # increase <= 0.5: 0 < p0 < p1 < 1
    p1 = min(stable_rate + increase, 0.999)
    p0 = stable_rate + INDIFFERENCE * increase
    return bad * math.log(p1 / p0) + (total - bad) * math.log((1 - p1) / (1 - p0))


def slow_bound(stable: PoolCounts, ratio: int, floor_seconds: float) -> float:
    """The bucket bound above which a request counts as slow: `ratio` times
    stable's 95th percentile, at least the floor, rounded up to a bucket."""
    p95 = stable.percentile_bound(0.95) if stable.requests >= MIN_STABLE_FOR_LATENCY else None
    wanted = max(floor_seconds, ratio * p95 if p95 is not None else 0.0)
    return next((b for b in LATENCY_BOUNDS if b >= wanted), LATENCY_BOUNDS[-1])


def baseline_of(stable: PoolCounts, ratio: int, floor_seconds: float) -> Baseline:
    bound = slow_bound(stable, ratio, floor_seconds)
    if stable.requests == 0:
        return Baseline(slow_bound=bound)
    return Baseline(
        failed_rate=stable.failed / stable.requests,
        slow_bound=bound,
        slow_rate=stable.slower_than(bound) / stable.requests,
    )


def judge(canary: PoolCounts, baseline: Baseline, increase_points: int) -> tuple[Question, ...]:
    """Both questions about a window of canary requests, against stable's figures."""
    increase = increase_points / 100
    failed = Question(
        "failed",
        canary.failed,
        canary.requests,
        baseline.failed_rate,
        llr(canary.failed, canary.requests, baseline.failed_rate, increase),
    )
    slow_count = canary.slower_than(baseline.slow_bound)
    slow = Question(
        f"slower than {baseline.slow_bound:g}s",
        slow_count,
        canary.requests,
        baseline.slow_rate,
        llr(slow_count, canary.requests, baseline.slow_rate, increase),
    )
    return failed, slow


def overall(questions: tuple[Question, ...]) -> str:
    """fail if any question fails, pass if all pass, else undecided."""
    verdicts = {q.verdict for q in questions}
    if "fail" in verdicts:
        return "fail"
    return "pass" if verdicts == {"pass"} else "undecided"
