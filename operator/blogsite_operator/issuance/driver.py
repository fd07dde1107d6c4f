"""One reconcile's worth of ACME: fold the last job's result, decide, maybe start one.

What must survive a restart (failed attempts, next attempt, the last renewal
info, the renewal request honoured) lives in `status.certificate`; this
module reads it from the previous status and returns the fields to write.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blogsite_operator import models
from blogsite_operator.issuance.issuer import IssueJob, JobResult, RenewalInfoJob, SiteKey
from blogsite_operator.issuance.protocol import directory_url
from blogsite_operator.policies.certificate import (
    RenewalInfo,
    RenewalPlan,
    ServedCertificate,
    choose_server,
    last_part_of_life_starts,
    needs_renewal_info,
    next_attempt,
    plan_renewal,
    replaced_certificate_id,
)
from blogsite_operator.policies.ledger import Hold, Ledger, hold
from blogsite_operator.policies.readiness import CONDITION_TRUE, Verdict
from blogsite_operator.render.site import SiteRef
from blogsite_operator.settings import AcmeSettings
from blogsite_operator.timestamps import ceil_second, format_time, parse_time

RENEW_ANNOTATION = "blog.daedalus.dev/renew-certificate"
PREFLIGHT_FAILED = "PreflightFailed"
# A failed preflight spent nothing at the CA: it is made again this soon.
PREFLIGHT_RETRY_SECONDS = 30.0


class Issuer(Protocol):
    settings: AcmeSettings

    def state(self, key: SiteKey) -> tuple[bool, JobResult | None]: ...
    def submit(self, job: IssueJob | RenewalInfoJob) -> bool: ...
    def acknowledge(self, key: SiteKey, result: JobResult) -> None: ...


@dataclass
class AcmeOutcome:
    fields: dict[str, Any]  # merged into status.certificate
    verdict: Verdict  # CertificateReady
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    folded: JobResult | None = None  # acknowledge it once status is written


def drive_acme(
    issuer: Issuer,
    site: SiteRef,
    acme: models.Acme,
    names: list[str],
    served: ServedCertificate,
    *,
    previous: dict[str, Any],
    base_verdict: Verdict,
    renew_request: str | None,
    now: datetime.datetime,
    can_publish: bool = True,
    proxy_protocol: bool = False,
    ledger: Callable[[models.Acme], Ledger | None] | None = None,
    expected_addresses: tuple[str, ...] = (),
    gateway_address: str | None = None,
) -> AcmeOutcome:
    """`can_publish`: the answers ConfigMap exists (the first pass creates it);
    `proxy_protocol`: the frontend's port 80 expects it (the self-check too);
    `ledger`: what an ACME account (of these settings) ordered lately (None:
    not known); `expected_addresses`: where the names must resolve (the
    preflight); `gateway_address`: the shared Gateway the site is behind,
    through which the self-check goes."""
    key = (site.namespace, site.name)
    state = _State.from_status(previous)
    events: list[tuple[str, str, str]] = []

    busy, result = issuer.state(key)
    if result is not None and result.job.id != state.last_job:
        serving = served.info is not None and not served.info.is_placeholder
        expires = served.info.not_after if serving and served.info is not None else None
        events.extend(state.fold(result, issuer.settings, now, expires))
    elif result is None and not busy:
        events.extend(state.recover(served))
    events.extend(state.forget_failure_of_other_names(names))
    # The served certificate was read before this result: after a success the
    # new Secret's own event brings the next pass, which plans from it.
    just_issued = result is not None and isinstance(result.job, IssueJob) and result.error is None

    requeue: datetime.datetime | None = None
    # A new value of the renew annotation orders at once, even during backoff;
    # it is recorded when its order starts, so it asks for one order only.
    # Recorded as a digest: the annotation is the user's text, of any length
    # and content, and the status is no place for it (an older status kept
    # the text itself, which still counts as recorded).
    request = renew_request_digest(renew_request) if renew_request else None
    requested = request is not None and state.renewal_request not in (request, renew_request)
    ordering_from, issued_by_acme = _servers(acme, state, served, now, events)
    plan = plan_renewal(
        acme, names, served, state.renewal_info, renewal_requested=requested, now=now
    )
    if not plan.due and _server_changed(state, served, acme):
        plan = RenewalPlan(True, "ServerChanged", plan.renewal_time)
    # An order that failed is retried (with backoff) until one succeeds, even
    # when what asked for it (a request, a renewal window) is no longer new;
    # so is one a failed preflight held back.
    due = (
        plan.due
        or state.failed_attempts > 0
        or (state.last_failure or {}).get("reason") == PREFLIGHT_FAILED
    )
    reason = plan.reason if plan.due else "RetryingFailedOrder"
    held_before, state.rate_limit_hold = state.rate_limit_hold, None
    if just_issued or (not busy and due and not can_publish):
        pass  # the next pass (new Secret, or new answers ConfigMap) decides
    elif not busy and due:
        target, held = _target_and_hold(
            acme,
            state,
            served,
            _target(ordering_from, served, names),
            lambda t: _ledger_hold(ledger, t.acme, names, issuer.settings, now, renewal=t.renewal),
            names=names,
            now=now,
            events=events,
        )
        ordering_from = target.acme
        if held is not None:  # the CA would refuse this order: wait, and say until when
            events.extend(state.hold(held, held_before))
            requeue = _look_again(held, acme, served, now)
        elif requested or state.next_attempt is None or state.next_attempt <= now:
            issuer.submit(
                IssueJob(
                    site,
                    tuple(names),
                    ordering_from,
                    renewal_request=request if requested else None,
                    proxy_protocol=proxy_protocol,
                    replaces=target.replaces,
                    renewal=target.renewal,
                    expected_addresses=expected_addresses,
                    gateway_address=gateway_address,
                )
            )
            busy = True
            if requested:
                state.renewal_request = request
            events.extend(_issuing(state, len(names), ordering_from.server, reason))
        else:
            requeue = state.next_attempt
    elif (
        not busy
        and served.info is not None
        and served.cert_pem is not None
        and needs_renewal_info(served.info, state.renewal_info, now)
    ):
        # Renewal info from the CA that issued it.
        issuer.submit(RenewalInfoJob(site, issued_by_acme, served.cert_pem, served.info.serial))
        busy = True
    elif not busy:
        requeue = min(
            (t for t in (plan.renewal_time, _next_check(state.renewal_info)) if t is not None),
            default=None,
        )

    fields = state.to_status()
    fields["renewalTime"] = format_time(plan.renewal_time) if plan.renewal_time else None
    if just_issued:
        # Planned from the certificate read before this result: keep the plan
        # that led to the order until the next pass plans from the new one.
        fields["renewalTime"] = previous.get("renewalTime")
    return AcmeOutcome(
        fields=fields,
        verdict=_verdict(base_verdict, state, busy and due, ordering_from.server),
        events=events,
        requeue_after=max((requeue - now).total_seconds(), 1.0) if requeue else None,
        folded=result,
    )


@dataclass
class _State:
    failed_attempts: int = 0
    next_attempt: datetime.datetime | None = None
    last_failure: dict[str, Any] | None = None
    renewal_info: RenewalInfo | None = None
    renewal_request: str | None = None
    issued_by: dict[str, Any] | None = None  # server and serial of our last order
    last_job: str | None = None  # the last job whose result is in status
    rate_limit_hold: str | None = None  # why, and until when, no order may go
    ordering_from: str | None = None  # a fallback CA, until an order succeeds

    @classmethod
    def from_status(cls, previous: dict[str, Any]) -> _State:
        info = previous.get("renewalInfo") or {}
        renewal_info = None
        if info.get("serialNumber") and info.get("nextCheck"):
            renewal_info = RenewalInfo(
                serial=info["serialNumber"],
                renewal_time=_parse(info.get("renewalTime")),
                next_check=_parse(info["nextCheck"])
                or datetime.datetime.min.replace(tzinfo=datetime.UTC),
            )
        return cls(
            failed_attempts=int(previous.get("failedAttempts") or 0),
            next_attempt=_parse(previous.get("nextAttempt")),
            last_failure=previous.get("lastFailure"),
            renewal_info=renewal_info,
            renewal_request=previous.get("renewalRequest"),
            issued_by=previous.get("issuedBy"),
            last_job=previous.get("lastJob"),
            rate_limit_hold=previous.get("rateLimitHold"),
            ordering_from=previous.get("orderingFrom"),
        )

    def hold(self, held: Hold, before: str | None) -> list[tuple[str, str, str]]:
        """No order while the ledger says the CA would refuse it; told once."""
        self.rate_limit_hold = held.message
        if held.message == before:
            return []
        return [("Warning", "RateLimitLedger", f"not ordering: {held.message}")]

    def fold(
        self,
        result: JobResult,
        settings: AcmeSettings,
        now: datetime.datetime,
        expires: datetime.datetime | None = None,
    ) -> list[tuple[str, str, str]]:
        """Take in what a finished job did; the Events that tell the user.
        `expires`: the end of the certificate served, which bounds the backoff."""
        self.last_job = result.job.id
        error = result.error
        if isinstance(result.job, RenewalInfoJob):
            if error is None:
                self.renewal_info = result.renewal_info
                return []
            # Ask again later; a window the CA gave before still stands.
            retry = ceil_second(
                error.retry_after or now + datetime.timedelta(seconds=settings.backoff_seconds)
            )
            known = self.renewal_info
            kept = known.renewal_time if known and known.serial == result.job.serial else None
            self.renewal_info = RenewalInfo(result.job.serial, kept, retry)
            return [("Warning", error.reason, error.message)]
        if result.job.renewal_request is not None:
            self.renewal_request = result.job.renewal_request
        if error is not None and error.reason == "Superseded":
            return []  # not a failure: the next pass orders for what the spec says now
        if error is not None and error.reason == PREFLIGHT_FAILED:
            return self._fold_preflight(result, result.job.names, error.message, settings)
        if error is None:
            self.failed_attempts = 0
            self.next_attempt = None
            self.last_failure = None
            self.renewal_info = None
            self.ordering_from = None  # the next renewal starts with the first CA
            self.issued_by = {
                "server": directory_url(result.job.acme.server),
                "serialNumber": result.serial or "",
            }
            if result.replaced is not None:
                self.issued_by["replaced"] = result.replaced
            until = format_time(result.not_after) if result.not_after else "?"
            events = [
                (
                    "Normal",
                    "CertificateIssued",
                    (
                        f"issued a certificate for {len(result.job.names)} names, serial "
                        f"{result.serial}, valid until {until} "
                        f"({result.acme_requests} ACME requests, {result.seconds:.1f}s)"
                    ),
                )
            ]
            if result.replaces_refused is not None:
                events.append(
                    (
                        "Warning",
                        "ReplacesRefused",
                        (
                            "the CA would not let the order replace the certificate it renews "
                            f"({result.replaces_refused}); it was ordered again without "
                            "`replaces`, so it counted against the CA's rate limits"
                        ),
                    )
                )
            return events
        self.failed_attempts += 1
        self.next_attempt = next_attempt(
            self.failed_attempts,
            result.finished_at,
            base=datetime.timedelta(seconds=settings.backoff_seconds),
            cap=datetime.timedelta(seconds=settings.max_backoff_seconds),
            retry_after=error.retry_after,
            jitter=random.uniform(0, 0.1),  # noqa: S311 - spreading retries, not secrecy
            expires=expires,
        )
        self.last_failure = {
            "time": format_time(result.finished_at),
            "reason": error.reason,
            "message": error.message,
            "names": sorted(result.job.names),
            "server": directory_url(result.job.acme.server),
        }
        return [
            (
                "Warning",
                error.reason,
                (
                    f"{error.message}; attempt {self.failed_attempts} failed, next attempt at "
                    f"{format_time(self.next_attempt)}"
                ),
            )
        ]

    def _fold_preflight(
        self, result: JobResult, names: tuple[str, ...], message: str, settings: AcmeSettings
    ) -> list[tuple[str, str, str]]:
        """Nothing reached the CA: no backoff is earned, the check is made
        again soon (a fixed DNS record orders within a minute), and the same
        finding is told once."""
        told = self.last_failure or {}
        self.next_attempt = ceil_second(
            result.finished_at
            + datetime.timedelta(seconds=min(settings.backoff_seconds, PREFLIGHT_RETRY_SECONDS))
        )
        self.last_failure = {
            "time": format_time(result.finished_at),
            "reason": PREFLIGHT_FAILED,
            "message": message,
            "names": sorted(names),
        }
        if (told.get("reason"), told.get("message")) == (PREFLIGHT_FAILED, message):
            return []
        return [("Warning", PREFLIGHT_FAILED, message)]

    def forget_failure_of_other_names(self, names: list[str]) -> list[tuple[str, str, str]]:
        """A failure of an order for other names (a mistyped domain since
        removed) says nothing about these: its backoff does not hold them back."""
        failure = self.last_failure or {}
        failed_for = failure.get("names")
        if failure.get("reason") == PREFLIGHT_FAILED and failed_for != sorted(names):
            self.next_attempt = None  # a check of the old names: check the new ones now
            self.last_failure = None
            return []
        if not self.failed_attempts or not failed_for or set(failed_for) == set(names):
            return []
        if failure.get("reason") == "RateLimited":
            return []  # the CA's limit (and its Retry-After) may cover these names too
        self.failed_attempts = 0
        self.next_attempt = None
        self.last_failure = None
        return [
            (
                "Normal",
                "BackoffReset",
                (
                    "the names changed since the last failed order: ordering without waiting "
                    "for its backoff"
                ),
            )
        ]

    def recover(self, served: ServedCertificate) -> list[tuple[str, str, str]]:
        """A certificate our order wrote to the Secret whose result this
        status has no record of (the operator stopped before taking it in, or
        the BlogSite was deleted and created again): take it in as that
        order's success instead of ordering again."""
        info = served.info
        if served.issued_by is None or info is None or info.is_placeholder:
            return []
        if (self.issued_by or {}).get("serialNumber") == info.serial:
            return []  # its result was folded
        job, server = served.issued_by
        self.failed_attempts = 0
        self.next_attempt = None
        self.last_failure = None
        self.renewal_info = None
        self.issued_by = {"server": server, "serialNumber": info.serial}
        self.last_job = job
        return [
            (
                "Normal",
                "CertificateRecovered",
                (
                    f"Secret {served.secret_name} holds serial {info.serial}, valid until "
                    f"{format_time(info.not_after)}, from an order this status has no "
                    "record of (a restart, or this BlogSite created again): taken as issued, "
                    "no new order"
                ),
            )
        ]

    def to_status(self) -> dict[str, Any]:
        info = self.renewal_info
        return {
            "failedAttempts": self.failed_attempts or None,
            "nextAttempt": format_time(self.next_attempt) if self.next_attempt else None,
            "lastFailure": self.last_failure,
            "renewalInfo": {
                "serialNumber": info.serial,
                "renewalTime": format_time(info.renewal_time) if info.renewal_time else None,
                "nextCheck": format_time(info.next_check),
            }
            if info
            else None,
            "renewalRequest": self.renewal_request,
            "issuedBy": self.issued_by,
            "lastJob": self.last_job,
            "rateLimitHold": self.rate_limit_hold,
            "orderingFrom": self.ordering_from,
        }


# What status.certificate remembers of ACME (rather than reports): the
# state a pass folds and plans from, and the renewal time it planned.
ACME_MEMORY_FIELDS = frozenset({*_State().to_status(), "renewalTime"})


def renew_request_digest(value: str) -> str:
    """How a renew request is remembered in the status: 'sha256:' and 16 hex digits."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _verdict(base: Verdict, state: _State, issuing: bool, server: str) -> Verdict:
    """CertificateReady: the served certificate, plus what ACME is doing about it."""
    failing = ""
    failure = state.last_failure or {}
    next_at = f", next at {format_time(state.next_attempt)}" if state.next_attempt else ""
    if failure and state.failed_attempts:
        failing = (
            f"{failure.get('message', '')}; {state.failed_attempts} failed attempt(s){next_at}"
        )
    elif failure.get("reason") == PREFLIGHT_FAILED:
        failing = f"{failure.get('message', '')}; checked again{next_at.lstrip(',')}"
    held = state.rate_limit_hold
    if base.status == CONDITION_TRUE:
        extra = (
            "; renewing now" if issuing else (f"; renewal failing: {failing}" if failing else "")
        )
        if held:
            extra += f"; renewal waits for the CA's rate limits: {held}"
        return Verdict(base.status, base.reason, base.message + extra)
    if held and not issuing:
        return Verdict(base.status, "RateLimitLedger", f"{base.message}; not ordering: {held}")
    if issuing:
        return Verdict(base.status, "Issuing", f"ordering a certificate from {server}")
    if failing and state.last_failure is not None:
        return Verdict(base.status, state.last_failure.get("reason", "IssuanceFailed"), failing)
    return base


def _ledger_hold(
    ledger: Callable[[models.Acme], Ledger | None] | None,
    acme: models.Acme,
    names: list[str],
    settings: AcmeSettings,
    now: datetime.datetime,
    *,
    renewal: bool,
) -> Hold | None:
    """Would the CA's limits, as the ordering account's ledger counts them, refuse it?"""
    account_ledger = ledger(acme) if ledger is not None else None
    if account_ledger is None:
        return None
    limits = settings.limits_for(directory_url(acme.server))
    return hold(account_ledger, names, now, limits, exempt=renewal)


def _issuing(state: _State, names: int, server: str, reason: str) -> list[tuple[str, str, str]]:
    """The Event of an order that starts; after a failed preflight it was
    told once already, not at every check."""
    if (state.last_failure or {}).get("reason") == PREFLIGHT_FAILED:
        return []
    message = f"ordering a certificate for {names} names from {server} ({_why(reason)})"
    return [("Normal", "Issuing", message)]


def _why(reason: str) -> str:
    return {
        "SecretMissing": "the TLS Secret is missing",
        "SecretInvalid": "the TLS Secret is damaged",
        "NoCertificate": "no certificate yet",
        "NamesChanged": "the names changed",
        "KeyAlgorithmChanged": "the key algorithm changed",
        "RenewalRequested": f"requested with the {RENEW_ANNOTATION} annotation",
        "RenewBefore": "renewBeforeSeconds reached",
        "RenewalInfo": "the CA's renewal window",
        "ThirdOfLifetimeLeft": "a third of its lifetime left",
        "RetryingFailedOrder": "retrying a failed order",
        "ServerChanged": "the ACME server changed",
        "TakingOver": "tls.acme replaces the Secret served before, copied until then",
    }.get(reason, reason)


def _same_names(served: ServedCertificate, names: list[str]) -> bool:
    """The served certificate is for exactly these names: ordering them again
    with `replaces` is a renewal, which the CA's limits exempt."""
    if served.info is None:
        return False
    return {n.lower() for n in served.info.dns_names} == {n.lower() for n in names}


def _server_changed(state: _State, served: ServedCertificate, acme: models.Acme) -> bool:
    """Our certificate came from a CA the spec no longer names (staging ->
    production); one from a fallback stays until its renewal."""
    issued_by = state.issued_by or {}
    return (
        served.info is not None
        and issued_by.get("serialNumber") == served.info.serial
        and issued_by.get("server") not in {directory_url(a.server) for a in acme.servers()}
    )


@dataclass(frozen=True)
class _Target:
    """Where an order goes, the certificate it replaces (an ARI id, for a
    CA that issued the served one) and whether it is a renewal the CA's
    limits exempt (`replaces`, the same names)."""

    acme: models.Acme
    replaces: str | None
    renewal: bool


def _target(acme: models.Acme, served: ServedCertificate, names: list[str]) -> _Target:
    replaces = replaced_certificate_id(served, directory_url(acme.server))
    return _Target(acme, replaces, replaces is not None and _same_names(served, names))


def _target_and_hold(
    acme: models.Acme,
    state: _State,
    served: ServedCertificate,
    target: _Target,
    hold_for: Callable[[_Target], Hold | None],
    *,
    names: list[str],
    now: datetime.datetime,
    events: list[tuple[str, str, str]],
) -> tuple[_Target, Hold | None]:
    """The order's target and the ledger's hold on it, if any. A CA whose
    limits would refuse the order is rate-limited before it is asked: near
    the certificate's end, the next CA gets the order instead, unless its
    own limits would refuse it too (then the order waits where it was)."""
    held = hold_for(target)
    if held is None:
        return target, None
    servers, current, index = _choice(acme, state, served, now, held=held)
    if index == current:
        return target, held
    fallback = _target(servers[index], served, names)
    if hold_for(fallback) is not None:
        return target, held
    why = f"its rate limits would refuse the order ({held.message})"
    _move_on(state, events, servers, current, index, why)
    return fallback, None


def _look_again(
    held: Hold, acme: models.Acme, served: ServedCertificate, now: datetime.datetime
) -> datetime.datetime:
    """When a held order is looked at again: when the hold ends, or sooner
    when the certificate enters the part of its life in which the next CA
    may take the order."""
    if len(acme.servers()) < 2 or served.info is None or served.info.is_placeholder:
        return held.until
    fallback_from = last_part_of_life_starts(served.info)
    return fallback_from if now < fallback_from < held.until else held.until


def _choice(
    acme: models.Acme,
    state: _State,
    served: ServedCertificate,
    now: datetime.datetime,
    *,
    held: Hold | None = None,
) -> tuple[list[models.Acme], int, int]:
    """The CAs of `acme`, the index of the one orders go to now, and of the
    one they should go to (choose_server). `held`: the ledger of the current
    CA's account holds the order."""
    servers = acme.servers()
    urls = [directory_url(a.server) for a in servers]
    current = urls.index(state.ordering_from) if state.ordering_from in urls else 0
    index = choose_server(
        urls,
        failed_at=urls[current],
        failure_reason=(state.last_failure or {}).get("reason"),
        failed_attempts=state.failed_attempts,
        served=served.info,
        now=now,
        held_by_ledger=held is not None,
    )
    return servers, current, index


def _move_on(  # noqa: PLR0917 - one move's facts
    state: _State,
    events: list[tuple[str, str, str]],
    servers: list[models.Acme],
    current: int,
    index: int,
    why: str,
) -> None:
    """Orders go to CA `index` from now on, at once: the failures and
    backoff were the previous CA's."""
    state.ordering_from = directory_url(servers[index].server)
    state.failed_attempts = 0
    state.next_attempt = None
    events.append(
        (
            "Warning",
            "FallingBack",
            (
                f"{servers[current].server} {why} and the served certificate is in the "
                f"last sixth of its life, or there is none: ordering from "
                f"{servers[index].server}"
            ),
        )
    )


def _servers(
    acme: models.Acme,
    state: _State,
    served: ServedCertificate,
    now: datetime.datetime,
    events: list[tuple[str, str, str]],
) -> tuple[models.Acme, models.Acme]:
    """The CA to order from, and the one that issued the served certificate
    (asked for its renewal info)."""
    servers, current, index = _choice(acme, state, served, now)
    if index != current:
        reason = (state.last_failure or {}).get("reason")
        _move_on(state, events, servers, current, index, f"keeps failing ({reason})")
    urls = [directory_url(a.server) for a in servers]
    issued = (state.issued_by or {}).get("server")
    if state.issued_by is not None and issued in urls and len(urls) > 1:
        state.issued_by["fallback"] = urls.index(issued)  # 0: the first CA
    issuer_of_served = next(
        (a for a, u in zip(servers, urls, strict=True) if u == issued), servers[0]
    )
    return servers[index], issuer_of_served


def _next_check(info: RenewalInfo | None) -> datetime.datetime | None:
    return info.next_check if info is not None else None


def _parse(value: Any) -> datetime.datetime | None:
    """A time from our own status; one that does not parse counts as absent."""
    try:
        return parse_time(str(value) if value else None)
    except ValueError:
        return None
