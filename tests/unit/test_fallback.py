"""A fallback CA: which CA an order goes to (policies/certificate.py's
choose_server) and how the driver moves on, orders at once, asks the
issuing CA for renewal info, and returns to the first CA after a success."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from blogsite_operator import models
from blogsite_operator.issuance.driver import AcmeOutcome, drive_acme
from blogsite_operator.issuance.issuer import IssueJob, JobResult, RenewalInfoJob
from blogsite_operator.issuance.protocol import IssuanceError, directory_url
from blogsite_operator.policies.certificate import (
    ServedCertificate,
    certificate_verdict,
    choose_server,
)
from blogsite_operator.policies.ledger import Ledger
from tests.unit.test_acme_driver import (
    NAMES,
    NOW,
    SITE,
    FakeIssuer,
    full_ledger,
    issued,
    placeholder,
)
from tests.unit.test_acme_driver import drive as drive_with

FIRST, SECOND, THIRD = (
    directory_url("letsencrypt"),
    "https://zerossl.test/dir",
    "https://gts.test/dir",
)
SPEC = models.parse_spec(
    {
        "domains": NAMES[:1],
        "redirectDomains": NAMES[1:],
        "daedalus": {"image": "d:1"},
        "tls": {
            "acme": {
                "server": "letsencrypt",
                "fallback": [{"server": SECOND, "profile": "tlsserver"}, {"server": THIRD}],
            }
        },
    }
)
assert SPEC.tls is not None
assert SPEC.tls.acme is not None
ACME = SPEC.tls.acme
DAY = datetime.timedelta(days=1)


def choose(reason: str, failures: int, served: ServedCertificate, at: str = FIRST) -> str:
    urls = [FIRST, SECOND, THIRD]
    index = choose_server(
        urls,
        failed_at=at,
        failure_reason=reason,
        failed_attempts=failures,
        served=served.info,
        now=NOW,
    )
    return urls[index]


class TestChooseServer:
    def test_a_failing_ca_is_kept_while_the_certificate_has_time(self) -> None:
        # 90 days, 20 left: more than a sixth (15 days)
        healthy = issued(not_before=NOW - 70 * DAY)
        assert choose("AcmeServerUnreachable", 5, healthy) == FIRST

    def test_in_the_last_sixth_a_ca_that_keeps_failing_is_given_up(self) -> None:
        late = issued(not_before=NOW - 80 * DAY)  # 10 days left
        assert choose("AcmeServerUnreachable", 1, late) == FIRST  # once is not "keeps"
        assert choose("AcmeServerUnreachable", 2, late) == SECOND
        assert choose("RateLimited", 2, late) == SECOND
        assert choose("OrderTimeout", 2, late, at=SECOND) == THIRD
        assert choose("OrderTimeout", 9, late, at=THIRD) == THIRD  # no further CA

    def test_a_failure_that_is_the_sites_own_follows_it_to_no_other_ca(self) -> None:
        late = issued(not_before=NOW - 80 * DAY)
        for reason in (
            "ChallengeFailed",
            "SelfCheckFailed",
            "PreflightFailed",
            "ConfigurationError",
        ):
            assert choose(reason, 5, late) == FIRST, reason

    def test_with_only_a_placeholder_the_site_is_down_already(self) -> None:
        assert choose("AcmeServerUnreachable", 2, placeholder()) == SECOND


def drive(
    issuer: FakeIssuer,
    served: ServedCertificate,
    previous: dict[str, Any],
    now: datetime.datetime = NOW,
) -> AcmeOutcome:
    return drive_with(issuer, served, previous=previous, now=now, spec=SPEC)


def failing_at_first(attempts: int) -> dict[str, Any]:
    return {
        "failedAttempts": attempts,
        "nextAttempt": (NOW + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastFailure": {"reason": "AcmeServerUnreachable", "message": "down", "server": FIRST},
    }


def status_after(outcome: AcmeOutcome) -> dict[str, Any]:
    return {k: v for k, v in outcome.fields.items() if v is not None}


class TestTheDriver:
    def test_it_moves_on_and_orders_at_once_from_the_next_ca(self) -> None:
        issuer = FakeIssuer()
        late = issued(not_before=NOW - 80 * DAY)
        outcome = drive(issuer, late, failing_at_first(2))
        (job,) = issuer.jobs
        assert isinstance(job, IssueJob)
        assert (job.acme.server, job.acme.profile) == (SECOND, "tlsserver")
        assert job.acme.email == ACME.email
        assert job.acme.fallback is None
        assert outcome.fields["orderingFrom"] == SECOND
        assert not outcome.fields["failedAttempts"]  # the first CA's failures are not its
        reasons = [r for _, r, _ in outcome.events]
        assert reasons == ["FallingBack", "Issuing"]
        assert SECOND in outcome.events[1][2]

    def test_it_stays_with_the_fallback_until_an_order_succeeds_then_returns(self) -> None:
        issuer = FakeIssuer()
        late = issued(not_before=NOW - 80 * DAY)
        first = drive(issuer, late, failing_at_first(2))
        issuer.running, issuer.jobs = False, []
        job = IssueJob(SITE, tuple(NAMES), ACME.servers()[1])
        issuer.result = JobResult(
            job, NOW, error=IssuanceError("AcmeServerUnreachable", "down too")
        )
        failed = drive(issuer, late, status_after(first), now=NOW + datetime.timedelta(minutes=1))
        assert failed.fields["orderingFrom"] == SECOND
        assert failed.fields["lastFailure"]["server"] == SECOND
        assert failed.fields["failedAttempts"] == 1
        assert issuer.jobs == []  # backoff, at the same CA

        again = IssueJob(SITE, tuple(NAMES), ACME.servers()[1])
        issuer.result = JobResult(again, NOW, serial="abc", not_after=NOW + 90 * DAY)
        done = drive(issuer, late, status_after(failed), now=NOW + datetime.timedelta(hours=1))
        assert done.fields["orderingFrom"] is None  # the next renewal starts with the first
        assert done.fields["issuedBy"]["server"] == SECOND
        assert done.fields["issuedBy"]["fallback"] == 1  # status and metrics say which CA

    def test_renewal_info_is_asked_of_the_ca_that_issued(self) -> None:
        issuer = FakeIssuer()
        from_second = issued(not_before=NOW - 10 * DAY)
        previous = {
            "issuedBy": {
                "server": SECOND,
                "serialNumber": from_second.info.serial if from_second.info else "",
            }
        }
        outcome = drive(issuer, from_second, previous)
        (job,) = issuer.jobs
        assert isinstance(job, RenewalInfoJob)
        assert job.acme.server == SECOND
        assert not [r for _, r, _ in outcome.events if r == "Issuing"]  # not "ServerChanged"


class TestALedgerHold:
    """The first CA's account ledger says it would refuse the order (a CA
    without ARI exempts no renewal): that CA is rate-limited before it is
    asked, and near the end the next one gets the order."""

    @staticmethod
    def drive(
        served: ServedCertificate, issuer: FakeIssuer, held_at: tuple[str, ...] = (FIRST,)
    ) -> AcmeOutcome:
        full = full_ledger()

        def ledger(account: models.Acme) -> Ledger:
            return full if directory_url(account.server) in held_at else Ledger()

        return drive_acme(
            issuer,
            SITE,
            ACME,
            NAMES,
            served,
            previous={},
            base_verdict=certificate_verdict(SPEC, served, NOW),
            renew_request=None,
            now=NOW,
            ledger=ledger,
        )

    def test_in_the_last_sixth_the_order_goes_to_the_next_ca(self) -> None:
        issuer = FakeIssuer()
        outcome = self.drive(issued(not_before=NOW - 80 * DAY), issuer)  # 10 days left
        (job,) = issuer.jobs
        assert isinstance(job, IssueJob)
        assert job.acme.server == SECOND
        assert outcome.fields["orderingFrom"] == SECOND
        assert outcome.fields["rateLimitHold"] is None
        reasons = [r for _, r, _ in outcome.events]
        assert reasons == ["FallingBack", "Issuing"]
        assert "rate limits would refuse" in outcome.events[0][2]

    def test_with_time_left_it_waits_for_the_first(self) -> None:
        issuer = FakeIssuer()
        outcome = self.drive(issued(not_before=NOW - 65 * DAY), issuer)  # due, 25 days left
        assert issuer.jobs == []
        assert outcome.fields.get("orderingFrom") is None
        assert "5 certificates for exactly these names" in outcome.fields["rateLimitHold"]
        assert [r for _, r, _ in outcome.events] == ["RateLimitLedger"]

    def test_a_next_ca_whose_limits_refuse_too_is_not_moved_to(self) -> None:
        issuer = FakeIssuer()
        late = issued(not_before=NOW - 80 * DAY)
        outcome = self.drive(late, issuer, held_at=(FIRST, SECOND))
        assert issuer.jobs == []
        assert outcome.fields.get("orderingFrom") is None
        assert [r for _, r, _ in outcome.events] == ["RateLimitLedger"]  # no FallingBack

    def test_a_held_order_is_looked_at_again_when_the_last_sixth_begins(self) -> None:
        issuer = FakeIssuer()
        # Due, held for 6.2 days more, the last sixth (day 75) in 3 days.
        outcome = self.drive(issued(not_before=NOW - 72 * DAY), issuer)
        assert outcome.requeue_after == pytest.approx((3 * DAY).total_seconds(), abs=2)
