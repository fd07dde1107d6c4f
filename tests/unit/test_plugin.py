"""`kubectl blogsite status`'s screen, from a BlogSite (pure)."""

from __future__ import annotations

from typing import Any

from blogsite_operator.plugin import status_screen

SITE = {
    "metadata": {"name": "notes", "namespace": "blogs", "generation": 3},
    "spec": {"domains": ["notes.example.org"], "tls": {"acme": {"email": "a@example.org"}}},
    "status": {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "message": "serving"},
            {"type": "CertificateReady", "status": "False", "reason": "AcmeServerUnreachable"},
        ],
        "certificate": {
            "placeholder": False,
            "serialNumber": "1f",
            "issuer": "(STAGING) Counterfeit Cashew R10",
            "testIssuer": True,
            "notBefore": "2026-11-01T00:00:00Z",
            "notAfter": "2027-01-30T00:00:00Z",
            "renewalTime": "2026-12-31T00:00:00Z",
            "lastFailure": {"reason": "AcmeServerUnreachable", "message": "connection refused"},
            "failedAttempts": 2,
            "nextAttempt": "2026-11-29T12:00:00Z",
        },
        "components": {
            "daedalus": {
                "image": "ghcr.io/example/daedalus:1",
                "replicas": 2,
                "availableReplicas": 2,
                "version": "d:1",
                "lastGoodVersion": "d:1",
                "failedVersion": "d:2",
                "failedReason": "PodsFailing: crash",
            }
        },
    },
}
EVENTS = [
    {"lastTimestamp": f"2026-11-29T10:0{i}:00Z", "type": "Normal", "reason": f"R{i}"}
    for i in range(10)
]


def test_one_screen_says_what_is_wrong_and_what_comes_next() -> None:
    screen = status_screen(SITE, EVENTS)
    assert "BlogSite blogs/notes  (generation 3, observed 3)" in screen
    assert (
        "CertificateReady False   AcmeServerUnreachable" in screen
    )  # the longest type sets the column
    assert "issued, serial 1f" in screen
    assert "issuer   (STAGING) Counterfeit Cashew R10  (a staging or test CA" in screen
    assert "renewal  planned 2026-12-31T00:00:00Z" in screen
    assert "last failure: AcmeServerUnreachable: connection refused (2 attempt(s); next" in screen
    assert "daedalus      ghcr.io/example/daedalus:1  2/2 available" in screen
    assert "version d:1, last good d:1, failed d:2 (PodsFailing: crash)" in screen
    shown = screen.split("Events:", 1)[1]
    assert "R9" in shown
    assert "R1" not in shown  # only the latest eight


def test_a_canary_under_way_shows_its_step_share_and_figures() -> None:
    canary = {
        "version": "d:3",
        "phase": "Step",
        "step": 2,
        "steps": 3,
        "weight": 25,
        "paused": True,
        "canaryRequests": 120,
        "canaryFailed": 1,
        "stableFailedRate": "0.50%",
    }
    status: dict[str, Any] = {**SITE["status"], "canary": canary}  # type: ignore[dict-item]
    screen = status_screen({**SITE, "status": status}, [])
    assert "canary        d:3: Step 2/3, 25% of requests, paused" in screen
    assert "1 of 120 canary requests failed (stable 0.50%)" in screen


def test_a_site_behind_a_gateway_shows_its_address_and_the_gateways_verdicts() -> None:
    gateway = {
        "name": "shared",
        "namespace": "gateways",
        "routes": [
            {
                "kind": "HTTPRoute",
                "name": "notes-frontend",
                "accepted": "True",
                "resolvedRefs": "True",
            },
            {
                "kind": "TLSRoute",
                "name": "notes-frontend",
                "accepted": "False",
                "resolvedRefs": "True",
                "message": "NotAllowedByListeners: namespace not allowed",
            },
        ],
    }
    status: dict[str, Any] = {
        **SITE["status"],  # type: ignore[dict-item]
        "externalAddresses": ["198.18.0.80"],
        "gateway": gateway,
    }
    screen = status_screen({**SITE, "status": status}, [])
    assert "Reached at:\n  198.18.0.80\n  through Gateway gateways/shared" in screen
    assert "HTTPRoute notes-frontend: accepted True, refs resolved True\n" in screen
    assert (
        "TLSRoute notes-frontend: accepted False, refs resolved True  "
        "NotAllowedByListeners: namespace not allowed"
    ) in screen
    assert "Reached at:\n  none outside the cluster" in status_screen(SITE, [])
