"""Is the certificate nginx serves the one the site needs?"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from blogsite_operator import certs, models
from blogsite_operator.certs import CertificateInfo
from blogsite_operator.policies.readiness import CONDITION_FALSE, CONDITION_TRUE, Verdict
from blogsite_operator.timestamps import ceil_second, format_time, parse_time


@dataclass(frozen=True)
class ServedCertificate:
    """What the TLS Secret holds, as far as the operator could read it."""

    secret_name: str
    info: CertificateInfo | None  # None: missing or unreadable
    problem: str | None = None  # why `info` is None, when the Secret exists
    certificate_hash: str | None = None  # sha256 of tls.crt
    cert_pem: bytes | None = field(default=None, repr=False)  # tls.crt, for ARI
    issued_by: tuple[str, str] | None = None  # (job, server) of the order that wrote it
    copied_from: str | None = None  # the Secret it was copied from on a switch to ACME


def needs_placeholder(
    names: list[str], served: ServedCertificate, now: datetime.datetime | None = None
) -> bool:
    """ACME mode: (re)create the placeholder when nothing usable is there yet.

    A real certificate is never replaced by a placeholder here: renewal
    decides about real certificates. A placeholder is remade for new names,
    and when it expires (issuance failing for its whole 90 days).
    """
    info = served.info
    if info is None:
        return True
    if not info.is_placeholder:
        return False
    expired = now is not None and info.not_after <= now
    return expired or set(info.dns_names) != set(names)


def certificate_verdict(
    spec: models.BlogSiteSpec, served: ServedCertificate, now: datetime.datetime
) -> Verdict:
    names = [*spec.domains, *spec.redirect_domains]
    secret = served.secret_name
    acme = spec.tls is not None and spec.tls.acme is not None
    if served.info is None:
        if served.problem is not None:
            return Verdict(CONDITION_FALSE, "SecretInvalid", f"Secret {secret}: {served.problem}")
        return Verdict(
            CONDITION_FALSE,
            "SecretMissing",
            f"Secret {secret} does not exist: create a kubernetes.io/tls Secret with tls.crt "
            "and tls.key in this namespace",
        )
    info = served.info
    if info.is_placeholder:
        return Verdict(
            CONDITION_FALSE,
            "Placeholder",
            "serving a self-signed placeholder certificate"
            + (": ACME issuance has not produced a certificate yet" if acme else ""),
        )
    missing = [n for n in names if not covers(info.dns_names, n)]
    if missing:
        return Verdict(
            CONDITION_FALSE,
            "NamesNotCovered",
            f"the certificate in Secret {secret} does not cover: {', '.join(missing)}",
        )
    if info.not_after <= now:
        return Verdict(
            CONDITION_FALSE,
            "Expired",
            f"the certificate in Secret {secret} expired {format_time(info.not_after)}",
        )
    return Verdict(
        CONDITION_TRUE,
        "Valid",
        f"serving Secret {secret}, valid until {format_time(info.not_after)}",
    )


def certificate_status(served: ServedCertificate) -> dict[str, Any] | None:
    """status.certificate's description of the certificate in the Secret."""
    info = served.info
    if info is None:
        return None
    return {
        "secretName": served.secret_name,
        "notBefore": format_time(info.not_before),
        "notAfter": format_time(info.not_after),
        "dnsNames": list(info.dns_names),
        "serialNumber": info.serial,
        "placeholder": info.is_placeholder,
        "sha256": served.certificate_hash,
        "issuer": info.issuer,
        "testIssuer": certs.is_test_issuer(info.issuer) and not info.is_placeholder,
    }


def recorded_verdict(
    spec: models.BlogSiteSpec, recorded: dict[str, Any], now: datetime.datetime
) -> Verdict:
    """certificate_verdict for a certificate known only from status (a frontend
    pod still serves it, the Secret has moved on)."""
    serial = recorded.get("serialNumber")
    if recorded.get("placeholder"):
        return Verdict(
            CONDITION_FALSE, "Placeholder", "serving a self-signed placeholder certificate"
        )
    names = [*spec.domains, *spec.redirect_domains]
    served_names = tuple(recorded.get("dnsNames") or ())
    missing = [n for n in names if not covers(served_names, n)]
    if missing:
        return Verdict(
            CONDITION_FALSE,
            "NamesNotCovered",
            f"the certificate served (serial {serial}) does not cover: {', '.join(missing)}",
        )
    not_after = parse_time(recorded.get("notAfter"))
    if not_after is None or not_after <= now:
        return Verdict(
            CONDITION_FALSE,
            "Expired",
            f"the certificate served (serial {serial}) expired {recorded.get('notAfter')}",
        )
    return Verdict(
        CONDITION_TRUE,
        "Valid",
        f"serving serial {serial}, valid until {recorded.get('notAfter')}",
    )


def _unusable_secret(
    stored: Verdict, previous_status: dict[str, Any] | None, served_hashes: frozenset[str | None]
) -> tuple[Verdict, dict[str, Any] | None]:
    """The Secret is missing or damaged: a pod started now could not serve
    (ACME mode puts a certificate back in the same pass; a user's own Secret
    is the user's to fix). Say what the Ready pods still serve."""
    previous = previous_status or {}
    if previous.get("sha256") not in served_hashes:
        return stored, None
    return Verdict(
        CONDITION_FALSE,
        stored.reason,
        f"{stored.message}; Ready frontend pods still serve serial "
        f"{previous.get('serialNumber')} (valid until {previous.get('notAfter')}) "
        "until they restart",
    ), previous_status


def served_by_frontend(
    spec: models.BlogSiteSpec,
    secret: ServedCertificate,
    *,
    served_hashes: frozenset[str | None],
    previous_status: dict[str, Any] | None,
    now: datetime.datetime,
) -> tuple[Verdict, dict[str, Any] | None]:
    """CertificateReady and status.certificate, describing what nginx serves.

    nginx loads its certificate when its pod starts, and each frontend pod
    names the one it was started with (its certificate-hash annotation):
    `served_hashes` holds those of the Ready pods. A certificate is known from
    the Secret, or from the status that described it while it was served.
    CertificateReady is True only when every certificate a Ready pod serves
    is known, covers every name of the spec and is valid; status.certificate
    describes the one served longest (the previous one while a new one rolls
    out), so the expiry alert follows what users get.
    """
    stored = certificate_verdict(spec, secret, now)
    stored_status = certificate_status(secret)
    if not served_hashes:
        return _not_served(stored), stored_status or previous_status
    if secret.info is None:
        return _unusable_secret(stored, previous_status, served_hashes)
    if served_hashes == {secret.certificate_hash}:
        return stored, stored_status
    previous = previous_status or {}
    known = {secret.certificate_hash: stored}
    if previous.get("sha256") and previous.get("serialNumber"):
        known.setdefault(previous["sha256"], recorded_verdict(spec, previous, now))
    described = previous_status if previous.get("sha256") in served_hashes else stored_status
    coming = f"serial {secret.info.serial} from Secret {secret.secret_name}"
    if served_hashes - known.keys():
        return Verdict(
            CONDITION_FALSE,
            "RollingOut",
            f"frontend pods serve a certificate that is no longer in Secret "
            f"{secret.secret_name}; until every Ready frontend pod has loaded {coming}",
        ), described
    failing = [
        known[h] for h in sorted(served_hashes, key=str) if known[h].status != CONDITION_TRUE
    ]
    if failing:
        return Verdict(
            CONDITION_FALSE,
            failing[0].reason,
            f"{failing[0].message} (a Ready frontend pod serves it, until every one has "
            f"loaded {coming})",
        ), described
    return Verdict(
        CONDITION_TRUE,
        "Valid",
        f"serving the previous certificate (serial {previous.get('serialNumber')}, valid until "
        f"{previous.get('notAfter')}) until every Ready frontend pod has loaded {coming}",
    ), described


def _not_served(stored: Verdict) -> Verdict:
    """No Ready frontend pod: nothing is served. A Secret nginx could not
    start with is the reason to give; otherwise say that nothing serves."""
    if stored.status != CONDITION_TRUE:
        return stored
    return Verdict(
        CONDITION_FALSE,
        "NotServed",
        f"no frontend pod is Ready, so no certificate is served; {stored.message}",
    )


def covers(certificate_names: tuple[str, ...], host: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard covering exactly one leftmost label."""
    for certificate_name in certificate_names:
        name = certificate_name.lower()
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


# --- ACME: when to (re)issue, and how long to wait after a failure ---------


@dataclass(frozen=True)
class RenewalInfo:
    """What the CA's renewal information (ARI) said about one certificate."""

    serial: str
    renewal_time: datetime.datetime | None  # None: the CA offers no ARI
    next_check: datetime.datetime


@dataclass(frozen=True)
class RenewalPlan:
    due: bool
    reason: str  # CamelCase, for Events: why now, or what sets the time
    renewal_time: datetime.datetime | None  # when renewal is planned, for a valid certificate


def replaced_certificate_id(served: ServedCertificate, server: str) -> str | None:
    """What a new order names in `replaces` (RFC 9773): the served
    certificate's ARI identifier, when this operator obtained it from the
    same ACME server (no CA replaces what another issued). None otherwise."""
    if served.cert_pem is None or served.info is None or served.info.is_placeholder:
        return None
    if served.issued_by is None or served.issued_by[1] != server:
        return None
    try:
        return certs.ari_certificate_id(served.cert_pem)
    except ValueError:
        return None


def plan_renewal(
    acme: models.Acme,
    names: list[str],
    served: ServedCertificate,
    renewal_info: RenewalInfo | None,
    *,
    renewal_requested: bool,
    now: datetime.datetime,
) -> RenewalPlan:
    """Should the operator order a certificate now, and if not, when?"""
    info = served.info
    must_replace = _replacement_reason(acme, names, served)
    if must_replace is not None or info is None:
        return RenewalPlan(True, must_replace or "SecretMissing", None)
    when, basis = renewal_time(acme, info, renewal_info)
    if renewal_requested:
        return RenewalPlan(True, "RenewalRequested", when)
    return RenewalPlan(now >= when, basis, when)


def _replacement_reason(
    acme: models.Acme, names: list[str], served: ServedCertificate
) -> str | None:
    """Why the served certificate cannot stay, whatever its dates say (None: it can)."""
    info = served.info
    if info is None:
        return "SecretInvalid" if served.problem else "SecretMissing"
    if info.is_placeholder:
        return "NoCertificate"
    if served.copied_from is not None:
        return "TakingOver"
    if set(info.dns_names) != set(names):
        return "NamesChanged"
    if info.key_algorithm != str(acme.key_algorithm):
        return "KeyAlgorithmChanged"
    return None


# The latest moment a CA's renewal information may set, as the part of the
# lifetime still left: a window that runs to the certificate's end (Pebble's
# for short lifetimes) lets the client's random pick fall seconds before it,
# with no time left for a rollout. A quarter is later than any sane window
# (Let's Encrypt's sit at a third) and before the expiry alert (a sixth).
LATEST_RENEWAL_LIFE_LEFT = 4


def renewal_time(
    acme: models.Acme, info: CertificateInfo, renewal_info: RenewalInfo | None
) -> tuple[datetime.datetime, str]:
    """renewBefore if set (and shorter than the lifetime), else ARI (never
    later than a quarter of the lifetime left), else a third left."""
    lifetime = info.not_after - info.not_before
    if acme.renew_before_seconds is not None:
        before = datetime.timedelta(seconds=acme.renew_before_seconds)
        if before < lifetime:
            return info.not_after - before, "RenewBefore"
    if (
        renewal_info is not None
        and renewal_info.serial == info.serial
        and renewal_info.renewal_time is not None
    ):
        latest = info.not_after - lifetime / LATEST_RENEWAL_LIFE_LEFT
        return min(renewal_info.renewal_time, latest), "RenewalInfo"
    return info.not_after - lifetime / 3, "ThirdOfLifetimeLeft"


def needs_renewal_info(
    info: CertificateInfo | None, renewal_info: RenewalInfo | None, now: datetime.datetime
) -> bool:
    """Ask the CA for renewal information about a real certificate we have not asked about."""
    if info is None or info.is_placeholder or info.not_after <= now:
        return False
    return (
        renewal_info is None or renewal_info.serial != info.serial or renewal_info.next_check <= now
    )


# Never wait longer than this for a Retry-After: a broken header must not
# park a site for months.
MAX_RETRY_AFTER = datetime.timedelta(days=1)


# A failed renewal waits at most this fraction of the certificate's time left.
LIFETIME_LEFT_PER_RETRY = 10


def next_attempt(
    failed_attempts: int,
    now: datetime.datetime,
    *,
    base: datetime.timedelta,
    cap: datetime.timedelta,
    retry_after: datetime.datetime | None = None,
    jitter: float = 0.0,
    expires: datetime.datetime | None = None,
) -> datetime.datetime:
    """Exponential backoff (base, 2x base, ... up to cap), never before Retry-After.

    `jitter` (0..1) stretches the delay a little so sites that failed together
    (a CA outage) do not all retry in the same second. With `expires` (the
    served certificate's end), the cap is also a tenth of the time left, never
    under `base`: a 6-day certificate near its end tries every few minutes,
    not every 6 hours.
    """
    if expires is not None:
        cap = min(cap, max(base, (expires - now) / LIFETIME_LEFT_PER_RETRY))
    exponent = min(max(failed_attempts - 1, 0), 30)
    delay = min(cap, base * (1 << exponent)) * (1 + jitter)
    at = now + delay
    if retry_after is not None:
        at = max(at, min(retry_after, now + MAX_RETRY_AFTER))
    # Status keeps whole seconds: cut down, a Retry-After would come early.
    return ceil_second(at)


# --- which CA: the first, unless it keeps failing near the end ---------------

# Failures that are the CA's, not the site's: another CA may do better. A
# challenge the site did not answer would fail at any CA.
CA_FAULTS = frozenset(
    {
        "AcmeServerUnreachable",
        "AcmeServerUntrusted",
        "AcmeError",
        "RateLimited",
        "OrderTimeout",
        "BadCertificate",
    }
)
FALLBACK_AFTER_FAILURES = 2
# The last part of a certificate's life, in which a failing CA is given up
# on: a sixth, where BlogSiteCertificateExpiringSoon fires (half of the
# renewal window gone).
LAST_PART_OF_LIFE = 6


def choose_server(
    servers: list[str],
    *,
    failed_at: str | None,
    failure_reason: str | None,
    failed_attempts: int,
    served: CertificateInfo | None,
    now: datetime.datetime,
    held_by_ledger: bool = False,
) -> int:
    """The index of the CA (directory URLs, first to last) to order from.

    The one the failures were at; the next one once it failed
    FALLBACK_AFTER_FAILURES times in a row for a reason of its own, or its
    account's ledger holds the order (the CA would refuse it: rate-limited
    before asking), while nothing usable is served or the certificate has
    less than a sixth of its lifetime left. A success clears the failures:
    the next renewal starts with the first again."""
    current = servers.index(failed_at) if failed_at in servers else 0
    if current + 1 >= len(servers):
        return current
    failing = held_by_ledger or (
        failure_reason in CA_FAULTS and failed_attempts >= FALLBACK_AFTER_FAILURES
    )
    return current + 1 if failing and in_last_part_of_life(served, now) else current


def in_last_part_of_life(info: CertificateInfo | None, now: datetime.datetime) -> bool:
    if info is None or info.is_placeholder:
        return True
    return now > last_part_of_life_starts(info)


def last_part_of_life_starts(info: CertificateInfo) -> datetime.datetime:
    """When a certificate enters the last sixth of its life."""
    return info.not_after - (info.not_after - info.not_before) / LAST_PART_OF_LIFE
