"""The preflight's judgement of each name (issuance/preflight.py), and what
the driver does with a failed preflight: no backoff earned, checked again
soon, told once."""

from __future__ import annotations

import datetime

from blogsite_operator.issuance.driver import PREFLIGHT_RETRY_SECONDS, renew_request_digest
from blogsite_operator.issuance.issuer import JobResult
from blogsite_operator.issuance.preflight import ResolverError, check_names
from blogsite_operator.issuance.protocol import IssuanceError
from tests.unit.test_acme_driver import (
    NOW,
    FakeIssuer,
    drive,
    issue_job,
    issued,
    parse,
    placeholder,
)

DNS = {
    "blog.example.com": ("203.0.113.10",),
    "www.example.com": ("203.0.113.10", "2001:db8::10"),
    "old.example.com": ("198.51.100.7",),
    "lb.example.net": ("203.0.113.10", "2001:db8::10"),
}


def resolve(name: str) -> tuple[str, ...]:
    if name not in DNS:
        raise LookupError("NXDOMAIN")
    return DNS[name]


def reaches(address: str, name: str) -> str | None:
    return None if address in ("203.0.113.10", "2001:db8::10") else "Connection refused"


def problems(names: list[str], expected: list[str]) -> dict[str, str | None]:
    checks = check_names(names, expected=expected, resolve=resolve, reaches_this_site=reaches)
    return {c.name: c.problem for c in checks}


def test_names_that_resolve_to_the_frontend_and_reach_it_pass() -> None:
    found = problems(["blog.example.com", "www.example.com"], ["203.0.113.10", "2001:DB8::10"])
    assert found == {"blog.example.com": None, "www.example.com": None}


def test_a_load_balancers_hostname_is_resolved_to_compare() -> None:
    assert problems(["www.example.com"], ["lb.example.net"]) == {"www.example.com": None}


def test_a_name_pointing_elsewhere_is_named_with_what_it_resolves_to() -> None:
    found = problems(["blog.example.com", "old.example.com"], ["203.0.113.10"])
    assert found["blog.example.com"] is None
    assert found["old.example.com"] == (
        "old.example.com resolves to 198.51.100.7, not to this site's 203.0.113.10"
    )


def test_without_an_external_address_the_fetch_decides() -> None:
    found = problems(["blog.example.com", "old.example.com"], [])
    assert found["blog.example.com"] is None
    assert found["old.example.com"] == (
        "old.example.com resolves to 198.51.100.7; "
        "http://old.example.com/.well-known/acme-challenge/ at 198.51.100.7 does not reach "
        "this site (Connection refused)"
    )


def test_a_name_that_does_not_resolve_is_named() -> None:
    assert problems(["new.example.com"], []) == {
        "new.example.com": "new.example.com does not resolve (NXDOMAIN)"
    }


class TestAFailedPreflight:
    def result(
        self, message: str = "not ordering: old.example.com resolves to 1.2.3.4"
    ) -> JobResult:
        return JobResult(
            issue_job(),
            NOW - datetime.timedelta(seconds=1),
            error=IssuanceError("PreflightFailed", message),
        )

    def test_is_checked_again_soon_and_earns_no_backoff(self) -> None:
        issuer = FakeIssuer(result=self.result())
        outcome = drive(issuer, placeholder())
        assert "failedAttempts" not in {k for k, v in outcome.fields.items() if v is not None}
        wait = parse(outcome.fields["nextAttempt"]) - NOW
        assert wait <= datetime.timedelta(seconds=PREFLIGHT_RETRY_SECONDS)
        assert (outcome.verdict.status, outcome.verdict.reason) == ("False", "PreflightFailed")
        assert "old.example.com resolves to 1.2.3.4" in outcome.verdict.message
        assert [(k, r) for k, r, _ in outcome.events] == [("Warning", "PreflightFailed")]

    def test_the_same_finding_is_told_once(self) -> None:
        issuer = FakeIssuer(result=self.result())
        first = drive(issuer, placeholder())
        previous = {k: v for k, v in first.fields.items() if v is not None}
        issuer.result = self.result()
        again = drive(
            issuer, placeholder(), previous=previous, now=NOW + datetime.timedelta(seconds=40)
        )
        assert [r for _, r, _ in again.events] == []  # nor "Issuing" at every check
        issuer.result = self.result("not ordering: old.example.com does not resolve")
        changed = drive(
            issuer, placeholder(), previous=previous, now=NOW + datetime.timedelta(seconds=80)
        )
        assert [r for _, r, _ in changed.events] == ["PreflightFailed"]

    def test_a_requested_renewal_it_held_back_is_checked_again_until_it_goes(self) -> None:
        """The renew request is recorded when its order starts: the failed
        preflight must keep the order due, or the request is lost."""
        issuer = FakeIssuer(result=self.result())
        served = issued()  # valid for weeks: only the request made it due
        previous = {"renewalRequest": renew_request_digest("now")}
        first = drive(issuer, served, previous=previous, renew_request="now")
        assert issuer.jobs == []
        issuer.running = False
        later = NOW + datetime.timedelta(seconds=PREFLIGHT_RETRY_SECONDS + 1)
        status = {k: v for k, v in first.fields.items() if v is not None}
        drive(issuer, served, previous=status, renew_request="now", now=later)
        assert len(issuer.jobs) == 1


def test_a_resolver_that_does_not_answer_holds_nothing_back() -> None:
    """A timeout says nothing about the name (the CA asks its own resolver);
    after one, the other names are not waited for either."""
    asked: list[str] = []

    def silent(name: str) -> tuple[str, ...]:
        asked.append(name)
        raise ResolverError("The DNS operation timed out.")

    names = ["blog.example.com", "www.example.com"]
    checks = check_names(names, expected=[], resolve=silent, reaches_this_site=reaches)
    assert [(c.name, c.problem, c.checked) for c in checks] == [
        ("blog.example.com", None, False),
        ("www.example.com", None, False),
    ]
    assert asked == ["blog.example.com"]
