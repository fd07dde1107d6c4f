"""RFC 3339 timestamps as the Kubernetes API writes them: UTC, whole seconds, `Z`."""

from __future__ import annotations

import datetime


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime.datetime) -> str:
    """A MicroTime, as in a Lease's renewTime."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    """None for an absent value; ValueError for one that is not a timestamp."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
