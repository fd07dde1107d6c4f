"""Is the certificate nginx serves the one the site needs?"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from blogsite_operator import models
from blogsite_operator.certs import CertificateInfo
from blogsite_operator.policies.readiness import CONDITION_FALSE, CONDITION_TRUE, Verdict


@dataclass(frozen=True)
class ServedCertificate:
    """What the TLS Secret holds, as far as the operator could read it."""

    secret_name: str
    info: CertificateInfo | None  # None: missing or unreadable
    problem: str | None = None  # why `info` is None, when the Secret exists
    certificate_hash: str | None = None  # sha256 of tls.crt


def needs_placeholder(names: list[str], served: ServedCertificate) -> bool:
    """ACME mode: (re)create the placeholder when nothing usable is there yet.

    A real certificate is never replaced by a placeholder here: renewal
    decides about real certificates.
    """
    if served.info is None:
        return True
    return served.info.is_placeholder and set(served.info.dns_names) != set(names)


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
            f"the certificate in Secret {secret} expired {_iso(info.not_after)}",
        )
    return Verdict(
        CONDITION_TRUE, "Valid", f"serving Secret {secret}, valid until {_iso(info.not_after)}"
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


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
