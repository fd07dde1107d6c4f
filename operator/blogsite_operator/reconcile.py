"""One level-based pass over a BlogSite: render, apply what differs, report.

Pure helpers (`is_subset`, `next_status`) decide; `reconcile_site` does the
I/O through `kube.Api` and returns what it did so the caller can log it.
Running it twice in a row makes no second write.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic
from kubernetes.utils import parse_quantity

from blogsite_operator import certs, models
from blogsite_operator.certs import CertificateInfo
from blogsite_operator.challenge_server import CANARY_WEIGHT_KEY, POOL_VERSION_KEYS
from blogsite_operator.issuance.driver import (
    ACME_MEMORY_FIELDS,
    RENEW_ANNOTATION,
    Issuer,
    drive_acme,
)
from blogsite_operator.issuance.issuer import account_secret_name
from blogsite_operator.policies.canary_steps import Reading
from blogsite_operator.policies.certificate import (
    ServedCertificate,
    needs_placeholder,
    served_by_frontend,
)
from blogsite_operator.policies.gateway import GatewayFindings, GatewayJudgement, judge_gateway
from blogsite_operator.policies.ledger import LEDGER_ANNOTATION, Ledger
from blogsite_operator.policies.readiness import (
    CONDITION_FALSE,
    CONDITION_TRUE,
    Verdict,
    component_facts,
    component_verdict,
    progressing_verdict,
    site_verdict,
)
from blogsite_operator.policies.rollout import is_ready
from blogsite_operator.policies.served import Probe, ProbeTarget, served_verdict
from blogsite_operator.render import (
    COMPONENTS,
    RenderSettings,
    SiteFacts,
    SiteRef,
    child_name,
    render_site,
    selector_labels,
)
from blogsite_operator.render.routes import (
    ROUTE_API_VERSIONS,
    ROUTE_KINDS,
    ROUTE_PLURALS,
    route_kinds,
)
from blogsite_operator.render.site import (
    COPIED_FROM_ANNOTATION,
    ISSUED_BY_JOB_ANNOTATION,
    ISSUED_BY_SERVER_ANNOTATION,
    NGINX_CONFIG_LABEL,
    TLS_HASH_ANNOTATION,
    UPSTREAMS_ANNOTATION,
    UPSTREAMS_RESTART_ANNOTATION,
    Component,
    challenges_config_map_name,
    is_leftover_of,
    is_orphan_of,
    is_owned_by,
    label_selector,
    last_issued_secret_name,
    may_write_tls_secret,
    nginx_config_of,
    render_nginx_config_map,
    render_tls_copy,
    render_tls_secret,
    tls_secret_name,
    tls_secret_name_for,
    upstream_services,
    with_nginx_config,
)
from blogsite_operator.rollouts import (
    COMMAND_ANNOTATION,
    RETRY_ANNOTATION,
    ROLLOUT_MEMORY_FIELDS,
    GateResult,
    gate_deployments,
)
from blogsite_operator.timestamps import format_time

logger = logging.getLogger("blogsite_operator")

ROLLOUT_STATUS_FIELDS = ("rolloutRetry", "rolloutCommand", "canary")

CONDITION_FOR_COMPONENT = {
    Component.FRONTEND: "FrontendAvailable",
    Component.DAEDALUS: "DaedalusAvailable",
    Component.CERT_REFRESH: "CertRefreshAvailable",
}


class ClusterApi(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def apply_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None: ...
    def list_objects(
        self, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]: ...
    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None: ...
    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...
    def serves(self, api_version: str, plural: str) -> bool: ...
    def patch_blogsite_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> None: ...
    def post_event(
        self, site: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None: ...


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    """What one pass did, for logs and tests."""

    applied: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # of `applied`, for the Events
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    # Children of a deleted BlogSite of the same name, not yet collected.
    leftovers: list[str] = field(default_factory=list)
    status_written: bool = False
    requeue_after: float | None = None  # look again then, even without an event
    events: list[Event] = field(default_factory=list)
    # Run once the status is written (an ACME result it now records).
    after_status: list[Callable[[], None]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # as written, for metrics
    reverts: list[tuple[str, str]] = field(default_factory=list)  # (component, why)


# Fields whose values are quantities: the API server stores them in canonical
# form ("0.5" as "500m", "1024Mi" as "1Gi"), so they compare as numbers.
QUANTITY_MAPS = frozenset({"requests", "limits"})
QUANTITY_FIELDS = frozenset({"sizeLimit"})


def is_subset(desired: Any, live: Any, field_name: str = "") -> bool:
    """True when every field we set already has our value in the live object.

    The API server adds defaults and status, so equality is too strict; a
    field we own that differs (a hand edit, a spec change) makes this False.
    """
    if isinstance(desired, dict):
        if field_name in QUANTITY_MAPS:
            return (
                isinstance(live, dict)
                and desired.keys() <= live.keys()
                and all(same_quantity(value, live[key]) for key, value in desired.items())
            )
        return isinstance(live, dict) and all(
            is_subset(value, live[key], key) if key in live else _is_omitted_empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
        )
    if field_name in QUANTITY_FIELDS:
        return same_quantity(desired, live)
    return bool(desired == live)


def same_quantity(desired: Any, live: Any) -> bool:
    """Equal as Kubernetes quantities; anything that is not one compares as is."""
    if desired == live:
        return True
    try:
        same = parse_quantity(desired) == parse_quantity(live)  # type: ignore[no-untyped-call]
        return bool(same)
    except (ValueError, TypeError):
        return False


def _is_omitted_empty(value: Any) -> bool:
    """Go's `omitempty` drops zero values from API responses: absent means equal."""
    return value in (0, False, "", None, [], {})


def _condition(
    condition_type: str,
    verdict: Verdict,
    generation: int,
    previous: dict[str, dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    old = previous.get(condition_type)
    unchanged = old is not None and old.get("status") == verdict.status
    return {
        "type": condition_type,
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged and old else now,
        "observedGeneration": generation,
    }


def next_status(
    *,
    spec: models.BlogSiteSpec | None,
    generation: int,
    previous: dict[str, Any],
    verdicts: dict[Component, Verdict],
    deployments: dict[Component, dict[str, Any] | None],
    reconciled: Verdict,
    now: str,
    extra_conditions: dict[str, Verdict] | None = None,
    certificate: dict[str, Any] | None = None,
    exposure: Exposure | None = None,
    rollout_memory: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole status the BlogSite should show, keeping unchanged timestamps."""
    old_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    ready = site_verdict(verdicts)
    routed = (extra_conditions or {}).get("GatewayAccepted")
    if ready.status == CONDITION_TRUE and routed is not None and routed.status != CONDITION_TRUE:
        # Pods that serve behind a Gateway that does not route to them serve no one.
        ready = Verdict(CONDITION_FALSE, routed.reason, routed.message)
    if reconciled.status != CONDITION_TRUE:
        ready = Verdict(CONDITION_FALSE, reconciled.reason, reconciled.message)
    progressing = (
        progressing_verdict(
            [component_facts(c, d) for c, d in deployments.items()],
            (extra_conditions or {}).get("RolloutHealthy"),
        )
        if verdicts
        else None
    )
    conditions = [
        _condition("Ready", ready, generation, old_conditions, now),
        *(
            [_condition("Progressing", progressing, generation, old_conditions, now)]
            if progressing
            else []
        ),
        _condition("Reconciled", reconciled, generation, old_conditions, now),
        *(
            _condition(CONDITION_FOR_COMPONENT[c], v, generation, old_conditions, now)
            for c, v in verdicts.items()
        ),
        *(
            _condition(kind, v, generation, old_conditions, now)
            for kind, v in (extra_conditions or {}).items()
        ),
    ]
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    if spec is None:
        # Nothing was decided about the rest: it stays as the status says it,
        # conditions with the generation they were computed for.
        decided = {c["type"] for c in conditions}
        conditions.extend(c for t, c in old_conditions.items() if t not in decided)
        for key in ("primaryDomain", "url", "externalAddresses"):
            status[key] = previous.get(key)
    else:
        scheme = "https" if spec.tls is not None else "http"
        status["primaryDomain"] = spec.primary_domain
        status["url"] = f"{scheme}://{spec.primary_domain}/"
        status["externalAddresses"] = list(exposure.addresses if exposure else ())
        status["gateway"] = exposure.gateway if exposure else None
    status["components"] = _components(deployments, previous, rollout_memory)
    status["certificate"] = certificate
    return status


def _components(
    deployments: dict[Component, dict[str, Any] | None],
    previous: dict[str, Any],
    rollout_memory: dict[str, dict[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """Each component's facts, and its rollout memory: as the gate decided it,
    else as the status remembers it (an invalid spec, a Deployment deleted)."""
    components = {}
    for component, deployment in deployments.items():
        facts = component_facts(component, deployment)
        memory = (rollout_memory or {}).get(component.value)
        if memory is None:
            remembered = (previous.get("components") or {}).get(component.value) or {}
            memory = {k: v for k, v in remembered.items() if k in ROLLOUT_MEMORY_FIELDS}
        if facts.exists:
            components[component.value] = {
                "image": facts.image,
                "replicas": facts.replicas,
                "readyReplicas": facts.ready_replicas,
                "availableReplicas": facts.available_replicas,
                **memory,
            }
        elif any(v is not None for v in memory.values()):
            # The counts as the CRD's defaults fill them in, or every pass
            # would patch them away.
            zero = {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0}
            components[component.value] = {**zero, **memory}
    return components


def external_addresses(service: dict[str, Any] | None) -> list[str]:
    """Where the frontend can be reached from outside: LB ingress, else external IPs."""
    if service is None:
        return []
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    addresses = [i.get("ip") or i.get("hostname") for i in ingress]
    addresses += (service.get("spec") or {}).get("externalIPs") or []
    return [a for a in addresses if a]


def without_nulls(value: Any) -> Any:
    """The status as the API server stores it: a merge patch drops null fields."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; {} when equal.

    Only keys the operator writes are compared: `new` names them all.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if value is None:
            if before is not None:
                patch[key] = None
        elif isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            nested.update({k: None for k in before if k not in value})
            if nested:
                patch[key] = nested
        elif without_nulls(value) != before:
            patch[key] = without_nulls(value)
    return patch


def _describe_invalid(error: pydantic.ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        problems.append(f"spec.{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(problems)


def reconcile_site(
    api: ClusterApi,
    site: dict[str, Any],
    settings: RenderSettings,
    check_nginx: Callable[[models.BlogSiteSpec], str | None] | None = None,
    issuer: Issuer | None = None,
    *,
    before_status: Callable[[Outcome], None] | None = None,
    probe: Probe | None = None,
    read_traffic: Callable[[SiteRef], Reading | None] | None = None,
) -> Outcome:
    """Bring the children of one BlogSite in line with its spec, then report.

    `check_nginx` runs `nginx -t` on the site's configuration (None: valid).
    `issuer` runs ACME orders in the background (None: ACME sites keep their
    placeholder). `probe` asks the Ready frontend pods which certificate they
    present (None: CertificateServed is not reported). `read_traffic` reads
    the site's traffic collector for a canary (None: canaries pass on health).
    """
    outcome = Outcome()
    metadata = site["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    ref = SiteRef(name, namespace, uid)
    generation = int(metadata.get("generation", 0))
    previous_status = site.get("status") or {}
    now = datetime.datetime.now(tz=datetime.UTC)

    spec, reconciled = _parse(site)

    extra_conditions: dict[str, Verdict] = {}
    exposure = Exposure()
    # Memory (status.certificate, rollout memory) stays as it is unless a
    # branch of this pass decides it: an invalid spec decides nothing.
    certificate_status: dict[str, Any] | None = previous_status.get("certificate")
    rollout_memory: dict[str, dict[str, Any]] | None = None
    # What the gate consumed and reports, beside the components' memory.
    rollout_fields = {k: previous_status.get(k) for k in ROLLOUT_STATUS_FIELDS}
    if spec is not None:
        certificate_status = None  # no TLS: no certificate; with TLS, decided below
        served = _ensure_tls_secret(
            api, ref, spec, outcome, issuer, now, previous_status.get("certificate") or {}
        )
        services, upstreams = _ensure_upstreams(api, ref, spec, settings, outcome)
        seen, restart = upstream_facts(
            upstreams,
            api.get_child("Deployment", ref.namespace, child_name(ref.name, Component.FRONTEND)),
        )
        facts = SiteFacts(
            tls_certificate_hash=served.certificate_hash if served else None,
            upstream_addresses=seen,
            upstreams_restart=restart,
        )
        annotations = metadata.get("annotations") or {}
        retry_token = annotations.get(RETRY_ANNOTATION)
        objects = render_site(ref, spec, settings, facts)
        objects, extra_conditions["ConfigValid"] = _gate_nginx_config(
            api, ref, spec, objects, check_nginx
        )
        gate = gate_deployments(
            api,
            ref=ref,
            spec=spec,
            objects=objects,
            previous_status=previous_status,
            retry_token=retry_token,
            now=now,
            command_token=annotations.get(COMMAND_ANNOTATION),
            read_traffic=read_traffic,
        )
        desired = gate.objects
        rollout_memory = gate.memory
        extra_conditions["RolloutHealthy"] = gate.condition
        outcome.events.extend(Event(*event) for event in gate.events)
        outcome.reverts.extend(gate.reverts)
        rollout_fields = {
            "rolloutRetry": gate.retry_consumed or rollout_fields["rolloutRetry"],
            "rolloutCommand": gate.command_consumed or rollout_fields["rolloutCommand"],
            "canary": gate.canary_status,
        }
        routes_served = _routes_served(api, spec, previous_status)
        applied_first = {(o["kind"], o["metadata"]["name"]) for o in services}
        rest = [
            o
            for o in desired
            if (o["kind"], o["metadata"]["name"]) not in applied_first
            # A cluster without the Gateway API has no routes to apply (status says so).
            and (routes_served or o["kind"] not in ROUTE_KINDS)
        ]
        _apply_with_canary_share(api, ref, rest, gate, outcome)
        outcome.events.extend(_apply_events(outcome))
        _prune(api, ref, desired, outcome, routes_served=routes_served)
        exposure = _exposure(api, ref, spec, routes_served, extra_conditions)
        # After the apply: a first order can start in this very pass, its
        # answers ConfigMap now exists.
        certificate_status, certificate_requeue = _certificate_conditions(
            api,
            ref,
            spec,
            served,
            site,
            issuer,
            probe,
            outcome,
            extra_conditions,
            now,
            exposure,
        )
        outcome.requeue_after = min(
            (
                t
                for t in (gate.requeue_after, certificate_requeue, exposure.recheck_after)
                if t is not None
            ),
            default=None,
        )
        reconciled = _reconciled(outcome, reconciled)

    deployments = {
        c: api.get_child("Deployment", namespace, child_name(name, c)) for c in COMPONENTS
    }
    verdicts = (
        {c: component_verdict(component_facts(c, deployments[c])) for c in COMPONENTS}
        if spec is not None
        else {}
    )
    status = next_status(
        spec=spec,
        generation=generation,
        previous=previous_status,
        verdicts=verdicts,
        deployments=deployments,
        reconciled=reconciled,
        now=format_time(now),
        extra_conditions=extra_conditions,
        certificate=certificate_status,
        exposure=exposure,
        rollout_memory=rollout_memory,
    )
    status.update({k: v for k, v in rollout_fields.items() if v is not None or k == "canary"})
    outcome.events.extend(_transition_events(previous_status, status))
    outcome.status = status
    if before_status is not None:
        before_status(outcome)  # a test hook: the moment between side effects and status
    _write_status(api, site, merge_patch(previous_status, status), outcome)
    return outcome


def _apply_with_canary_share(
    api: ClusterApi, ref: SiteRef, desired: list[dict[str, Any]], gate: GateResult, outcome: Outcome
) -> None:
    """Requests leave a canary before its pods do, and reach new pods after.

    The canary Deployment changes with every step (its state annotation):
    the steps have Events of their own, so its updates get no "Updated".
    """
    _share_requests(api, ref, gate, outcome, fewer=True)
    _apply_all(api, ref, desired, outcome)
    _share_requests(api, ref, gate, outcome, fewer=False)
    canary = f"Deployment {child_name(ref.name, Component.CANARY)}"
    outcome.updated = [updated for updated in outcome.updated if updated != canary]


def _share_requests(
    api: ClusterApi, ref: SiteRef, gate: GateResult, outcome: Outcome, *, fewer: bool
) -> None:
    """Tell cert-refresh (and through it the frontends) the canary's share,
    when it is smaller than now (`fewer`) or larger (not `fewer`)."""
    if gate.canary_weight is None:
        return
    name = challenges_config_map_name(ref.name)
    live = api.get_child("ConfigMap", ref.namespace, name)
    if live is None or not is_owned_by(live, ref.uid):
        return
    data = live.get("data") or {}
    current = data.get(CANARY_WEIGHT_KEY, "0")
    now = int(current) if current.isdigit() else 0
    if (gate.canary_weight < now) != fewer:
        return
    wanted = {
        CANARY_WEIGHT_KEY: str(gate.canary_weight),
        POOL_VERSION_KEYS["daedalus"]: gate.pool_versions.get("stable", ""),
        POOL_VERSION_KEYS["daedalus_canary"]: gate.pool_versions.get("canary", ""),
    }
    if all(data.get(k, "0" if k == CANARY_WEIGHT_KEY else "") == v for k, v in wanted.items()):
        return
    api.merge_patch("ConfigMap", ref.namespace, name, {"data": wanted})


def _write_status(
    api: ClusterApi, site: dict[str, Any], patch: dict[str, Any], outcome: Outcome
) -> None:
    """The status patch (if anything changed), then the pass's Events, then
    what waits for the status to record it."""
    metadata = site["metadata"]
    if patch:
        api.patch_blogsite_status(
            metadata["namespace"], metadata["name"], metadata["resourceVersion"], patch
        )
        outcome.status_written = True
    for event in outcome.events:
        _post_best_effort(api, site, event)
    for done in outcome.after_status:
        done()


def _reconciled(outcome: Outcome, applied: Verdict) -> Verdict:
    """Reconciled: Applied, unless an object was in the way."""
    if outcome.conflicts:
        return Verdict(
            CONDITION_FALSE,
            "NameConflict",
            "left untouched because another owner has them: "
            + ", ".join(outcome.conflicts)
            + "; delete or rename them, or rename this BlogSite",
        )
    if outcome.leftovers:
        return Verdict(
            CONDITION_FALSE,
            "WaitingForCleanup",
            "the deleted BlogSite of this name still owns "
            + ", ".join(outcome.leftovers)
            + "; waiting for the garbage collector to remove them",
        )
    return applied


def _post_best_effort(api: ClusterApi, site: dict[str, Any], event: Event) -> None:
    """An Event is news, not state: a refused one (429, a timeout) is logged
    and the pass goes on, so what the status now records is acknowledged."""
    try:
        api.post_event(site, event.type, event.reason, event.message)
    except Exception as error:  # noqa: BLE001 - any failure to post means the same
        logger.warning("could not post the %s Event: %s", event.reason, error)


def _certificate_conditions(  # noqa: PLR0917 - one pass's facts, passed on
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    served: ServedCertificate | None,
    site: dict[str, Any],
    issuer: Issuer | None,
    probe: Probe | None,
    outcome: Outcome,
    conditions: dict[str, Verdict],
    now: datetime.datetime,
    exposure: Exposure,
) -> tuple[dict[str, Any] | None, float | None]:
    """CertificateReady and CertificateServed into `conditions`;
    status.certificate, and when to look again (ACME, the probe)."""
    certificate_status: dict[str, Any] | None = None
    ready_pods = _ready_frontend_pods(api, ref) if served is not None else []
    requeues: list[float | None] = []
    if served is not None:
        conditions["CertificateReady"], certificate_status, acme_requeue = _certificate(
            api,
            ref,
            spec,
            served,
            site=site,
            issuer=issuer,
            outcome=outcome,
            now=now,
            ready_pods=ready_pods,
            exposure=exposure,
        )
        requeues.append(acme_requeue)
    if probe is not None:
        on_the_wire, probe_requeue = _probe_served(
            probe, ref, spec, ready_pods, served, certificate_status, site.get("status") or {}, now
        )
        if on_the_wire is not None:
            conditions["CertificateServed"] = on_the_wire
        requeues.append(probe_requeue)
    return certificate_status, min((t for t in requeues if t is not None), default=None)


def _certificate(
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    served: ServedCertificate,
    *,
    site: dict[str, Any],
    issuer: Issuer | None,
    outcome: Outcome,
    now: datetime.datetime,
    ready_pods: list[dict[str, Any]],
    exposure: Exposure,
) -> tuple[Verdict, dict[str, Any] | None, float | None]:
    """CertificateReady, status.certificate and when to look again (ACME).

    Both describe what the frontend serves; ACME decides from the Secret.
    """
    previous: dict[str, Any] | None = (site.get("status") or {}).get("certificate")
    verdict, status = served_by_frontend(
        spec,
        served,
        served_hashes=frozenset(
            (pod["metadata"].get("annotations") or {}).get(TLS_HASH_ANNOTATION)
            for pod in ready_pods
        ),
        previous_status=previous,
        now=now,
    )
    acme = spec.tls.acme if spec.tls is not None else None
    if acme is None:
        return verdict, status, None
    if issuer is None or f"Secret {served.secret_name}" in outcome.conflicts:
        # Nothing about ACME was decided: its memory stays as it was.
        kept = {k: v for k, v in (previous or {}).items() if k in ACME_MEMORY_FIELDS}
        return verdict, {**(status or {}), **kept}, None
    answers = api.get_child("ConfigMap", ref.namespace, challenges_config_map_name(ref.name))
    driven = drive_acme(
        issuer,
        ref,
        acme,
        [*spec.domains, *spec.redirect_domains],
        served,
        previous=previous or {},
        base_verdict=verdict,
        renew_request=(site["metadata"].get("annotations") or {}).get(RENEW_ANNOTATION),
        now=now,
        can_publish=is_owned_by(answers, ref.uid) if answers is not None else False,
        proxy_protocol=spec.frontend.proxy_protocol,
        ledger=lambda account: _ledger_of(api, ref.namespace, account),
        expected_addresses=exposure.addresses,
        gateway_address=exposure.gateway_address,
    )
    outcome.events.extend(Event(*event) for event in driven.events)
    if driven.folded is not None:
        folded = driven.folded
        outcome.after_status.append(lambda: issuer.acknowledge((ref.namespace, ref.name), folded))
    fields = dict(driven.fields)
    if previous is not None and status is previous:
        # The frontend still serves the previous certificate: keep the renewal
        # time planned for it beside it, not the new one's.
        fields["renewalTime"] = previous.get("renewalTime")
    return driven.verdict, {**(status or {}), **fields}, driven.requeue_after


def _ready_frontend_pods(api: ClusterApi, ref: SiteRef) -> list[dict[str, Any]]:
    """The frontend pods that serve: Ready and not going away."""
    selector = label_selector(selector_labels(ref.name, Component.FRONTEND))
    return [
        pod
        for pod in api.list_objects("Pod", ref.namespace, selector)
        if not pod["metadata"].get("deletionTimestamp") and is_ready(pod)
    ]


def _probe_served(  # noqa: PLR0917 - one pass's facts, passed on
    probe: Probe,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    ready_pods: list[dict[str, Any]],
    served: ServedCertificate | None,
    described: dict[str, Any] | None,
    previous_status: dict[str, Any],
    now: datetime.datetime,
) -> tuple[Verdict | None, float | None]:
    """CertificateServed from the probe of exactly these pods, and when the
    next probe is due. Until a probe of the current pods ends, the last
    finding stands (its message says when it was probed)."""
    targets = frozenset(
        ProbeTarget(pod["metadata"]["name"], address, spec.frontend.proxy_protocol)
        for pod in ready_pods
        if (address := (pod.get("status") or {}).get("podIP"))
    )
    names = (*spec.domains, *spec.redirect_domains) if served is not None else ()
    result, requeue = probe.look((ref.namespace, ref.name), targets, names)
    if not names or not targets:
        return None, None
    if result is None:
        old = next(
            (
                c
                for c in previous_status.get("conditions") or []
                if c.get("type") == "CertificateServed"
            ),
            None,
        )
        if old is None:
            return None, requeue
        return Verdict(old["status"], old.get("reason", ""), old.get("message", "")), requeue
    known: dict[str, str] = {}
    if served is not None and served.info is not None:
        known[served.info.serial] = f"Secret {served.secret_name}"
    if described and described.get("serialNumber"):
        known.setdefault(described["serialNumber"], "status.certificate")
    return served_verdict(result, known_serials=known, now=now), requeue


def _parse(site: dict[str, Any]) -> tuple[models.BlogSiteSpec | None, Verdict]:
    try:
        spec = models.parse_spec(site.get("spec"))
    except pydantic.ValidationError as error:
        return None, Verdict(CONDITION_FALSE, "InvalidSpec", _describe_invalid(error))
    return spec, Verdict(CONDITION_TRUE, "Applied", "all objects are as the spec describes")


def _gate_nginx_config(
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    objects: list[dict[str, Any]],
    check_nginx: Callable[[models.BlogSiteSpec], str | None] | None,
) -> tuple[list[dict[str, Any]], Verdict]:
    """Hold back a new frontend configuration that nginx -t refuses, and only it.

    The frontend Deployment still goes out (its existence, replicas, image and
    certificate are not the configuration's to freeze), mounting the
    configuration already accepted: the one its live template mounts, else the
    newest one this site has, else the spec's without `extraConfig`.
    """
    error = check_nginx(spec) if check_nginx is not None else None
    if error is None:
        return objects, Verdict(CONDITION_TRUE, "Valid", "the nginx configuration passed nginx -t")
    kept, fallback = _accepted_nginx_config(api, ref, spec)
    gated = []
    for obj in objects:
        if obj["kind"] == "ConfigMap" and NGINX_CONFIG_LABEL in obj["metadata"]["labels"]:
            gated.extend([fallback] if fallback is not None else [])
        elif obj["kind"] == "Deployment" and _component_of(obj) == Component.FRONTEND:
            gated.append(with_nginx_config(obj, kept))
        else:
            gated.append(obj)
    serving = (
        "the frontend serves without extraConfig"
        if fallback is not None
        else f"the frontend keeps the configuration in ConfigMap {kept}"
    )
    return gated, Verdict(
        CONDITION_FALSE,
        "NginxConfigInvalid",
        f"not rolled out; {serving}; nginx -t says: {error}",
    )


def _accepted_nginx_config(
    api: ClusterApi, ref: SiteRef, spec: models.BlogSiteSpec
) -> tuple[str, dict[str, Any] | None]:
    """The name of the configuration to keep serving, and the ConfigMap to
    create for it when none of this site's accepted ones is left."""
    configs = api.list_objects(
        "ConfigMap",
        ref.namespace,
        f"app.kubernetes.io/instance={ref.name},{NGINX_CONFIG_LABEL}={ref.name}",
    )
    ours = {c["metadata"]["name"]: c for c in configs if is_owned_by(c, ref.uid)}
    live = api.get_child("Deployment", ref.namespace, child_name(ref.name, Component.FRONTEND))
    mounted = nginx_config_of(live)
    if mounted is not None and mounted in ours:
        return mounted, None
    if ours:
        newest = max(
            ours.values(),
            key=lambda c: (c["metadata"].get("creationTimestamp", ""), c["metadata"]["name"]),
        )
        return newest["metadata"]["name"], None
    plain = spec.model_copy(
        update={"frontend": spec.frontend.model_copy(update={"extra_config": None})}
    )
    fallback = render_nginx_config_map(ref, plain)
    return fallback["metadata"]["name"], fallback


def _component_of(obj: dict[str, Any]) -> Component:
    return Component(obj["metadata"]["labels"]["app.kubernetes.io/component"])


APPLIED_HASH_ANNOTATION = "blog.daedalus.dev/applied-hash"


def stamp_applied_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Mark an object with a hash of everything we apply.

    The comparison with the live object only sees fields we set; a field we
    stopped setting (a removed annotation, say) changes this hash, so it is
    applied, and server-side apply removes what we no longer own.
    """
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    metadata = {**obj["metadata"]}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        APPLIED_HASH_ANNOTATION: digest,
    }
    return {**obj, "metadata": metadata}


def _apply_all(
    api: ClusterApi, ref: SiteRef, desired: list[dict[str, Any]], outcome: Outcome
) -> None:
    """Apply each object whose live fields differ; never touch another owner's."""
    for unstamped in desired:
        obj = stamp_applied_hash(unstamped)
        kind, child = obj["kind"], obj["metadata"]["name"]
        live = api.get_child(kind, ref.namespace, child)
        if live is None:
            if api.apply_if_absent(obj) is not None:
                outcome.applied.append(f"{kind} {child}")
                outcome.created.append(f"{kind} {child}")
                continue
            # Something of that name is in the way that is not known as ours.
            live = api.get(kind, ref.namespace, child)
        if live is not None and is_leftover_of(live, ref):
            outcome.leftovers.append(f"{kind} {child}")  # its deletion brings a pass
            continue
        if live is not None and not (is_owned_by(live, ref.uid) or is_orphan_of(live, ref.name)):
            outcome.conflicts.append(f"{kind} {child}")
            continue
        if live is not None and is_subset(obj, live):
            continue
        api.apply(obj)
        outcome.applied.append(f"{kind} {child}")
        (outcome.created if live is None else outcome.updated).append(f"{kind} {child}")


def _apply_events(outcome: Outcome) -> list[Event]:
    """One Event for what a pass created and one for what it changed."""
    return [
        Event("Normal", verb, f"{verb} {', '.join(objects)}")
        for verb, objects in (("Created", outcome.created), ("Updated", outcome.updated))
        if objects
    ]


def upstream_facts(
    current: str | None, frontend: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(addresses seen, addresses the frontend's pods restarted for).

    A frontend first applied, or applied by an operator before this record,
    is taken to know today's addresses: it is not rolled for them. Only a
    change of an address it knew rolls it. An address not known now (a
    Service that is not this site's, or has no address yet) changes nothing.
    """
    annotations = ((frontend or {}).get("metadata") or {}).get("annotations") or {}
    seen = annotations.get(UPSTREAMS_ANNOTATION)
    template = ((frontend or {}).get("spec") or {}).get("template") or {}
    restart = ((template.get("metadata") or {}).get("annotations") or {}).get(
        UPSTREAMS_RESTART_ANNOTATION
    )
    if current is None:
        return seen, restart
    if seen is not None and seen != current:
        return current, current
    return current, restart


def _ensure_upstreams(
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    settings: RenderSettings,
    outcome: Outcome,
) -> tuple[list[dict[str, Any]], str | None]:
    """Apply the Services the frontend proxies to before anything else, so a
    new site's frontend starts knowing their addresses (no second rollout).

    Returns them, and their addresses as "daedalus=IP,cert-refresh=IP" (None
    while one is not this site's or has no address yet).
    """
    services = upstream_services(ref, spec, settings)
    _apply_all(api, ref, services, outcome)
    addresses = []
    for service in services:
        live = api.get_child("Service", ref.namespace, service["metadata"]["name"])
        address = ((live or {}).get("spec") or {}).get("clusterIP")
        if not address or live is None or not is_owned_by(live, ref.uid):
            return services, None
        addresses.append(f"{_component_of(service).value}={address}")
    return services, ",".join(addresses)


def _routes_served(
    api: ClusterApi, spec: models.BlogSiteSpec, previous_status: dict[str, Any]
) -> bool:
    """Whether this site's routes can exist: asked only of sites behind a
    gateway, or just leaving one, so a cluster without the Gateway API is
    never asked about it."""
    if spec.frontend.gateway is None and not previous_status.get("gateway"):
        return False
    return all(api.serves(ROUTE_API_VERSIONS[k], ROUTE_PLURALS[k]) for k in ROUTE_KINDS)


def _prune_routes(
    api: ClusterApi, ref: SiteRef, wanted: set[tuple[str, str]], outcome: Outcome
) -> None:
    """Delete the routes of a site that left its gateway (or stopped serving HTTPS)."""
    for kind in ROUTE_KINDS:
        route = api.get_child(kind, ref.namespace, child_name(ref.name, Component.FRONTEND))
        if route is not None and (kind, route["metadata"]["name"]) not in wanted:
            _delete_owned(api, ref, {**route, "kind": kind}, outcome)


def _own(obj: dict[str, Any] | None, ref: SiteRef) -> dict[str, Any] | None:
    return obj if obj is not None and is_owned_by(obj, ref.uid) else None


def _judge_gateway(
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    attachment: models.GatewayAttachment,
    routes_served: bool,
) -> GatewayJudgement:
    """From what the Gateway's implementation wrote."""
    kinds = route_kinds(spec)
    findings = GatewayFindings(False, None)
    if routes_served:
        gateway = api.get("Gateway", attachment.namespace or ref.namespace, attachment.name)
        name = child_name(ref.name, Component.FRONTEND)
        # Only our own: a route of that name someone else owns is a NameConflict,
        # never judged as the site's.
        routes = {kind: _own(api.get_child(kind, ref.namespace, name), ref) for kind in kinds}
        findings = GatewayFindings(True, gateway, routes)
    return judge_gateway(attachment, ref.namespace, kinds, findings)


@dataclass(frozen=True)
class Exposure:
    """How the site is reached from outside, for status and the preflight."""

    addresses: tuple[str, ...] = ()  # the Gateway's, then the frontend Service's own
    gateway: dict[str, Any] | None = None  # status.gateway
    recheck_after: float | None = None  # routes and Gateways are read, not watched
    gateway_address: str | None = None  # where the self-check goes, behind a Gateway


def _exposure(
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    routes_served: bool,
    conditions: dict[str, Verdict],
) -> Exposure:
    """The site's external addresses and, behind a gateway, GatewayAccepted
    (into `conditions`) and status.gateway. A site moving onto a gateway
    has both the Gateway's addresses and its own Service's."""
    service = api.get_child("Service", ref.namespace, child_name(ref.name, Component.FRONTEND))
    own = tuple(external_addresses(service))
    attachment = spec.frontend.gateway
    if attachment is None:
        return Exposure(own)
    judgement = _judge_gateway(api, ref, spec, attachment, routes_served)
    conditions["GatewayAccepted"] = judgement.verdict
    return Exposure(
        tuple(dict.fromkeys((*judgement.addresses, *own))),
        {
            "name": attachment.name,
            "namespace": attachment.namespace or ref.namespace,
            "routes": list(judgement.routes),
        },
        judgement.recheck_after,
        judgement.addresses[0] if judgement.addresses else None,
    )


def _prune(
    api: ClusterApi,
    ref: SiteRef,
    desired: list[dict[str, Any]],
    outcome: Outcome,
    *,
    routes_served: bool = False,
) -> None:
    """Delete what this site no longer needs.

    PodDisruptionBudgets go when a component drops to one replica. nginx
    ConfigMaps go once neither the current template nor any retained
    ReplicaSet of the frontend refers to them, so a revert still finds its
    configuration.
    """
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    if routes_served:
        _prune_routes(api, ref, wanted, outcome)
    instance = f"app.kubernetes.io/instance={ref.name}"
    for pdb in api.list_objects("PodDisruptionBudget", ref.namespace, instance):
        if ("PodDisruptionBudget", pdb["metadata"]["name"]) not in wanted:
            _delete_owned(api, ref, pdb, outcome)

    configs = api.list_objects(
        "ConfigMap", ref.namespace, f"{instance},{NGINX_CONFIG_LABEL}={ref.name}"
    )
    in_use = {name for kind, name in wanted if kind == "ConfigMap"}
    live = api.get_child("Deployment", ref.namespace, child_name(ref.name, Component.FRONTEND))
    in_use.update(_config_maps_of((live or {}).get("spec", {}).get("template")))
    if all(c["metadata"]["name"] in in_use for c in configs):
        return  # nothing old to consider: skip reading the ReplicaSets
    frontend = label_selector(selector_labels(ref.name, Component.FRONTEND))
    for replica_set in api.list_objects("ReplicaSet", ref.namespace, frontend):
        in_use.update(_config_maps_of(replica_set["spec"]["template"]))
    for config in configs:
        if config["metadata"]["name"] not in in_use:
            _delete_owned(api, ref, config, outcome)


def _config_maps_of(template: dict[str, Any] | None) -> set[str]:
    volumes = ((template or {}).get("spec") or {}).get("volumes") or []
    return {v["configMap"]["name"] for v in volumes if "configMap" in v}


def _delete_owned(api: ClusterApi, ref: SiteRef, obj: dict[str, Any], outcome: Outcome) -> None:
    if not (is_owned_by(obj, ref.uid) or is_orphan_of(obj, ref.name)):
        return
    metadata = obj["metadata"]
    api.delete(obj["kind"], ref.namespace, metadata["name"], metadata["uid"])
    outcome.deleted.append(f"{obj['kind']} {metadata['name']}")


def _ensure_tls_secret(  # noqa: PLR0917 - one pass's context
    api: ClusterApi,
    ref: SiteRef,
    spec: models.BlogSiteSpec,
    outcome: Outcome,
    issuer: Issuer | None,
    now: datetime.datetime,
    previous: dict[str, Any],
) -> ServedCertificate | None:
    """Read the TLS Secret nginx will mount; in ACME mode, make sure it holds
    something to serve (see _put_back_or_placeholder). `previous`: the
    status.certificate of the last pass."""
    secret_name = tls_secret_name(ref.name, spec)
    if spec.tls is None or secret_name is None:
        return None
    # While an order runs, its result (not a placeholder) is what comes next.
    # Asked before the Secret is read: an order that ends in between has
    # written its certificate by then, and the read sees it.
    ordering = issuer is not None and issuer.state((ref.namespace, ref.name))[0]
    live = api.get("Secret", ref.namespace, secret_name)
    served = read_served_certificate(secret_name, live)
    if spec.tls.acme is None:
        return served  # the user's Secret: read, never written
    if live is not None and is_leftover_of(live, ref):
        outcome.leftovers.append(f"Secret {secret_name}")
        return served
    if live is not None and not may_write_tls_secret(live, ref):
        outcome.conflicts.append(f"Secret {secret_name}")
        return served
    names = [*spec.domains, *spec.redirect_domains]
    kept = api.get_child("Secret", ref.namespace, last_issued_secret_name(ref.name))
    copy_in_the_way = kept is not None and not may_write_tls_secret(kept, ref)
    if kept is not None and is_leftover_of(kept, ref):
        outcome.leftovers.append(f"Secret {last_issued_secret_name(ref.name)}")
    elif copy_in_the_way:
        outcome.conflicts.append(f"Secret {last_issued_secret_name(ref.name)}")
    if copy_in_the_way:
        kept = None  # never read back, never written
    if needs_placeholder(names, served, now) and not ordering:
        served_before = previous.get("secretName")
        return _put_back_or_placeholder(api, ref, served, kept, names, outcome, now, served_before)
    if live is not None and served.issued_by is not None and not copy_in_the_way:
        _keep_a_copy(api, ref, live, served, kept, outcome)
    if live is not None and is_orphan_of(live, ref.name):
        _relabel_kept(api, ref, live)
    return served


def _ledger_of(api: ClusterApi, namespace: str, acme: models.Acme) -> Ledger:
    """What the site's ACME account ordered lately (empty before its first order)."""
    account = api.get_child("Secret", namespace, account_secret_name(acme))
    annotations = ((account or {}).get("metadata") or {}).get("annotations") or {}
    return Ledger.from_annotation(annotations.get(LEDGER_ANNOTATION))


def relabel_kept_of_gone_site(api: ClusterApi, namespace: str, site_name: str) -> None:
    """A pass for a BlogSite that is gone: the certificate it left, if an
    older operator kept it with app.kubernetes.io/instance, gets the site's
    own label now rather than when a site of the name comes back (until
    then a GitOps tool could prune it, and the next site would order anew)."""
    live = api.get("Secret", namespace, tls_secret_name_for(site_name))
    if live is not None and is_orphan_of(live, site_name):
        _relabel_kept(api, SiteRef(site_name, namespace, uid=""), live)


def _relabel_kept(api: ClusterApi, ref: SiteRef, live: dict[str, Any]) -> None:
    """A certificate kept by an older operator carries app.kubernetes.io/instance,
    which GitOps tools take for theirs: the site's own label replaces it, once."""
    labels = live["metadata"].get("labels") or {}
    if "app.kubernetes.io/instance" not in labels:
        return
    # The same Secret applied again with the labels it has now (server-side
    # apply drops the label this field manager set before).
    api.apply(render_tls_copy(ref, live["metadata"]["name"], live))


def _put_back_or_placeholder(  # noqa: PLR0917 - one pass's context
    api: ClusterApi,
    ref: SiteRef,
    served: ServedCertificate,
    kept: dict[str, Any] | None,
    names: list[str],
    outcome: Outcome,
    now: datetime.datetime,
    served_before: str | None,
) -> ServedCertificate:
    """NAME-tls is missing, damaged or a placeholder for other names: put back
    the last issued certificate when it still fits (a re-order can take days
    under the CA's limits); on a switch from `tls.secretName`, copy the
    certificate served until now (ordered over at once); else a placeholder
    so nginx can start."""
    secret_name = served.secret_name
    if served_before is not None and served_before != secret_name:
        user_secret = api.get("Secret", ref.namespace, served_before)
        before = read_served_certificate(served_before, user_secret)
        if user_secret is not None and before.info and _restorable(before.info, names, now):
            copied = render_tls_copy(ref, secret_name, user_secret, copied_from=served_before)
            return _write_tls_secret(
                api,
                copied,
                outcome,
                Event(
                    "Normal",
                    "CertificateCopied",
                    f"Secret {secret_name} holds a copy of the certificate served until now "
                    f"(Secret {served_before}, serial {before.info.serial}) until the first "
                    "order replaces it",
                ),
            )
    copy = read_served_certificate(last_issued_secret_name(ref.name), kept)
    if kept is not None and copy.info is not None and _restorable(copy.info, names, now):
        return _write_tls_secret(
            api,
            render_tls_copy(ref, secret_name, kept),
            outcome,
            Event(
                "Warning",
                "CertificateRestored",
                f"Secret {secret_name} {_why_restored(served)}: put back serial "
                f"{copy.info.serial} from Secret {copy.secret_name}",
            ),
        )
    return _write_tls_secret(
        api,
        render_tls_secret(ref, *certs.self_signed_placeholder(names)),
        outcome,
        Event(
            "Normal",
            "PlaceholderCertificate",
            f"Secret {secret_name} holds a self-signed placeholder for "
            f"{len(names)} names until a real certificate is issued",
        ),
    )


def _write_tls_secret(
    api: ClusterApi, secret: dict[str, Any], outcome: Outcome, event: Event
) -> ServedCertificate:
    """Apply NAME-tls, say why, and read it as the pass goes on with it."""
    api.apply(secret)
    name = secret["metadata"]["name"]
    outcome.applied.append(f"Secret {name}")
    outcome.events.append(event)
    return read_served_certificate(name, secret)


def _keep_a_copy(  # noqa: PLR0917 - one pass's context
    api: ClusterApi,
    ref: SiteRef,
    live: dict[str, Any],
    served: ServedCertificate,
    kept: dict[str, Any] | None,
    outcome: Outcome,
) -> None:
    """Copy a certificate an order issued into NAME-tls-last-issued, once."""
    copy_name = last_issued_secret_name(ref.name)
    if read_served_certificate(copy_name, kept).certificate_hash == served.certificate_hash:
        return
    # Owned by the BlogSite, unlike NAME-tls: deleting the BlogSite and then
    # NAME-tls throws the certificate away (README, TLS).
    copy = render_tls_copy(ref, copy_name, live, owned=True)
    written = api.apply(copy) if kept is not None else api.apply_if_absent(copy)
    if written is None:  # someone else's, not labelled as ours
        outcome.conflicts.append(f"Secret {copy_name}")
    else:
        outcome.applied.append(f"Secret {copy_name}")


def _restorable(info: CertificateInfo, names: list[str], now: datetime.datetime) -> bool:
    """A real certificate for exactly these names, still valid."""
    return not info.is_placeholder and set(info.dns_names) == set(names) and info.not_after > now


def _why_restored(served: ServedCertificate) -> str:
    if served.info is None:
        return f"is damaged ({served.problem})" if served.problem else "was deleted"
    return "held a placeholder for other names"


def read_served_certificate(name: str, secret: dict[str, Any] | None) -> ServedCertificate:
    if secret is None:
        return ServedCertificate(name, None)
    data = secret.get("data") or {}
    if "tls.crt" not in data or "tls.key" not in data:
        return ServedCertificate(name, None, "has no tls.crt and tls.key")
    try:
        cert_pem = base64.b64decode(data["tls.crt"])
        info = certs.certificate_info(cert_pem)
    except ValueError as error:
        return ServedCertificate(name, None, f"tls.crt is not a PEM certificate ({error})")
    if not certs.key_matches(cert_pem, base64.b64decode(data["tls.key"])):
        return ServedCertificate(name, None, "tls.key is not the private key of tls.crt")
    digest = hashlib.sha256(cert_pem).hexdigest()
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    job, server = (
        annotations.get(ISSUED_BY_JOB_ANNOTATION),
        annotations.get(ISSUED_BY_SERVER_ANNOTATION),
    )
    return ServedCertificate(
        name,
        info,
        certificate_hash=digest,
        cert_pem=cert_pem,
        issued_by=(job, server) if job and server else None,
        copied_from=annotations.get(COPIED_FROM_ANNOTATION),
    )


def _transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """Events for condition changes a person would want in `kubectl describe`."""
    before = {c.get("type"): c for c in old.get("conditions") or []}
    events = []
    for condition in new["conditions"]:
        previous = before.get(condition["type"])
        if (
            previous is not None
            and previous.get("status") == condition["status"]
            and (previous.get("reason") == condition["reason"])
        ):
            continue
        if condition["type"] == "Ready":
            if condition["status"] == CONDITION_TRUE:
                events.append(
                    Event("Normal", "Ready", "the site is serving: " + condition["message"])
                )
            elif previous is not None and previous.get("status") == CONDITION_TRUE:
                events.append(Event("Warning", "NotReady", condition["message"]))
        elif condition["type"] in ("Reconciled", "ConfigValid") and (
            condition["status"] == CONDITION_FALSE
        ):
            events.append(Event("Warning", condition["reason"], condition["message"]))
    events.extend(_test_certificate_event(old.get("certificate"), new.get("certificate")))
    return events


def _test_certificate_event(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[Event]:
    """A Warning when the site comes to serve a certificate of a staging or
    test CA (browsers refuse it), once per certificate."""
    if not new or not new.get("testIssuer"):
        return []
    if old and old.get("testIssuer") and old.get("serialNumber") == new.get("serialNumber"):
        return []
    return [
        Event(
            "Warning",
            "TestCertificate",
            f"serving a certificate from a staging or test CA ({new.get('issuer')}): browsers "
            "do not trust it; use a production ACME server for visitors",
        )
    ]
