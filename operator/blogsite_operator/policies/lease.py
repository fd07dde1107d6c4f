"""Who may hold the leader Lease: the rules of client-go's leader election.

A Lease names its holder and how long a renewal lasts. Clocks of two machines
are never compared: a candidate measures a holder's silence on its own clock,
from the moment it last saw the Lease change.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from blogsite_operator.timestamps import format_micro_time


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults. A leader that cannot renew for `renew_deadline`
    stops; a candidate takes over only after `duration` of silence, so the
    old leader has stopped writing `duration - renew_deadline` before."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def scaled(cls, duration: float) -> LeaseTimings:
        """The defaults' proportions for another lease duration."""
        return cls(duration, renew_deadline=duration * 2 / 3, retry_period=duration * 2 / 15)

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError(
                "lease timings need 0 < retry period < renew deadline < duration, not "
                f"{self.retry_period}, {self.renew_deadline}, {self.duration}"
            )


def may_take(
    spec: dict[str, Any], identity: str, unchanged_for: float, timings: LeaseTimings
) -> bool:
    """Whether `identity` may write itself into a Lease with this spec, which
    it has seen unchanged for `unchanged_for` seconds of its own clock."""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    duration = spec.get("leaseDurationSeconds") or timings.duration
    return unchanged_for >= duration


def claimed(
    spec: dict[str, Any], identity: str, now: datetime.datetime, timings: LeaseTimings
) -> dict[str, Any]:
    """The spec that makes `identity` the holder (or renews its hold)."""
    renewing = spec.get("holderIdentity") == identity
    transitions = int(spec.get("leaseTransitions") or 0)
    stamp = format_micro_time(now)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": round(timings.duration),
        "acquireTime": spec.get("acquireTime") if renewing else stamp,
        "renewTime": stamp,
        # A new Lease starts at 0; every change of holder counts, as in client-go.
        "leaseTransitions": transitions if renewing or not spec else transitions + 1,
    }


def released(spec: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """What a leader writes as it stops: no holder, so a standby takes over at
    its next try instead of after a whole lease duration."""
    stamp = format_micro_time(now)
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": int(spec.get("leaseTransitions") or 0),
    }
