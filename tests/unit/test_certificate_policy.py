"""Which certificate verdict a site gets, and when a placeholder is (re)made."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from blogsite_operator import certs, models
from blogsite_operator.policies.certificate import (
    MAX_RETRY_AFTER,
    RenewalInfo,
    RenewalPlan,
    ServedCertificate,
    certificate_status,
    certificate_verdict,
    covers,
    needs_placeholder,
    needs_renewal_info,
    next_attempt,
    plan_renewal,
    renewal_time,
    served_by_frontend,
)
from blogsite_operator.policies.readiness import Verdict
from blogsite_operator.timestamps import format_time, parse_time

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


# --- ACME: when to order, and how long to wait after a failure --------------

ACME = models.Acme(email="ops@example.com")
NAMES = ["a.example.com", "b.example.com"]
ISSUED_AT = NOW - datetime.timedelta(days=10)


def issued(
    names: tuple[str, ...] = tuple(NAMES),
    *,
    days: float = 90,
    serial: str = "5ca1ab1e",
    key_algorithm: str = "ECDSAP256",
) -> certs.CertificateInfo:
    """A real (CA-issued) certificate's facts, valid `days` from ISSUED_AT."""
    return certs.CertificateInfo(
        dns_names=names,
        not_before=ISSUED_AT,
        not_after=ISSUED_AT + datetime.timedelta(days=days),
        serial=serial,
        issuer="Real CA",
        key_algorithm=key_algorithm,
    )


def plan(
    served: ServedCertificate | certs.CertificateInfo,
    *,
    acme: models.Acme = ACME,
    names: list[str] = NAMES,
    renewal_info: RenewalInfo | None = None,
    requested: bool = False,
    now: datetime.datetime = NOW,
) -> RenewalPlan:
    if isinstance(served, certs.CertificateInfo):
        served = ServedCertificate("site-tls", served)
    return plan_renewal(acme, names, served, renewal_info, renewal_requested=requested, now=now)


class TestWhatMustBeReplacedNow:
    def test_no_secret(self) -> None:
        assert plan(ServedCertificate("site-tls", None)) == RenewalPlan(True, "SecretMissing", None)

    def test_damaged_secret(self) -> None:
        damaged = ServedCertificate("site-tls", None, "tls.crt is not a PEM certificate")
        assert plan(damaged) == RenewalPlan(True, "SecretInvalid", None)

    def test_placeholder(self) -> None:
        placeholder = info(tuple(NAMES), placeholder=True)
        assert plan(placeholder) == RenewalPlan(True, "NoCertificate", None)

    @pytest.mark.parametrize(
        "on_certificate",
        [("a.example.com",), (*NAMES, "c.example.com"), ("a.example.com", "c.example.com")],
        ids=["fewer", "more", "other"],
    )
    def test_names_changed(self, on_certificate: tuple[str, ...]) -> None:
        assert plan(issued(on_certificate)) == RenewalPlan(True, "NamesChanged", None)

    def test_names_compared_as_a_set(self) -> None:
        result = plan(issued(("b.example.com", "a.example.com", "a.example.com")))
        assert not result.due
        assert result.reason == "ThirdOfLifetimeLeft"

    def test_key_algorithm_changed(self) -> None:
        rsa = models.Acme(email="ops@example.com", key_algorithm=models.KeyAlgorithm.RSA_2048)
        assert plan(issued(), acme=rsa) == RenewalPlan(True, "KeyAlgorithmChanged", None)
        assert not plan(issued(key_algorithm="RSA2048"), acme=rsa).due

    def test_a_request_does_not_hide_why_the_certificate_must_go(self) -> None:
        assert plan(issued(("x.example.com",)), requested=True).reason == "NamesChanged"


class TestWhenToRenew:
    def test_a_third_of_the_lifetime_left_without_other_rules(self) -> None:
        at = ISSUED_AT + datetime.timedelta(days=60)
        assert plan(issued(), now=at - datetime.timedelta(seconds=1)) == RenewalPlan(
            False, "ThirdOfLifetimeLeft", at
        )
        assert plan(issued(), now=at) == RenewalPlan(True, "ThirdOfLifetimeLeft", at)

    def test_renew_before_seconds(self) -> None:
        acme = models.Acme(email="ops@example.com", renew_before_seconds=7 * 24 * 3600)
        at = ISSUED_AT + datetime.timedelta(days=83)
        ari = RenewalInfo("5ca1ab1e", NOW, NOW + datetime.timedelta(hours=6))
        assert plan(issued(), acme=acme, renewal_info=ari) == RenewalPlan(False, "RenewBefore", at)
        assert plan(issued(), acme=acme, now=at).due

    @pytest.mark.parametrize("days", [6, 7], ids=["longer", "equal"])
    def test_renew_before_not_shorter_than_the_lifetime_falls_back(self, days: int) -> None:
        acme = models.Acme(email="ops@example.com", renew_before_seconds=7 * 24 * 3600)
        result = plan(issued(days=days), acme=acme, now=ISSUED_AT)
        assert result.reason == "ThirdOfLifetimeLeft"
        assert result.renewal_time == ISSUED_AT + datetime.timedelta(days=days) * 2 / 3

    def test_renewal_info_for_the_served_serial(self) -> None:
        ari_time = NOW + datetime.timedelta(days=3)
        ari = RenewalInfo("5ca1ab1e", ari_time, NOW + datetime.timedelta(hours=6))
        assert plan(issued(), renewal_info=ari) == RenewalPlan(False, "RenewalInfo", ari_time)
        assert plan(issued(), renewal_info=ari, now=ari_time).due

    def test_renewal_info_never_later_than_a_quarter_of_the_lifetime_left(self) -> None:
        """A window that runs to the certificate's end (Pebble's for short
        lifetimes): a pick a minute before it leaves no time to roll out."""
        certificate = issued()  # 90 days
        late = RenewalInfo("5ca1ab1e", certificate.not_after - datetime.timedelta(minutes=1), NOW)
        latest = certificate.not_after - datetime.timedelta(days=90) / 4
        assert plan(certificate, renewal_info=late) == RenewalPlan(False, "RenewalInfo", latest)
        assert plan(certificate, renewal_info=late, now=latest).due

    def test_renewal_info_for_the_served_serial_can_say_now(self) -> None:
        ari = RenewalInfo("5ca1ab1e", NOW - datetime.timedelta(hours=1), NOW)
        assert plan(issued(), renewal_info=ari) == RenewalPlan(
            True, "RenewalInfo", NOW - datetime.timedelta(hours=1)
        )

    @pytest.mark.parametrize(
        "ari",
        [
            RenewalInfo("0dd", NOW + datetime.timedelta(days=3), NOW),
            RenewalInfo("5ca1ab1e", None, NOW),
        ],
        ids=["other-serial", "no-ari-at-the-ca"],
    )
    def test_renewal_info_ignored_when_not_about_this_certificate(self, ari: RenewalInfo) -> None:
        result = plan(issued(), renewal_info=ari)
        assert result == RenewalPlan(
            False, "ThirdOfLifetimeLeft", ISSUED_AT + datetime.timedelta(days=60)
        )

    def test_a_request_is_due_before_its_time(self) -> None:
        at = ISSUED_AT + datetime.timedelta(days=60)
        assert plan(issued(), requested=True) == RenewalPlan(True, "RenewalRequested", at)

    def test_renewal_time_alone(self) -> None:
        at, basis = renewal_time(ACME, issued(days=9), None)
        assert (at, basis) == (ISSUED_AT + datetime.timedelta(days=6), "ThirdOfLifetimeLeft")


class TestNeedsRenewalInfo:
    def ari(
        self, serial: str = "5ca1ab1e", next_check: datetime.timedelta = datetime.timedelta(hours=1)
    ) -> RenewalInfo:
        return RenewalInfo(serial, NOW + datetime.timedelta(days=20), NOW + next_check)

    def test_never_for_nothing_a_placeholder_or_an_expired_certificate(self) -> None:
        assert not needs_renewal_info(None, None, NOW)
        assert not needs_renewal_info(info(tuple(NAMES), placeholder=True), None, NOW)
        assert not needs_renewal_info(issued(days=10), None, NOW)
        assert not needs_renewal_info(issued(days=9), None, NOW)

    def test_a_real_certificate_not_asked_about_yet(self) -> None:
        assert needs_renewal_info(issued(), None, NOW)

    def test_fresh_answer_for_this_serial_is_kept(self) -> None:
        assert not needs_renewal_info(issued(), self.ari(), NOW)

    def test_answer_for_another_serial(self) -> None:
        assert needs_renewal_info(issued(), self.ari(serial="0dd"), NOW)

    @pytest.mark.parametrize("next_check", [datetime.timedelta(0), -datetime.timedelta(hours=1)])
    def test_stale_answer(self, next_check: datetime.timedelta) -> None:
        assert needs_renewal_info(issued(), self.ari(next_check=next_check), NOW)


BASE = datetime.timedelta(minutes=5)
CAP = datetime.timedelta(hours=6)


def backoff(
    failed_attempts: int,
    *,
    cap: datetime.timedelta = CAP,
    retry_after: datetime.datetime | None = None,
    jitter: float = 0.0,
) -> datetime.timedelta:
    at = next_attempt(
        failed_attempts, NOW, base=BASE, cap=cap, retry_after=retry_after, jitter=jitter
    )
    return at - NOW


class TestNextAttempt:
    def test_doubles_from_base_up_to_the_cap(self) -> None:
        waits = [backoff(n) for n in range(1, 10)]
        assert waits == [BASE * f for f in (1, 2, 4, 8, 16, 32, 64)] + [CAP, CAP]

    def test_a_short_lifetime_bounds_the_wait_to_a_tenth_of_the_time_left(self) -> None:
        def wait(failures: int, left: datetime.timedelta) -> datetime.timedelta:
            at = next_attempt(failures, NOW, base=BASE, cap=CAP, expires=NOW + left)
            return at - NOW

        hours = datetime.timedelta(hours=1)
        # A 160-hour certificate at its renewal time (53 h left): 5.3 h at most.
        assert wait(20, 53 * hours) == 5.3 * hours
        # Near its end: a tenth of what is left, never less than the base.
        assert wait(20, 10 * hours) == hours
        assert wait(20, 30 * datetime.timedelta(minutes=1)) == BASE
        assert wait(20, -hours) == BASE  # expired: as often as the base allows
        # A 90-day certificate with 30 days left: the usual cap.
        assert wait(20, 30 * 24 * hours) == CAP
        assert wait(1, 10 * hours) == BASE  # the first retries are short anyway

    def test_no_overflow_after_very_many_failures(self) -> None:
        assert backoff(10_000) == CAP

    def test_jitter_stretches_the_delay(self) -> None:
        assert backoff(1, jitter=0.1) == BASE * 1.1
        assert backoff(3, jitter=0.05) == BASE * 4 * 1.05

    def test_retry_after_later_than_the_backoff_wins(self) -> None:
        later = NOW + datetime.timedelta(hours=1)
        assert backoff(1, retry_after=later) == datetime.timedelta(hours=1)

    def test_a_retry_after_between_seconds_is_kept_to_the_second_above(self) -> None:
        # Status keeps whole seconds; read back, the time must not be early.
        later = NOW + datetime.timedelta(hours=1, milliseconds=300)
        assert backoff(1, retry_after=later) == datetime.timedelta(hours=1, seconds=1)
        at = next_attempt(1, NOW, base=BASE, cap=CAP, retry_after=later)
        reread = parse_time(format_time(at))
        assert reread is not None
        assert reread >= later

    def test_retry_after_earlier_than_the_backoff_is_not_a_shortcut(self) -> None:
        assert backoff(2, retry_after=NOW + datetime.timedelta(seconds=10)) == BASE * 2

    def test_absurd_retry_after_waits_a_day_at_most(self) -> None:
        absurd = NOW + datetime.timedelta(days=400)
        assert backoff(1, retry_after=absurd) == MAX_RETRY_AFTER == datetime.timedelta(days=1)

    def test_capped_retry_after_never_shortens_a_longer_backoff(self) -> None:
        long_cap = datetime.timedelta(days=3)
        without = backoff(12, cap=long_cap)
        with_header = backoff(12, cap=long_cap, retry_after=NOW + datetime.timedelta(days=10))
        assert without == long_cap
        assert with_header >= without


SITE_NAMES = ("a.example.com", "b.example.com")


def in_secret(
    names: tuple[str, ...] = SITE_NAMES,
    *,
    serial: str = "02",
    days: int = 60,
    placeholder: bool = False,
) -> ServedCertificate:
    """A certificate as the Secret holds it, hashed as the pods name it."""
    facts = certs.CertificateInfo(
        dns_names=names,
        not_before=NOW - datetime.timedelta(days=1),
        not_after=NOW + datetime.timedelta(days=days),
        serial=serial,
        issuer=certs.PLACEHOLDER_ISSUER if placeholder else "Real CA",
    )
    return ServedCertificate("s-tls", facts, certificate_hash=f"hash-{serial}")


def recorded(served: ServedCertificate) -> dict[str, Any]:
    """How status.certificate described it while it was served."""
    described = certificate_status(served)
    assert described is not None
    return described


class TestServedByFrontend:
    """CertificateReady and status.certificate describe what Ready frontend pods serve."""

    def served(
        self,
        secret: ServedCertificate,
        previous: dict[str, Any] | None,
        *pod_hashes: str | None,
        **tls: Any,
    ) -> tuple[Verdict, dict[str, Any] | None]:
        return served_by_frontend(
            spec(**tls),
            secret,
            served_hashes=frozenset(pod_hashes),
            previous_status=previous,
            now=NOW,
        )

    def test_once_every_ready_pod_loaded_it_the_secrets_certificate_is_served(self) -> None:
        old, new = in_secret(serial="01"), in_secret()
        verdict, described = self.served(new, recorded(old), "hash-02")
        assert (verdict.status, verdict.reason) == ("True", "Valid")
        assert described == recorded(new)

    def test_a_renewal_rolling_out_keeps_the_old_certificate_in_status(self) -> None:
        old, new = in_secret(serial="01"), in_secret()
        for pods in (("hash-01",), ("hash-01", "hash-02")):
            verdict, described = self.served(new, recorded(old), *pods)
            assert described == recorded(old)
            assert (verdict.status, verdict.reason) == ("True", "Valid")
            assert "serving the previous certificate (serial 01" in verdict.message
            assert "serial 02 from Secret s-tls" in verdict.message

    def test_a_served_certificate_without_a_name_the_spec_added_is_not_ready(self) -> None:
        # A domain was added: the new certificate waits for room on a node
        # while the Ready pods still serve one without it.
        old = in_secret(("a.example.com",), serial="01", days=5)
        verdict, described = self.served(in_secret(), recorded(old), "hash-01")
        assert (verdict.status, verdict.reason) == ("False", "NamesNotCovered")
        assert "b.example.com" in verdict.message
        assert described == recorded(old)  # what users get: its names, its 5 days

    def test_pods_serving_an_old_and_a_new_certificate_are_judged_by_both(self) -> None:
        old = in_secret(("a.example.com",), serial="01")
        verdict, _ = self.served(in_secret(), recorded(old), "hash-01", "hash-02")
        assert verdict.reason == "NamesNotCovered"
        expired = in_secret(serial="01", days=-1)
        assert self.served(in_secret(), recorded(expired), "hash-01")[0].reason == "Expired"

    def test_the_first_certificate_rolling_out_over_the_placeholder_is_not_ready(self) -> None:
        placeholder = in_secret(serial="01", placeholder=True)
        verdict, described = self.served(in_secret(), recorded(placeholder), "hash-01")
        assert described == recorded(placeholder)
        assert (verdict.status, verdict.reason) == ("False", "Placeholder")

    def test_a_certificate_the_operator_has_no_record_of_is_not_ready(self) -> None:
        # The Secret changed twice within one rollout, or no status recorded
        # the certificate the pods were started with.
        for previous in (None, recorded(in_secret(serial="01"))):
            verdict, _ = self.served(in_secret(serial="03"), previous, "hash-02")
            assert (verdict.status, verdict.reason) == ("False", "RollingOut")
            assert "serial 03 from Secret s-tls" in verdict.message

    def test_with_no_ready_frontend_pod_nothing_is_served(self) -> None:
        verdict, described = self.served(in_secret(), recorded(in_secret()))
        assert (verdict.status, verdict.reason) == ("False", "NotServed")
        assert "no frontend pod is Ready" in verdict.message
        assert described == recorded(in_secret())

    def test_a_secret_that_is_not_usable_says_so_when_no_pod_serves(self) -> None:
        missing = ServedCertificate("s-tls", None)
        verdict, described = self.served(missing, None)
        assert (verdict.status, verdict.reason) == ("False", "SecretMissing")
        assert described is None

    def test_a_secret_that_is_not_usable_says_so_whatever_the_pods_run(self) -> None:
        # A user's own Secret deleted: the Ready pods still serve the last
        # certificate, but a pod started now could not.
        old = in_secret(serial="01")
        for secret in (ServedCertificate("s-tls", None), ServedCertificate("s-tls", None, "bad")):
            verdict, described = self.served(secret, recorded(old), "hash-01")
            assert verdict.status == "False"
            assert verdict.reason in ("SecretMissing", "SecretInvalid")
            assert "Ready frontend pods still serve serial 01" in verdict.message
            assert described == recorded(old)


def test_a_certificate_copied_on_a_switch_to_acme_is_replaced_at_once() -> None:
    acme = spec(acme={"email": "ops@example.com"}).tls
    assert acme is not None
    assert acme.acme is not None
    copied = ServedCertificate("blog-tls", info(SITE_NAMES, days=80), copied_from="mine")
    plan = plan_renewal(acme.acme, list(SITE_NAMES), copied, None, renewal_requested=False, now=NOW)
    assert (plan.due, plan.reason) == (True, "TakingOver")


def test_status_names_the_issuer_and_whether_browsers_trust_it() -> None:
    def status_of(issuer_cn: str) -> dict[str, Any]:
        served = ServedCertificate(
            "mine", dataclasses.replace(info(("a.example.com",)), issuer=issuer_cn)
        )
        status = certificate_status(served)
        assert status is not None
        return status

    assert status_of("R12")["issuer"] == "R12"
    assert status_of("R12")["testIssuer"] is False
    assert status_of("(STAGING) Counterfeit Cashew R10")["testIssuer"] is True
    assert status_of("Pebble Intermediate CA 3f0d2a")["testIssuer"] is True
    # The operator's own placeholder is a placeholder, not a test CA's certificate.
    placeholder = certificate_status(
        ServedCertificate("mine", info(("a.example.com",), placeholder=True))
    )
    assert placeholder is not None
    assert placeholder["testIssuer"] is False
