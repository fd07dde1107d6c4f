"""CertificateIssuer's results outlive a failed pass, but not their site."""

from __future__ import annotations

import logging
import threading

import pytest

from blogsite_operator import models
from blogsite_operator.issuance.issuer import CertificateIssuer, IssueJob, JobResult, _now
from blogsite_operator.issuance.protocol import IssuanceError
from blogsite_operator.render.site import SiteRef
from blogsite_operator.settings import AcmeSettings

SITE = SiteRef(name="blog", namespace="ns", uid="uid-1")
KEY = (SITE.namespace, SITE.name)
ACME = models.Acme.model_validate({"email": "ops@example.com"})


class HeldIssuer(CertificateIssuer):
    """An issuer whose one order waits until the test lets it finish."""

    def __init__(self) -> None:
        self.notified: list[tuple[str, str]] = []
        super().__init__(None, AcmeSettings(), lambda *key: self.notified.append(key))  # type: ignore[arg-type]
        self.release = threading.Event()
        self.done = threading.Event()

    def _issue(self, job: IssueJob) -> JobResult:
        self.release.wait(10)
        return JobResult(job, _now(), serial="01")

    def _finish(self, key: tuple[str, str], result: JobResult) -> None:
        super()._finish(key, result)
        self.done.set()


def test_a_finished_result_is_kept_until_acknowledged_or_forgotten() -> None:
    issuer = HeldIssuer()
    assert issuer.submit(IssueJob(SITE, ("a.example.com",), ACME))
    issuer.release.set()
    assert issuer.done.wait(10)
    running, result = issuer.state(KEY)
    assert not running
    assert result is not None
    assert issuer.notified == [KEY]
    issuer.forget(KEY)
    assert issuer.state(KEY) == (False, None)
    issuer.shutdown()


def test_the_result_of_a_job_running_when_its_site_is_deleted_is_dropped() -> None:
    issuer = HeldIssuer()
    assert issuer.submit(IssueJob(SITE, ("a.example.com",), ACME))
    issuer.forget(KEY)
    issuer.release.set()
    assert issuer.done.wait(10)
    assert issuer.state(KEY) == (False, None)
    assert issuer.notified == []
    # A site of the same name created afterwards starts from nothing.
    issuer.done.clear()
    assert issuer.submit(IssueJob(SITE, ("a.example.com",), ACME))
    assert issuer.done.wait(10)
    issuer.shutdown()


def test_after_shutdown_no_job_starts_and_a_running_one_is_waited_for() -> None:
    issuer = HeldIssuer()
    assert issuer.submit(IssueJob(SITE, ("a.example.com",), ACME))
    issuer.shutdown()
    other = SiteRef(name="other", namespace="ns", uid="uid-2")
    # A pass still running while the operator stops asks for an order: refused quietly.
    assert not issuer.submit(IssueJob(other, ("b.example.com",), ACME))
    threading.Timer(0.2, issuer.release.set).start()
    issuer.shutdown(wait=True)  # returns only once the running order has ended
    assert issuer.done.is_set()
    assert issuer.state(("ns", "other")) == (False, None)


class FailingIssuer(HeldIssuer):
    """An issuer whose order the CA refuses."""

    def _issue(self, job: IssueJob) -> JobResult:
        raise IssuanceError(
            "ChallengeFailed",
            "HTTP-01 validation failed for a.example.com: unauthorized: 404 from 198.51.100.7",
        )


def test_a_failed_order_is_logged_at_the_default_level_with_the_cas_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    issuer = FailingIssuer()
    with caplog.at_level(logging.INFO, logger="blogsite_operator"):
        assert issuer.submit(IssueJob(SITE, ("a.example.com",), ACME))
        assert issuer.done.wait(10)
    issuer.shutdown()
    (record,) = [r for r in caplog.records if "order failed" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "ChallengeFailed" in record.getMessage()
    assert "unauthorized: 404 from 198.51.100.7" in record.getMessage()
