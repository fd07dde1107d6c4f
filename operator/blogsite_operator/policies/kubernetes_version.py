"""Whether the cluster's Kubernetes is new enough for what the operator uses.

The floor is the newest feature among the CRD, the rendered objects and the
operator's own API calls. Each entry says what needs it, so the error names
the reason, not only the number.
"""

from __future__ import annotations

import re
from typing import Any

# (minor, what needs it): the newest one is the floor.
NEEDS: tuple[tuple[int, str], ...] = (
    (28, "the CRD's CEL rules carry fieldPath and isQuantity"),
    (30, "pods stop with a preStop sleep (PodLifecycleSleepAction, on by default in 1.30)"),
    (31, "the CRD's CEL rules use isCIDR (the CIDR library, new in 1.31)"),
)
MINIMUM_MINOR, MINIMUM_REASON = max(NEEDS)
MINIMUM = f"1.{MINIMUM_MINOR}"

_GIT_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


def parse_version(version: dict[str, Any]) -> tuple[int, int] | None:
    """(major, minor) from the API server's /version, or None if unreadable.

    gitVersion first ("v1.31.13", "v1.31.4-eks-a1b2c3"); managed clusters
    may say minor "31+", so major/minor are read for their digits only.
    """
    match = _GIT_VERSION.match(str(version.get("gitVersion", "")))
    if match:
        return int(match.group(1)), int(match.group(2))
    major = re.sub(r"\D", "", str(version.get("major", "")))
    minor = re.sub(r"\D", "", str(version.get("minor", "")))
    if major and minor:
        return int(major), int(minor)
    return None


def version_problem(version: dict[str, Any]) -> str | None:
    """Why the operator cannot run on this API server, or None."""
    parsed = parse_version(version)
    found = version.get("gitVersion") or f"{version.get('major')}.{version.get('minor')}"
    if parsed is None:
        return None  # a server that hides its version: let the CRD decide
    if parsed < (1, MINIMUM_MINOR):
        return (
            f"Kubernetes {found} is too old: blogsite-operator needs {MINIMUM} or newer "
            f"({MINIMUM_REASON})"
        )
    return None
