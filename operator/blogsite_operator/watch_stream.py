"""The watch API on the wire, shared by kube.py and the cert-refresh pod's
standard-library client (which must not import kube.py: that would load the
kubernetes package into the pod)."""

from __future__ import annotations

import json
from typing import Any


def watch_query(
    query: list[tuple[str, str]], resource_version: str, timeout_seconds: int
) -> list[tuple[str, str]]:
    """The query of a watch from `resource_version` that the server ends
    after `timeout_seconds` (no bookmarks: the callers relist anyway)."""
    return [
        *query,
        ("watch", "true"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "false"),
        ("timeoutSeconds", str(timeout_seconds)),
    ]


class WatchEndedError(Exception):
    """The server ended the watch with an ERROR event (410 Gone: relist)."""

    def __init__(self, code: int | None, message: str | None) -> None:
        super().__init__(f"watch ended: {code} {message}")
        self.code = code
        self.message = message


def watch_event(line: bytes) -> dict[str, Any] | None:
    """One line of a watch response: its event ({"type", "object"}), None for
    a blank line; an ERROR event raises WatchEndedError."""
    if not line.strip():
        return None
    event: dict[str, Any] = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        raise WatchEndedError(status.get("code"), status.get("message"))
    return event
