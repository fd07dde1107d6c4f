"""Who may hold the leader Lease (policies/lease.py)."""

from __future__ import annotations

import datetime

import pytest

from blogsite_operator.policies.lease import LeaseTimings, claimed, may_take, released

TIMINGS = LeaseTimings()
NOW = datetime.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=datetime.UTC)


def held_by(holder: str, transitions: int = 3) -> dict[str, object]:
    return {
        "holderIdentity": holder,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-29T09:00:00.000000Z",
        "renewTime": "2026-11-29T09:59:59.000000Z",
        "leaseTransitions": transitions,
    }


def test_a_lease_held_by_another_is_taken_only_after_its_duration_of_silence() -> None:
    assert not may_take(held_by("a"), "b", unchanged_for=0.0, timings=TIMINGS)
    assert not may_take(held_by("a"), "b", unchanged_for=14.9, timings=TIMINGS)
    assert may_take(held_by("a"), "b", unchanged_for=15.0, timings=TIMINGS)


def test_the_holders_own_duration_counts_not_the_candidates() -> None:
    spec = {**held_by("a"), "leaseDurationSeconds": 60}
    assert not may_take(spec, "b", unchanged_for=30.0, timings=TIMINGS)
    assert may_take(spec, "b", unchanged_for=60.0, timings=TIMINGS)


def test_a_free_or_own_lease_is_taken_at_once() -> None:
    assert may_take({}, "b", unchanged_for=0.0, timings=TIMINGS)
    assert may_take({"holderIdentity": None}, "b", unchanged_for=0.0, timings=TIMINGS)
    assert may_take(held_by("b"), "b", unchanged_for=0.0, timings=TIMINGS)


def test_renewing_keeps_the_acquire_time_and_transitions() -> None:
    spec = claimed(held_by("a"), "a", NOW, TIMINGS)
    assert spec == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-29T09:00:00.000000Z",
        "renewTime": "2026-11-29T10:00:00.123456Z",
        "leaseTransitions": 3,
    }


def test_taking_over_counts_a_transition() -> None:
    spec = claimed(held_by("a"), "b", NOW, TIMINGS)
    assert spec["holderIdentity"] == "b"
    assert spec["acquireTime"] == spec["renewTime"] == "2026-11-29T10:00:00.123456Z"
    assert spec["leaseTransitions"] == 4


def test_a_new_lease_starts_without_transitions() -> None:
    spec = claimed({}, "a", NOW, TIMINGS)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == 0


def test_a_released_lease_has_no_holder_and_expires_at_once() -> None:
    spec = released(held_by("a"), NOW)
    assert spec["holderIdentity"] is None
    assert spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 3
    assert may_take(spec, "b", unchanged_for=0.0, timings=TIMINGS)


@pytest.mark.parametrize(
    ("duration", "renew_deadline", "retry_period"),
    [(15, 15, 2), (10, 15, 2), (15, 10, 10), (15, 10, 0)],
)
def test_timings_that_could_overlap_two_leaders_are_refused(
    duration: float, renew_deadline: float, retry_period: float
) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < duration"):
        LeaseTimings(duration, renew_deadline, retry_period)


def test_scaled_timings_keep_the_defaults_proportions() -> None:
    assert LeaseTimings.scaled(15) == LeaseTimings()
    assert LeaseTimings.scaled(6) == LeaseTimings(6, 4, 0.8)
