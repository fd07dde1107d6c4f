"""Prometheus metrics, named as cert-manager and client-go name theirs: units
in the name, `_total` counters, `_seconds` histograms.

Label sets are bounded: `namespace`/`name` only on the per-site series (where
one series per site is the point), and every other label takes a handful of
values. No metric carries key material or any user string but a site's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from blogsite_operator.certs import CertificateInfo
from blogsite_operator.timestamps import parse_time

PREFIX = "blogsite"
CONDITION_STATUSES = ("True", "False", "Unknown")
# Seconds: a reconcile pass is milliseconds to seconds; an ACME order seconds to minutes.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ORDER_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric of one operator process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        site = ["namespace", "name"]
        r = self.registry
        self.certificate_expiration = Gauge(
            f"{PREFIX}_certificate_expiration_timestamp_seconds",
            "When the certificate a site serves expires (Unix time).",
            site,
            registry=r,
        )
        self.certificate_issued = Gauge(
            f"{PREFIX}_certificate_issued_timestamp_seconds",
            "When the certificate a site serves became valid (notBefore, Unix time): with "
            "the expiration, its lifetime, which the alerts measure time in.",
            site,
            registry=r,
        )
        self.certificate_renewal = Gauge(
            f"{PREFIX}_certificate_renewal_timestamp_seconds",
            "When the operator plans to renew a site's certificate (Unix time).",
            site,
            registry=r,
        )
        self.served_expiration = Gauge(
            f"{PREFIX}_served_certificate_expiration_timestamp_seconds",
            "When the first-expiring certificate a Ready frontend pod presented to the "
            "served-certificate probe expires (Unix time).",
            site,
            registry=r,
        )
        self.served_issued = Gauge(
            f"{PREFIX}_served_certificate_issued_timestamp_seconds",
            "When that certificate became valid (notBefore, Unix time).",
            site,
            registry=r,
        )
        self.certificate_fallback = Gauge(
            f"{PREFIX}_certificate_fallback_index",
            "Which CA of tls.acme issued the certificate a site serves: 0 for its server, "
            "n for its n-th fallback.",
            site,
            registry=r,
        )
        self.certificate_placeholder = Gauge(
            f"{PREFIX}_certificate_placeholder_status",
            "1 while a site serves the operator's self-signed placeholder (no certificate "
            "issued yet), 0 while it serves a real one.",
            site,
            registry=r,
        )
        self.certificate_ready = Gauge(
            f"{PREFIX}_certificate_ready_status",
            "A site's CertificateReady condition: 1 for its current status, 0 for the others.",
            [*site, "condition"],
            registry=r,
        )
        self.site_condition = Gauge(
            f"{PREFIX}_site_condition",
            "A site's status conditions: 1 for each condition's current status, 0 otherwise.",
            [*site, "type", "status"],
            registry=r,
        )
        self.reverted = Gauge(
            f"{PREFIX}_rollout_reverted_status",
            "1 while a site's component runs its last good version instead of a failed one.",
            [*site, "component"],
            registry=r,
        )
        self.reverts = Counter(
            f"{PREFIX}_rollout_reverts_total",
            "Rollouts the operator reverted to the last good version.",
            ["component", "reason"],
            registry=r,
        )
        self.acme_requests = Counter(
            f"{PREFIX}_acme_client_requests_total",
            "HTTP requests to ACME servers, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.acme_orders = Counter(
            f"{PREFIX}_acme_orders_total",
            "Certificate orders that ended, by outcome (issued, or the failure reason).",
            ["outcome"],
            registry=r,
        )
        self.acme_order_duration = Histogram(
            f"{PREFIX}_acme_order_duration_seconds",
            "How long certificate orders took, whatever their outcome.",
            buckets=ORDER_BUCKETS,
            registry=r,
        )
        self.reconciles = Counter(
            f"{PREFIX}_reconcile_total",
            "Reconcile passes that ended, by outcome (success, conflict, error).",
            ["outcome"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "How long reconcile passes took.",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_workqueue_depth",
            "Sites waiting for a reconcile pass.",
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_workqueue_queue_duration_seconds",
            "How long a site waited between its trigger and the start of its pass.",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.cache_objects = Gauge(
            f"{PREFIX}_cache_objects",
            "Objects in the operator's watch-fed cache.",
            registry=r,
        )
        self.watch_restarts = Counter(
            f"{PREFIX}_watch_restarts_total",
            "Watch streams started again, by resource and reason: expired (410 Gone, "
            "listed again) or failed (a list or watch request failed and is retried).",
            ["resource", "reason"],
            registry=r,
        )
        self.api_requests = Counter(
            f"{PREFIX}_kube_api_requests_total",
            "Requests to the Kubernetes API by the operator's own client, by verb and code.",
            ["verb", "code"],
            registry=r,
        )
        self.leader = Gauge(
            f"{PREFIX}_leader_election_master_status",
            "1 while this process leads (holds the Lease, or runs without one), else 0.",
            registry=r,
        )

    def expose(self) -> bytes:
        return generate_latest(self.registry)

    def observe_site(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """The per-site series, from the status the pass wrote (or kept)."""
        conditions = {c["type"]: c.get("status", "Unknown") for c in status.get("conditions") or []}
        self._observe_certificate(namespace, name, status.get("certificate") or {})
        self._observe_conditions(namespace, name, conditions)
        for component, entry in (status.get("components") or {}).items():
            failed = entry.get("failedVersion")
            reverted = (
                bool(failed) and entry.get("version") == entry.get("lastGoodVersion") != failed
            )
            self.reverted.labels(namespace, name, component).set(int(reverted))

    def _observe_certificate(self, namespace: str, name: str, certificate: dict[str, Any]) -> None:
        placeholder = bool(certificate.get("placeholder"))
        for gauge, field in (
            (self.certificate_expiration, "notAfter"),
            (self.certificate_issued, "notBefore"),
            (self.certificate_renewal, "renewalTime"),
        ):
            # A placeholder's 90 days say nothing of when users see an error.
            seconds = None if placeholder else _unix_time(certificate.get(field))
            if seconds is None:
                _remove(gauge, namespace, name)
            else:
                gauge.labels(namespace, name).set(seconds)
        issued_by = certificate.get("issuedBy") or {}
        from_us = issued_by.get("serialNumber") == certificate.get("serialNumber") is not None
        if from_us and issued_by.get("fallback") is not None:
            self.certificate_fallback.labels(namespace, name).set(issued_by["fallback"])
        else:
            _remove(self.certificate_fallback, namespace, name)
        if certificate:
            self.certificate_placeholder.labels(namespace, name).set(int(placeholder))
        else:
            _remove(self.certificate_placeholder, namespace, name)

    def _observe_conditions(self, namespace: str, name: str, conditions: dict[str, str]) -> None:
        if "CertificateReady" in conditions:
            for value in CONDITION_STATUSES:
                is_current = conditions["CertificateReady"] == value
                self.certificate_ready.labels(namespace, name, value).set(int(is_current))
        else:
            for value in CONDITION_STATUSES:
                _remove(self.certificate_ready, namespace, name, value)
        for kind, current in conditions.items():
            for value in CONDITION_STATUSES:
                self.site_condition.labels(namespace, name, kind, value).set(int(current == value))
        for labels in _series_of(self.site_condition, namespace, name):
            if labels[2] not in conditions:  # a condition the site no longer has
                self.site_condition.remove(*labels)

    def observe_served(self, namespace: str, name: str, first: CertificateInfo | None) -> None:
        """What the served-certificate probe saw expire first (none: no series)."""
        for gauge, moment in (
            (self.served_expiration, first and first.not_after),
            (self.served_issued, first and first.not_before),
        ):
            if moment:
                gauge.labels(namespace, name).set(moment.timestamp())
            else:
                _remove(gauge, namespace, name)

    def forget_site(self, namespace: str, name: str) -> None:
        """A deleted site leaves no series behind."""
        for gauge in (
            self.certificate_expiration,
            self.certificate_issued,
            self.certificate_renewal,
            self.certificate_placeholder,
            self.certificate_fallback,
            self.served_expiration,
            self.served_issued,
        ):
            _remove(gauge, namespace, name)
        for metric in (self.certificate_ready, self.site_condition, self.reverted):
            for labels in _series_of(metric, namespace, name):
                metric.remove(*labels)


def acme_endpoint(url: str, directory: dict[str, str]) -> str:
    """A bounded name for an ACME URL: the directory's own names for its
    entries, else the kind of resource the path names."""
    for name, entry in directory.items():
        # ARI's URL is its directory entry followed by the certificate's id.
        if url == entry or (name == "renewalInfo" and url.startswith(f"{entry}/")):
            return name
    path = urlparse(url).path.lower()
    for word, name in (
        ("authz", "authorization"),
        ("chal", "challenge"),
        ("finalize", "finalize"),
        ("cert", "certificate"),
        ("order", "order"),
        ("acct", "account"),
        ("account", "account"),
        ("renewalinfo", "renewalInfo"),
        ("dir", "directory"),
    ):
        if word in path:
            return name
    return "other"


def _unix_time(value: str | None) -> float | None:
    try:
        moment = parse_time(value)
    except ValueError:
        return None
    return moment.timestamp() if moment else None


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


def _series_of(metric: Any, namespace: str, name: str) -> Iterable[tuple[str, ...]]:
    # prometheus_client keeps no public index of a labelled metric's children.
    with metric._lock:
        return [labels for labels in metric._metrics if labels[:2] == (namespace, name)]


def verb_of(method: str, path: str, query: Iterable[tuple[str, str]] | None) -> str:
    """client-go's verbs: GET of a collection is list, or watch with ?watch."""
    method = method.upper()
    if method == "GET":
        if any(key == "watch" for key, _ in query or ()):
            return "watch"
        return "list" if _is_collection(path) else "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, method.lower()
    )


def _is_collection(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    # /api/v1/pods, /api/v1/namespaces/NS/pods, /apis/G/V/namespaces/NS/R, ...
    core = parts[:1] == ["api"]
    rest = parts[2:] if core else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    return len(rest) == 1


METRICS = Metrics()
