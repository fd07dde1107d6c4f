"""One reconcile's worth of ACME: what is ordered, what status and Events say.

The issuer is a fake that records jobs; the certificates are real (a tiny
local CA signs them) and reach the driver the way a reconcile reads them,
through `read_served_certificate`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blogsite_operator import certs, models
from blogsite_operator.issuance.driver import (
    RENEW_ANNOTATION,
    AcmeOutcome,
    drive_acme,
    renew_request_digest,
)
from blogsite_operator.issuance.issuer import IssueJob, JobResult, RenewalInfoJob, SiteKey
from blogsite_operator.issuance.protocol import IssuanceError, directory_url
from blogsite_operator.policies.certificate import (
    RenewalInfo,
    ServedCertificate,
    certificate_verdict,
)
from blogsite_operator.policies.ledger import Ledger, Limits, Recorded, record
from blogsite_operator.policies.readiness import CONDITION_FALSE, CONDITION_TRUE
from blogsite_operator.reconcile import read_served_certificate
from blogsite_operator.render.site import (
    ISSUED_BY_JOB_ANNOTATION,
    ISSUED_BY_SERVER_ANNOTATION,
    SiteRef,
)
from blogsite_operator.settings import AcmeSettings

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
SITE = SiteRef(name="lethain", namespace="blogs", uid="uid-1")
NAMES = ["a.example.com", "b.example.com"]
SPEC = models.parse_spec(
    {
        "domains": NAMES[:1],
        "redirectDomains": NAMES[1:],
        "daedalus": {"image": "d:1"},
        "tls": {"acme": {"email": "ops@example.com", "server": "letsencrypt"}},
    }
)
assert SPEC.tls is not None
assert SPEC.tls.acme is not None
ACME = SPEC.tls.acme
BACKOFF = AcmeSettings().backoff_seconds


# --- certificates a tiny local CA issues --------------------------------------

CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tiny Test CA")])


def secret(
    cert_pem: bytes, key_pem: bytes, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"annotations": annotations or {}},
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }


def ca_signed(
    names: list[str],
    *,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=10),
    days: int = 90,
) -> tuple[bytes, bytes]:
    """tls.crt and tls.key of a certificate for `names` the tiny local CA signed."""
    key_pem = certs.generate_private_key("ECDSAP256")
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()), False
        )
        .sign(CA_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def issued(
    names: list[str] = NAMES,
    *,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=10),
    days: int = 90,
    by_job: str | None = None,
) -> ServedCertificate:
    """A CA-signed certificate for `names`, as the reconciler reads its Secret."""
    cert_pem, key_pem = ca_signed(names, not_before=not_before, days=days)
    annotations = (
        {
            ISSUED_BY_JOB_ANNOTATION: by_job,
            ISSUED_BY_SERVER_ANNOTATION: directory_url("letsencrypt"),
        }
        if by_job
        else None
    )
    served = read_served_certificate("lethain-tls", secret(cert_pem, key_pem, annotations))
    assert served.info is not None
    assert not served.info.is_placeholder
    return served


def placeholder() -> ServedCertificate:
    served = read_served_certificate(
        "lethain-tls", secret(*certs.self_signed_placeholder(NAMES, now=NOW))
    )
    assert served.info is not None
    assert served.info.is_placeholder
    return served


def serial_of(served: ServedCertificate) -> str:
    assert served.info is not None
    return served.info.serial


# --- a fake issuer and one reconcile pass -------------------------------------


@dataclass
class FakeIssuer:
    settings: AcmeSettings = field(default_factory=AcmeSettings)
    running: bool = False
    result: JobResult | None = None
    jobs: list[IssueJob | RenewalInfoJob] = field(default_factory=list)

    def state(self, key: SiteKey) -> tuple[bool, JobResult | None]:
        assert key == ("blogs", "lethain")
        return self.running, self.result

    def acknowledge(self, key: SiteKey, result: JobResult) -> None:
        assert key == ("blogs", "lethain")
        if self.result is result:
            self.result = None

    def submit(self, job: IssueJob | RenewalInfoJob) -> bool:
        """Records every call, even one the real issuer would refuse."""
        self.jobs.append(job)
        started = not self.running
        self.running = True
        return started


def drive(
    issuer: FakeIssuer,
    served: ServedCertificate,
    *,
    previous: dict[str, Any] | None = None,
    renew_request: str | None = None,
    now: datetime.datetime = NOW,
    can_publish: bool = True,
    status_written: bool = True,
    ledger: Ledger | None = None,
    spec: models.BlogSiteSpec = SPEC,
) -> AcmeOutcome:
    """One pass; like the reconciler, acknowledges a folded result once status is written."""
    assert spec.tls is not None
    assert spec.tls.acme is not None
    outcome = drive_acme(
        issuer,
        SITE,
        spec.tls.acme,
        NAMES,
        served,
        previous=previous or {},
        base_verdict=certificate_verdict(spec, served, now),
        renew_request=renew_request,
        now=now,
        can_publish=can_publish,
        ledger=(lambda _account: ledger) if ledger is not None else None,
    )
    if status_written and outcome.folded is not None:
        issuer.acknowledge(("blogs", "lethain"), outcome.folded)
    return outcome


def status_after(outcome: AcmeOutcome) -> dict[str, Any]:
    """status.certificate as the next pass reads it (a merge patch drops the nulls)."""
    return {k: v for k, v in outcome.fields.items() if v is not None}


def iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def failed(
    *,
    attempts: int = 1,
    next_in: datetime.timedelta = datetime.timedelta(minutes=4),
    message: str = "cannot reach the ACME server: ConnectionError",
) -> dict[str, Any]:
    """status.certificate after `attempts` failed orders."""
    return {
        "failedAttempts": attempts,
        "nextAttempt": iso(NOW + next_in),
        "lastFailure": {
            "time": iso(NOW - datetime.timedelta(minutes=1)),
            "reason": "AcmeServerUnreachable",
            "message": message,
        },
    }


def issue_job() -> IssueJob:
    return IssueJob(SITE, tuple(NAMES), ACME)


# --- the first certificate -----------------------------------------------------


class TestFirstOrder:
    def test_placeholder_starts_one_order(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, placeholder())
        assert issuer.jobs == [issue_job()]
        assert outcome.verdict.status == CONDITION_FALSE
        assert outcome.verdict.reason == "Issuing"
        assert "letsencrypt" in outcome.verdict.message
        assert [(kind, reason) for kind, reason, _ in outcome.events] == [("Normal", "Issuing")]
        assert "no certificate yet" in outcome.events[0][2]
        assert outcome.requeue_after is None  # the job's end triggers the next pass

    def test_missing_secret_starts_an_order_too(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, ServedCertificate("lethain-tls", None))
        assert issuer.jobs == [issue_job()]
        assert "the TLS Secret is missing" in outcome.events[0][2]

    def test_no_second_order_while_one_runs(self) -> None:
        issuer = FakeIssuer()
        first = drive(issuer, placeholder())
        second = drive(issuer, placeholder(), previous=status_after(first))
        assert issuer.jobs == [issue_job()]
        assert second.events == []
        assert second.verdict.reason == "Issuing"
        assert second.requeue_after is None

    def test_nothing_before_the_answers_config_map_exists(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, placeholder(), can_publish=False)
        assert issuer.jobs == []
        assert outcome.events == []
        assert outcome.verdict.reason == "Placeholder"


# --- failures and backoff ------------------------------------------------------


class TestFailedOrder:
    finished_at = NOW - datetime.timedelta(seconds=30)

    def result(self) -> JobResult:
        error = IssuanceError("OrderFailed", "the order failed: unauthorized: no such host")
        return JobResult(issue_job(), self.finished_at, error=error)

    def test_is_folded_into_status(self) -> None:
        issuer = FakeIssuer(result=self.result())
        fields = drive(issuer, placeholder()).fields
        assert fields["failedAttempts"] == 1
        assert fields["lastFailure"] == {
            "time": iso(self.finished_at),
            "reason": "OrderFailed",
            "message": "the order failed: unauthorized: no such host",
            "names": sorted(NAMES),
            "server": "https://acme-v02.api.letsencrypt.org/directory",
        }
        wait = parse(fields["nextAttempt"]) - self.finished_at
        # the base backoff, stretched by at most 10% jitter (and cut to whole seconds)
        assert datetime.timedelta(seconds=BACKOFF) <= wait
        assert wait <= datetime.timedelta(seconds=BACKOFF * 1.1)

    def test_tells_the_user_and_waits(self) -> None:
        issuer = FakeIssuer(result=self.result())
        outcome = drive(issuer, placeholder())
        assert issuer.jobs == []
        assert len(outcome.events) == 1
        kind, reason, message = outcome.events[0]
        assert (kind, reason) == ("Warning", "OrderFailed")
        assert "no such host" in message
        assert "attempt 1 failed" in message
        until = (parse(outcome.fields["nextAttempt"]) - NOW).total_seconds()
        assert outcome.requeue_after is not None
        assert until <= outcome.requeue_after < until + 1
        assert outcome.verdict.status == CONDITION_FALSE
        assert outcome.verdict.reason == "OrderFailed"
        assert "no such host" in outcome.verdict.message
        assert "1 failed attempt(s)" in outcome.verdict.message

    def test_the_next_failure_waits_twice_as_long(self) -> None:
        issuer = FakeIssuer(result=self.result())
        fields = drive(issuer, placeholder(), previous=failed(attempts=1)).fields
        assert fields["failedAttempts"] == 2
        wait = parse(fields["nextAttempt"]) - self.finished_at
        assert datetime.timedelta(seconds=2 * BACKOFF) <= wait
        assert wait <= datetime.timedelta(seconds=2 * BACKOFF * 1.1)

    def test_a_short_lived_certificate_near_its_end_is_retried_within_a_tenth_of_its_time(
        self,
    ) -> None:
        # A 6-day certificate with 10 hours left, its renewal failing for the
        # tenth time: an hour at most, not the 6-hour cap.
        served = issued(not_before=NOW - datetime.timedelta(hours=134), days=6)
        assert served.info is not None
        left = served.info.not_after - self.finished_at
        issuer = FakeIssuer(result=self.result())
        fields = drive(issuer, served, previous=failed(attempts=9)).fields
        assert fields["failedAttempts"] == 10
        wait = parse(fields["nextAttempt"]) - self.finished_at
        assert left / 10 <= wait <= left / 10 * 1.1 + datetime.timedelta(seconds=1)
        assert wait < datetime.timedelta(hours=2)

    def test_retry_after_of_the_ca_is_honoured(self) -> None:
        later = NOW + datetime.timedelta(hours=2)
        error = IssuanceError("RateLimited", "rateLimited: too many certificates", later)
        issuer = FakeIssuer(result=JobResult(issue_job(), self.finished_at, error=error))
        outcome = drive(issuer, placeholder())
        assert outcome.fields["nextAttempt"] == iso(later)
        assert outcome.requeue_after == 2 * 3600


class TestBackoff:
    def test_no_order_before_the_next_attempt(self) -> None:
        issuer = FakeIssuer()
        previous = failed(next_in=datetime.timedelta(seconds=200))
        outcome = drive(issuer, placeholder(), previous=previous)
        assert issuer.jobs == []
        assert outcome.requeue_after == 200
        assert outcome.fields["failedAttempts"] == 1
        assert outcome.fields["nextAttempt"] == previous["nextAttempt"]
        assert outcome.verdict.reason == "AcmeServerUnreachable"

    def test_a_failure_for_names_no_longer_wanted_does_not_hold_an_order_back(self) -> None:
        # A mistyped domain failed the order; the user removed it.
        issuer = FakeIssuer()
        previous = failed(next_in=datetime.timedelta(hours=1))
        previous["lastFailure"]["names"] = [*NAMES, "typo.exmaple.com"]
        outcome = drive(issuer, placeholder(), previous=previous)
        assert issuer.jobs == [issue_job()]
        assert [r for _, r, _ in outcome.events] == ["BackoffReset", "Issuing"]
        assert outcome.fields["failedAttempts"] is None
        assert outcome.fields["lastFailure"] is None

    def test_a_rate_limit_holds_an_order_for_other_names_back(self) -> None:
        issuer = FakeIssuer()
        previous = failed(next_in=datetime.timedelta(hours=1))
        previous["lastFailure"].update(reason="RateLimited", names=["typo.exmaple.com"])
        outcome = drive(issuer, placeholder(), previous=previous)
        assert issuer.jobs == []
        assert outcome.fields["nextAttempt"] == previous["nextAttempt"]

    def test_a_failure_for_the_same_names_keeps_its_backoff(self) -> None:
        issuer = FakeIssuer()
        previous = failed(next_in=datetime.timedelta(hours=1))
        previous["lastFailure"]["names"] = list(reversed(NAMES))
        outcome = drive(issuer, placeholder(), previous=previous)
        assert issuer.jobs == []
        assert outcome.fields["failedAttempts"] == 1

    @pytest.mark.parametrize("late", [datetime.timedelta(0), datetime.timedelta(minutes=3)])
    def test_orders_again_once_it_is_time(self, late: datetime.timedelta) -> None:
        issuer = FakeIssuer()
        previous = failed(next_in=datetime.timedelta(0))
        outcome = drive(issuer, placeholder(), previous=previous, now=NOW + late)
        assert issuer.jobs == [issue_job()]
        assert outcome.verdict.reason == "Issuing"
        # the failure is remembered until an order succeeds
        assert outcome.fields["failedAttempts"] == 1


class TestSuccess:
    def test_a_pass_that_read_the_secret_before_the_result_keeps_the_old_plan(self) -> None:
        old = issued(not_before=NOW - datetime.timedelta(days=80))  # read before the order ended
        result = JobResult(
            issue_job(), NOW, serial="beef", not_after=NOW + datetime.timedelta(days=90)
        )
        previous = {"renewalTime": iso(NOW - datetime.timedelta(minutes=5))}
        outcome = drive(FakeIssuer(result=result), old, previous=previous)
        # Not the old certificate's plan, computed again without its renewal
        # info: the next pass plans from the new one.
        assert outcome.fields["renewalTime"] == previous["renewalTime"]

    def test_clears_failures_and_says_so(self) -> None:
        served = issued()
        result = JobResult(
            issue_job(),
            NOW,
            serial=serial_of(served),
            not_after=NOW + datetime.timedelta(days=90),
            acme_requests=11,
            seconds=4.2,
        )
        issuer = FakeIssuer(result=result)
        previous = failed(attempts=3) | {
            "renewalInfo": {"serialNumber": "0dd", "renewalTime": None, "nextCheck": iso(NOW)}
        }
        outcome = drive(issuer, served, previous=previous)
        assert outcome.fields["renewalInfo"] is None  # it was about the old certificate
        assert outcome.fields["failedAttempts"] is None
        assert outcome.fields["nextAttempt"] is None
        assert outcome.fields["lastFailure"] is None
        assert outcome.events == [
            (
                "Normal",
                "CertificateIssued",
                (
                    f"issued a certificate for 2 names, serial {serial_of(served)}, valid until "
                    f"{iso(NOW + datetime.timedelta(days=90))} (11 ACME requests, 4.2s)"
                ),
            )
        ]
        assert outcome.verdict.status == CONDITION_TRUE
        assert outcome.verdict.reason == "Valid"
        assert "failing" not in outcome.verdict.message
        # The pass that folds the success read the old Secret: it plans nothing;
        # the next one (the new Secret's event) asks for the renewal information.
        assert issuer.jobs == []
        drive(issuer, served, previous=status_after(outcome))
        assert [type(job) for job in issuer.jobs] == [RenewalInfoJob]


class TestReplaces:
    """RFC 9773: a renewal names the certificate it replaces."""

    def test_a_renewal_names_the_certificate_this_operator_obtained_from_the_same_ca(
        self,
    ) -> None:
        served = issued(by_job="job-0")
        issuer = FakeIssuer()
        drive(issuer, served, renew_request="2026-11-25")
        (job,) = issuer.jobs
        assert isinstance(job, IssueJob)
        assert served.cert_pem is not None
        assert job.replaces == certs.ari_certificate_id(served.cert_pem)
        assert job.replaces is not None

    def test_not_a_certificate_of_another_ca_or_the_users(self) -> None:
        for served in (issued(), placeholder()):  # no order of ours wrote these
            issuer = FakeIssuer()
            drive(issuer, served, renew_request="2026-11-25")
            (job,) = issuer.jobs
            assert isinstance(job, IssueJob)
            assert job.replaces is None

    def test_the_replaced_certificate_is_recorded_and_a_refusal_told(self) -> None:
        served = issued(by_job="job-1")
        result = JobResult(
            issue_job(),
            NOW,
            serial=serial_of(served),
            not_after=NOW + datetime.timedelta(days=90),
            replaced="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
        )
        outcome = drive(FakeIssuer(result=result), served)
        assert outcome.fields["issuedBy"]["replaced"] == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        assert [event[1] for event in outcome.events] == ["CertificateIssued"]
        refused = dataclasses.replace(
            result, replaced=None, replaces_refused="alreadyReplaced: already has a replacement"
        )
        outcome = drive(FakeIssuer(result=refused), served)
        assert "replaced" not in outcome.fields["issuedBy"]
        assert [event[:2] for event in outcome.events] == [
            ("Normal", "CertificateIssued"),
            ("Warning", "ReplacesRefused"),
        ]
        assert "alreadyReplaced" in outcome.events[1][2]


def full_ledger() -> Ledger:
    """The CA would refuse a sixth certificate for these names this week."""
    ledger = Ledger()
    for hours in range(5):
        at = NOW - datetime.timedelta(hours=20 - hours)
        ledger = record(ledger, Recorded(orders=1, certificate_for=tuple(NAMES), now=at), Limits())
    return ledger


class TestLedger:
    """The CA would refuse a sixth certificate for these names this week."""

    @staticmethod
    def full() -> Ledger:
        return full_ledger()

    def test_no_order_past_the_limit_and_the_user_is_told_until_when(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, placeholder(), ledger=self.full())
        assert issuer.jobs == []
        until = NOW - datetime.timedelta(hours=20) + datetime.timedelta(hours=168)
        assert "5 certificates for exactly these names" in outcome.fields["rateLimitHold"]
        assert iso(until) in outcome.fields["rateLimitHold"]
        assert [event[:2] for event in outcome.events] == [("Warning", "RateLimitLedger")]
        assert outcome.verdict.reason == "RateLimitLedger"
        assert outcome.requeue_after == (until - NOW).total_seconds()
        # The next pass holds on, quietly.
        again = drive(issuer, placeholder(), ledger=self.full(), previous=status_after(outcome))
        assert issuer.jobs == []
        assert again.events == []
        # Once the oldest certificate ages out, the order goes.
        later = drive(
            issuer, placeholder(), ledger=self.full(), previous=status_after(again), now=until
        )
        assert [type(job) for job in issuer.jobs] == [IssueJob]
        assert later.fields["rateLimitHold"] is None

    def test_an_ari_renewal_of_the_same_names_goes_anyway(self) -> None:
        served = issued(by_job="job-0")
        issuer = FakeIssuer()
        drive(issuer, served, ledger=self.full(), renew_request="2026-11-25")
        (job,) = issuer.jobs
        assert isinstance(job, IssueJob)
        assert job.renewal
        assert job.replaces is not None


# --- renewal information (ARI) and renewal --------------------------------------


class TestRenewalInfo:
    def test_asked_for_a_valid_certificate(self) -> None:
        served = issued()
        assert served.cert_pem is not None
        issuer = FakeIssuer()
        outcome = drive(issuer, served)
        assert issuer.jobs == [RenewalInfoJob(SITE, ACME, served.cert_pem, serial_of(served))]
        assert outcome.events == []
        assert outcome.verdict.reason == "Valid"
        assert outcome.verdict.message.endswith(
            iso(NOW + datetime.timedelta(days=80))
        )  # no "renewing now": asking is not renewing

    def test_not_asked_when_the_answer_is_fresh(self) -> None:
        served = issued()
        previous = {
            "renewalInfo": {
                "serialNumber": serial_of(served),
                "renewalTime": None,
                "nextCheck": iso(NOW + datetime.timedelta(hours=1)),
            }
        }
        issuer = FakeIssuer()
        outcome = drive(issuer, served, previous=previous)
        assert issuer.jobs == []
        assert outcome.requeue_after == 3600

    @pytest.mark.parametrize(
        ("renew_in", "check_in", "requeue"),
        [
            (datetime.timedelta(days=20), datetime.timedelta(hours=6), 6 * 3600),
            (datetime.timedelta(hours=1), datetime.timedelta(hours=6), 3600),
        ],
        ids=["next-check-first", "renewal-first"],
    )
    def test_answer_is_folded_and_sets_the_next_pass(
        self, renew_in: datetime.timedelta, check_in: datetime.timedelta, requeue: float
    ) -> None:
        served = issued()
        assert served.cert_pem is not None
        info = RenewalInfo(serial_of(served), NOW + renew_in, NOW + check_in)
        job = RenewalInfoJob(SITE, ACME, served.cert_pem, serial_of(served))
        issuer = FakeIssuer(result=JobResult(job, NOW, renewal_info=info))
        outcome = drive(issuer, served)
        assert issuer.jobs == []
        assert outcome.fields["renewalInfo"] == {
            "serialNumber": serial_of(served),
            "renewalTime": iso(NOW + renew_in),
            "nextCheck": iso(NOW + check_in),
        }
        assert outcome.fields["renewalTime"] == iso(NOW + renew_in)
        assert outcome.requeue_after == requeue

    def test_a_renewal_window_that_has_begun_starts_an_order(self) -> None:
        served = issued()
        previous = {
            "renewalInfo": {
                "serialNumber": serial_of(served),
                "renewalTime": iso(NOW - datetime.timedelta(minutes=1)),
                "nextCheck": iso(NOW + datetime.timedelta(hours=6)),
            }
        }
        issuer = FakeIssuer()
        outcome = drive(issuer, served, previous=previous)
        assert issuer.jobs == [issue_job()]
        assert "the CA's renewal window" in outcome.events[0][2]
        assert outcome.verdict.status == CONDITION_TRUE
        assert outcome.verdict.message.endswith("; renewing now")

    def test_a_failed_check_is_retried_after_the_backoff(self) -> None:
        served = issued()
        assert served.cert_pem is not None
        job = RenewalInfoJob(SITE, ACME, served.cert_pem, serial_of(served))
        error = IssuanceError("RenewalInfoFailed", "cannot fetch renewal info: ConnectionError")
        issuer = FakeIssuer(result=JobResult(job, NOW, error=error))
        outcome = drive(issuer, served)
        assert issuer.jobs == []
        assert outcome.events == [
            ("Warning", "RenewalInfoFailed", "cannot fetch renewal info: ConnectionError")
        ]
        assert outcome.fields["renewalInfo"] == {
            "serialNumber": serial_of(served),
            "renewalTime": None,
            "nextCheck": iso(NOW + datetime.timedelta(seconds=BACKOFF)),
        }
        assert outcome.fields["failedAttempts"] is None  # not an order that failed
        assert outcome.requeue_after == BACKOFF


class TestFailingRenewal:
    """The certificate is due (a third of its lifetime left) and the last order failed."""

    def test_served_certificate_stays_ready_and_says_renewal_fails(self) -> None:
        served = issued(not_before=NOW - datetime.timedelta(days=70))
        issuer = FakeIssuer()
        previous = failed(attempts=2, next_in=datetime.timedelta(minutes=7))
        outcome = drive(issuer, served, previous=previous)
        assert issuer.jobs == []
        assert outcome.requeue_after == 7 * 60
        assert outcome.verdict.status == CONDITION_TRUE
        assert outcome.verdict.reason == "Valid"
        assert "renewal failing" in outcome.verdict.message
        assert "cannot reach the ACME server" in outcome.verdict.message
        assert "2 failed attempt(s)" in outcome.verdict.message


class TestRetryingAFailedOrder:
    """A failed order is retried even once what asked for it is no longer new."""

    def test_retried_when_the_backoff_is_over(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, issued(), previous=failed(next_in=-datetime.timedelta(seconds=1)))
        assert issuer.jobs == [issue_job()]
        assert "retrying a failed order" in outcome.events[0][2]
        assert outcome.verdict.message.endswith("; renewing now")

    def test_waits_for_the_backoff_and_asks_nothing_else(self) -> None:
        issuer = FakeIssuer()
        outcome = drive(issuer, issued(), previous=failed(next_in=datetime.timedelta(minutes=2)))
        assert issuer.jobs == []
        assert outcome.requeue_after == 120


class TestRenewalRequest:
    def test_new_value_orders_even_within_the_backoff(self) -> None:
        served = issued()
        issuer = FakeIssuer()
        previous = failed(attempts=4, next_in=datetime.timedelta(hours=1))
        outcome = drive(issuer, served, previous=previous, renew_request="2026-11-25")
        assert issuer.jobs == [issue_job()]
        assert outcome.fields["renewalRequest"] == renew_request_digest("2026-11-25")
        assert RENEW_ANNOTATION in outcome.events[0][2]
        assert outcome.verdict.message.endswith("; renewing now")

    @pytest.mark.parametrize(
        "recorded",
        # As recorded now, and as a status written before digests recorded it.
        [renew_request_digest("2026-11-25"), "2026-11-25"],
    )
    def test_the_same_value_again_does_nothing(self, recorded: str) -> None:
        served = issued()
        previous = {
            "renewalRequest": recorded,
            "renewalInfo": {
                "serialNumber": serial_of(served),
                "renewalTime": None,
                "nextCheck": iso(NOW + datetime.timedelta(hours=1)),
            },
        }
        issuer = FakeIssuer()
        outcome = drive(issuer, served, previous=previous, renew_request="2026-11-25")
        assert issuer.jobs == []
        assert outcome.events == []
        assert outcome.fields["renewalRequest"] == recorded

    def test_the_status_keeps_a_digest_not_the_users_text(self) -> None:
        text = "x;\n} server { return 200 'owned'; } ünïcödé " + "x" * 4000
        outcome = drive(FakeIssuer(), issued(), renew_request=text)
        recorded = outcome.fields["renewalRequest"]
        assert recorded == renew_request_digest(text)
        assert re.fullmatch(r"sha256:[0-9a-f]{16}", recorded)

    def test_not_while_an_order_runs(self) -> None:
        issuer = FakeIssuer(running=True)
        outcome = drive(issuer, issued(), renew_request="now")
        assert issuer.jobs == []
        assert outcome.fields["renewalRequest"] is None  # acted on once the job is over

    def test_new_value_skips_the_backoff_before_the_first_certificate_too(self) -> None:
        issuer = FakeIssuer()
        previous = failed(attempts=4, next_in=datetime.timedelta(hours=1))
        drive(issuer, placeholder(), previous=previous, renew_request="retry-now")
        assert issuer.jobs == [issue_job()]

    def test_a_request_answered_by_an_order_does_not_order_again(self) -> None:
        issuer = FakeIssuer()
        first = drive(issuer, placeholder(), renew_request="please")
        assert issuer.jobs == [issue_job()]
        served = issued()
        issuer.running = False
        issuer.result = JobResult(
            issue_job(), NOW, serial=serial_of(served), not_after=NOW + datetime.timedelta(days=80)
        )
        second = drive(issuer, served, previous=status_after(first), renew_request="please")
        assert [type(job) for job in issuer.jobs] == [IssueJob]
        drive(issuer, served, previous=status_after(second), renew_request="please")
        assert [type(job) for job in issuer.jobs] == [IssueJob, RenewalInfoJob]


class TestNothingIsLost:
    def test_an_order_for_a_request_whose_status_write_failed_is_not_repeated(self) -> None:
        issuer = FakeIssuer()
        drive(issuer, issued(), renew_request="please", status_written=False)
        assert issuer.jobs == [issue_job()]
        # The status never recorded the request; the order ends.
        issuer.running = False
        served = issued()
        issuer.result = JobResult(
            issuer.jobs[0], NOW, serial=serial_of(served), not_after=NOW + datetime.timedelta(80)
        )
        outcome = drive(issuer, served, renew_request="please")
        assert outcome.fields["renewalRequest"] == renew_request_digest("please")
        assert [type(job) for job in issuer.jobs] == [IssueJob]
        drive(issuer, served, previous=status_after(outcome), renew_request="please")
        assert [type(job) for job in issuer.jobs] == [IssueJob, RenewalInfoJob]

    def test_a_result_is_folded_again_when_the_status_write_failed(self) -> None:
        down = JobResult(issue_job(), NOW, error=IssuanceError("AcmeServerUnreachable", "down"))
        issuer = FakeIssuer(result=down)
        drive(issuer, placeholder(), status_written=False)  # the pass fails later on
        assert issuer.result is down, "kept for the next pass"
        again = drive(issuer, placeholder())  # the previous status is still the old one
        assert again.fields["failedAttempts"] == 1
        assert parse(again.fields["nextAttempt"]) > NOW
        assert issuer.jobs == [], "the failure's backoff holds: no new order"
        assert issuer.result is None

    def test_a_result_the_status_records_is_not_folded_twice(self) -> None:
        # The status write went through, then the pass failed before it
        # acknowledged the result (a timeout): the result is still there.
        down = JobResult(issue_job(), NOW, error=IssuanceError("AcmeServerUnreachable", "down"))
        issuer = FakeIssuer(result=down)
        first = drive(issuer, placeholder(), status_written=False)
        assert first.fields["failedAttempts"] == 1
        assert first.fields["lastJob"] == down.job.id
        again = drive(issuer, placeholder(), previous=status_after(first))
        assert again.fields["failedAttempts"] == 1, "one failure, counted once"
        assert again.fields["nextAttempt"] == first.fields["nextAttempt"]
        assert again.events == []
        assert issuer.result is None, "acknowledged now"

    def test_a_certificate_whose_result_was_lost_is_recovered_not_ordered_again(self) -> None:
        # Two failures, then an order wrote its certificate and the operator
        # stopped before the result reached the status.
        served = issued(by_job="job-7")
        issuer = FakeIssuer()
        outcome = drive(issuer, served, previous={**failed(attempts=2), "issuedBy": None})
        orders = [job for job in issuer.jobs if isinstance(job, IssueJob)]
        assert orders == [], "no new order (only the CA's renewal info is asked for)"
        assert outcome.fields["failedAttempts"] is None
        assert outcome.fields["lastFailure"] is None
        assert outcome.fields["lastJob"] == "job-7"
        assert outcome.fields["issuedBy"] == {
            "server": directory_url("letsencrypt"),
            "serialNumber": serial_of(served),
        }
        assert [reason for _, reason, _ in outcome.events] == ["CertificateRecovered"]
        assert outcome.verdict.status == CONDITION_TRUE
        # Once recorded, nothing more happens.
        later = drive(issuer, served, previous=status_after(outcome))
        assert later.events == []
        assert [job for job in issuer.jobs if isinstance(job, IssueJob)] == []

    def test_a_certificate_not_written_by_an_order_is_not_taken_for_one(self) -> None:
        issuer = FakeIssuer()
        drive(issuer, issued(), previous=failed(attempts=2, next_in=datetime.timedelta(0)))
        assert issuer.jobs == [issue_job()], "the failed order is retried, as before"

    def test_an_order_overtaken_by_a_spec_change_is_not_a_failure(self) -> None:
        stale = JobResult(issue_job(), NOW, error=IssuanceError("Superseded", "names changed"))
        issuer = FakeIssuer(result=stale)
        outcome = drive(issuer, placeholder())
        assert outcome.fields["failedAttempts"] is None
        assert outcome.events == [("Normal", "Issuing", outcome.events[0][2])]
        assert issuer.jobs == [issue_job()], "ordered again at once, for the names of now"

    def test_a_failed_renewal_info_check_keeps_the_window_the_ca_gave(self) -> None:
        served = issued()
        window = NOW + datetime.timedelta(days=10)
        previous = {
            "renewalInfo": {
                "serialNumber": serial_of(served),
                "renewalTime": iso(window),
                "nextCheck": iso(NOW - datetime.timedelta(minutes=1)),
            }
        }
        job = RenewalInfoJob(SITE, ACME, b"", serial_of(served))
        issuer = FakeIssuer(
            result=JobResult(job, NOW, error=IssuanceError("RenewalInfoFailed", "timeout"))
        )
        outcome = drive(issuer, served, previous=previous)
        assert outcome.fields["renewalInfo"]["renewalTime"] == iso(window)
        assert outcome.fields["renewalTime"] == iso(window)
        assert parse(outcome.fields["renewalInfo"]["nextCheck"]) > NOW


class TestServerChange:
    def test_a_certificate_from_another_server_is_replaced(self) -> None:
        served = issued()
        issuer = FakeIssuer(
            result=JobResult(
                issue_job(), NOW, serial=serial_of(served), not_after=NOW + datetime.timedelta(80)
            )
        )
        first = drive(issuer, served)
        assert first.fields["issuedBy"]["serialNumber"] == serial_of(served)
        other = "https://ca.example/directory"
        production = ACME.model_copy(update={"server": other})
        assert first.fields["issuedBy"]["server"] != other
        outcome = drive_acme(
            issuer,
            SITE,
            production,
            NAMES,
            served,
            previous=status_after(first),
            base_verdict=certificate_verdict(SPEC, served, NOW),
            renew_request=None,
            now=NOW,
        )
        assert issuer.jobs == [IssueJob(SITE, tuple(NAMES), production)]
        assert "the ACME server changed" in outcome.events[0][2]
        # The same server again orders nothing (it only asks for renewal info).
        issuer.running = False
        drive(issuer, served, previous=status_after(first))
        assert [type(job) for job in issuer.jobs] == [IssueJob, RenewalInfoJob]
