"""Status is memory: a branch that decides nothing erases nothing, and a pass
that fails at any API call leaves a state the next clean pass finishes without
ordering or reverting twice."""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from blogsite_operator import certs
from blogsite_operator.issuance.issuer import IssueJob, JobResult, RenewalInfoJob, SiteKey
from blogsite_operator.issuance.protocol import directory_url
from blogsite_operator.policies.certificate import RenewalInfo
from blogsite_operator.reconcile import reconcile_site
from blogsite_operator.render import RenderSettings
from blogsite_operator.render.site import render_tls_secret
from blogsite_operator.settings import AcmeSettings
from tests.unit.test_acme_driver import ca_signed
from tests.unit.test_reconcile import REF, TODAY, RollingApi, site

SETTINGS = RenderSettings()
ACME = {"acme": {"email": "ops@example.com"}}
SERVER = directory_url("letsencrypt")


# --- what a status remembers, and passes that decide nothing about it ----------

REMEMBERED: dict[str, Any] = {
    "observedGeneration": 1,
    "rolloutRetry": "retry-1",
    "components": {
        "daedalus": {
            "version": "v-bad",
            "lastGoodVersion": "v-good",
            "failedVersion": "v-bad",
            "failedReason": "PodsFailing: pod p restarted 9 times",
            "failedAt": "2026-12-01T00:00:00Z",
        }
    },
    "certificate": {
        "secretName": "blog-tls",
        "notAfter": "2027-01-30T00:00:00Z",
        "dnsNames": ["blog.example.com"],
        "serialNumber": "0a",
        "sha256": "ab" * 32,
        "renewalTime": "2027-01-10T00:00:00Z",
        "failedAttempts": 2,
        "nextAttempt": "2027-12-04T01:00:00Z",
        "lastFailure": {"time": "2026-12-04T00:00:00Z", "reason": "RateLimited", "message": "x"},
        "renewalInfo": {"serialNumber": "0a", "nextCheck": "2027-12-05T00:00:00Z"},
        "renewalRequest": "renew-1",
        "issuedBy": {"server": SERVER, "serialNumber": "0a"},
        "lastJob": "job-7",
    },
}
ROLLOUT_MEMORY = [
    ("components", "daedalus", key)
    for key in ("lastGoodVersion", "failedVersion", "failedReason", "failedAt")
]
ACME_MEMORY = [
    ("certificate", key)
    for key in (
        "failedAttempts",
        "nextAttempt",
        "lastFailure",
        "renewalInfo",
        "renewalRequest",
        "issuedBy",
        "lastJob",
    )
]
SERVED_FACTS = [
    ("certificate", key)
    for key in ("notAfter", "dnsNames", "serialNumber", "sha256", "renewalTime")
]


def at(status: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = status
    for key in path:
        value = (value or {}).get(key)
    return value


@dataclass
class FakeIssuer:
    """Orders run until `finish`; renewal-info checks answer at once."""

    settings: AcmeSettings = field(default_factory=AcmeSettings)
    running: IssueJob | None = None
    result: JobResult | None = None
    jobs: list[IssueJob] = field(default_factory=list)

    def state(self, key: SiteKey) -> tuple[bool, JobResult | None]:
        return self.running is not None, self.result

    def acknowledge(self, key: SiteKey, result: JobResult) -> None:
        if self.result is result:
            self.result = None

    def submit(self, job: IssueJob | RenewalInfoJob) -> bool:
        if self.running is not None:
            return False
        if isinstance(job, RenewalInfoJob):
            later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(days=1)
            info = RenewalInfo(job.serial, None, later)
            self.result = JobResult(job, TODAY, renewal_info=info)
            return True
        self.jobs.append(job)
        self.running = job
        return True

    def finish(self, api: RollingApi) -> str:
        """The running order succeeds: its certificate in NAME-tls, its result here."""
        job = self.running
        assert job is not None
        cert_pem, key_pem = ca_signed(list(job.names), not_before=TODAY)
        issued_by = (job.id, SERVER)
        api.apply(render_tls_secret(REF, cert_pem, key_pem, placeholder=False, issued_by=issued_by))
        serial = certs.certificate_info(cert_pem).serial
        self.running = None
        self.result = JobResult(job, TODAY, serial=serial, not_after=TODAY)
        return serial


@pytest.mark.parametrize("path", ROLLOUT_MEMORY + ACME_MEMORY + SERVED_FACTS + [("rolloutRetry",)])
def test_memory_survives_an_invalid_spec(path: tuple[str, ...]) -> None:
    api = RollingApi()
    api.status = copy.deepcopy(REMEMBERED)
    invalid = site(status=REMEMBERED, tls=ACME, daedalus={"image": "d:latest"})
    invalid["metadata"]["generation"] = 2
    reconcile_site(api, invalid, SETTINGS, issuer=FakeIssuer())
    ready = next(c for c in api.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert at(api.status, path) == at(REMEMBERED, path)


@pytest.mark.parametrize("path", ROLLOUT_MEMORY + ACME_MEMORY + [("rolloutRetry",)])
@pytest.mark.parametrize("issuer", [FakeIssuer(), None], ids=["issuer", "no issuer"])
def test_memory_survives_a_held_back_frontend(
    path: tuple[str, ...], issuer: FakeIssuer | None
) -> None:
    api = RollingApi()
    api.status = copy.deepcopy(REMEMBERED)
    held_back = site(status=REMEMBERED, tls=ACME, frontend={"extraConfig": "frobnicate on;"})
    reconcile_site(api, held_back, SETTINGS, lambda _: "refused", issuer=copy.deepcopy(issuer))
    valid = next(c for c in api.status["conditions"] if c["type"] == "ConfigValid")
    assert valid["status"] == "False"
    assert at(api.status, path) == at(REMEMBERED, path)


def test_rollout_memory_survives_its_deployment_taken_by_another_owner() -> None:
    api = RollingApi()
    reconcile_site(api, site(), SETTINGS)
    reconcile_site(api, site(status=api.status), SETTINGS)
    remembered = at(api.status, ("components", "daedalus"))
    assert remembered["lastGoodVersion"] is not None
    # Deleted, and someone else's Deployment of that name created meanwhile.
    foreign = {"kind": "Deployment", "metadata": {"name": "blog-daedalus", "namespace": "ns"}}
    api.objects[("Deployment", "ns", "blog-daedalus")] = foreign
    reconcile_site(api, site(status=api.status), SETTINGS)
    assert api.status is not None
    reconciled = next(c for c in api.status["conditions"] if c["type"] == "Reconciled")
    assert reconciled["reason"] == "NameConflict"
    for key in ("lastGoodVersion", "failedVersion"):
        assert at(api.status, ("components", "daedalus", key)) == remembered.get(key)
