"""Which certificate verdict a site gets, and when a placeholder is (re)made."""

from __future__ import annotations

import datetime
from typing import Any

from blogsite_operator import certs, models
from blogsite_operator.policies.certificate import (
    ServedCertificate,
    certificate_verdict,
    covers,
    needs_placeholder,
)

NOW = datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC)


def spec(**tls: Any) -> models.BlogSiteSpec:
    return models.parse_spec(
        {
            "domains": ["a.example.com"],
            "redirectDomains": ["b.example.com"],
            "daedalus": {"image": "d:1"},
            "tls": tls or {"secretName": "mine"},
        }
    )


def info(
    names: tuple[str, ...], *, placeholder: bool = False, days: int = 30
) -> certs.CertificateInfo:
    return certs.CertificateInfo(
        dns_names=names,
        not_before=NOW - datetime.timedelta(days=1),
        not_after=NOW + datetime.timedelta(days=days),
        serial="1",
        issuer=certs.PLACEHOLDER_ISSUER if placeholder else "Real CA",
    )


def reason(served: ServedCertificate, **tls: Any) -> str:
    return certificate_verdict(spec(**tls), served, NOW).reason


def test_verdicts() -> None:
    names = ("a.example.com", "b.example.com")
    assert reason(ServedCertificate("mine", None)) == "SecretMissing"
    assert reason(ServedCertificate("mine", None, "has no tls.crt")) == "SecretInvalid"
    assert reason(ServedCertificate("mine", info(names, placeholder=True))) == "Placeholder"
    assert reason(ServedCertificate("mine", info(("a.example.com",)))) == "NamesNotCovered"
    assert reason(ServedCertificate("mine", info(names, days=-1))) == "Expired"
    assert reason(ServedCertificate("mine", info(names))) == "Valid"
    assert reason(ServedCertificate("mine", info(("*.example.com",)))) == "Valid"


def test_wildcards_cover_one_label_only() -> None:
    assert covers(("*.example.com",), "a.example.com")
    assert not covers(("*.example.com",), "a.b.example.com")
    assert not covers(("*.example.com",), "example.com")


def test_placeholder_is_made_when_missing_or_for_other_names_never_over_a_real_one() -> None:
    names = ["a.example.com"]
    assert needs_placeholder(names, ServedCertificate("s", None))
    assert needs_placeholder(names, ServedCertificate("s", info(("x.com",), placeholder=True)))
    assert not needs_placeholder(
        names, ServedCertificate("s", info(("a.example.com",), placeholder=True))
    )
    assert not needs_placeholder(names, ServedCertificate("s", info(("x.com",))))


def test_placeholder_certificate_round_trip() -> None:
    cert_pem, key_pem = certs.self_signed_placeholder(["a.example.com", "b.example.com"], now=NOW)
    parsed = certs.certificate_info(cert_pem)
    assert parsed.is_placeholder
    assert parsed.dns_names == ("a.example.com", "b.example.com")
    assert parsed.not_after > NOW
    assert b"PRIVATE KEY" in key_pem
