"""RFC 3339 timestamps as the Kubernetes API writes them: UTC, whole seconds, `Z`."""

from __future__ import annotations

import datetime


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ceil_second(moment: datetime.datetime) -> datetime.datetime:
    """`moment` rounded up to a whole second. A time that must not come early
    (a Retry-After, a backoff) survives `format_time` and a reread this way."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + datetime.timedelta(seconds=1)


def format_micro_time(moment: datetime.datetime) -> str:
    """A MicroTime, as in a Lease's renewTime."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    """None for an absent value; ValueError for one that is not a timestamp."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
