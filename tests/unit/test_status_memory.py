"""Status is memory: a branch that decides nothing erases nothing, and a pass
that fails at any API call leaves a state the next clean pass finishes without
ordering or reverting twice."""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from blogsite_operator import certs
from blogsite_operator.issuance.driver import RENEW_ANNOTATION, renew_request_digest
from blogsite_operator.issuance.issuer import IssueJob, JobResult, RenewalInfoJob, SiteKey
from blogsite_operator.issuance.protocol import IssuanceError, directory_url
from blogsite_operator.policies.certificate import RenewalInfo
from blogsite_operator.reconcile import reconcile_site
from blogsite_operator.render import RenderSettings
from blogsite_operator.render.site import render_tls_secret, version_of
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
    # The API server fills in the CRD's defaults; the next pass has nothing to write.
    for entry in api.status["components"].values():
        for count in ("replicas", "readyReplicas", "availableReplicas"):
            entry.setdefault(count, 0)
    writes = len(api.writes)
    reconcile_site(api, site(status=api.status), SETTINGS)
    assert "status" not in api.writes[writes:]


# --- fault injection: API call N of a pass that applies, reverts and orders fails --


class FaultyApi(RollingApi):
    """Counts the pass's API calls; call number `fail_at` raises (a 500)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail_at: int | None = None
        self.failed: str | None = None
        self.bad_applies = 0

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if len(self.calls) == self.fail_at:
            self.failed = what
            raise ApiException(status=500, reason=f"injected failure of {what}")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._call(f"get {kind}")
        return super().get(kind, namespace, name)

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._call(f"get_child {kind}")
        return super().get_child(kind, namespace, name)

    def list_objects(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self._call(f"list {kind}")
        return super().list_objects(kind, namespace, label_selector)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._call(f"apply {obj['kind']}")
        if obj["kind"] == "Deployment" and "d:bad" in str(obj["spec"]["template"]):
            self.bad_applies += 1
        return super().apply(obj)

    def apply_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        self._call(f"create {obj['kind']}")
        return super().apply_if_absent(obj)

    def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        self._call(f"delete {kind}")
        super().delete(kind, namespace, name, uid)

    def patch_blogsite_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> None:
        self._call("patch status")
        super().patch_blogsite_status(namespace, name, resource_version, status)

    def post_event(self, site: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self._call(f"event {reason}")
        super().post_event(site, event_type, reason, message)


def body(image: str, status: dict[str, Any] | None, renew: str | None = None) -> dict[str, Any]:
    site_body = site(
        status=status, tls=ACME, daedalus={"image": image}, rollout={"strategy": "RollingUpdate"}
    )
    if renew is not None:
        site_body["metadata"]["annotations"] = {RENEW_ANNOTATION: renew}
    return site_body


def converge(api: FaultyApi, issuer: FakeIssuer, image: str, renew: str | None = None) -> None:
    for _ in range(6):
        outcome = reconcile_site(api, body(image, api.status, renew), SETTINGS, issuer=issuer)
        if not (outcome.applied or outcome.status_written):
            return
    raise AssertionError("no pass without writes")


def before_the_pass() -> tuple[FaultyApi, FakeIssuer, str]:
    """A certified site whose daedalus rolled out a version that crash-loops."""
    api, issuer = FaultyApi(), FakeIssuer()
    reconcile_site(api, body("d:1", None), SETTINGS, issuer=issuer)  # the first order
    issuer.finish(api)
    converge(api, issuer, "d:1")
    good = version_of(api.objects[("Deployment", "ns", "blog-daedalus")])
    assert good is not None
    reconcile_site(api, body("d:bad", api.status), SETTINGS, issuer=issuer)  # it goes out
    assert api.bad_applies == 2  # daedalus, and the empty canary that mirrors it
    api.calls, api.bad_applies, api.events = [], 0, []
    return api, issuer, good


def the_pass_and_after(api: FaultyApi, issuer: FakeIssuer, fail_at: int | None) -> str | None:
    """The pass that reverts daedalus and orders (a renewal is asked for), with
    call `fail_at` failing; then clean passes, the order finishing between."""
    api.fail_at = fail_at
    try:
        reconcile_site(api, body("d:bad", api.status, "renew-1"), SETTINGS, issuer=issuer)
    except ApiException:
        assert api.failed is not None
    api.fail_at = None
    reconcile_site(api, body("d:bad", api.status, "renew-1"), SETTINGS, issuer=issuer)
    serial = issuer.finish(api) if issuer.running is not None else None
    converge(api, issuer, "d:bad", "renew-1")
    return serial


def test_a_pass_failing_at_any_api_call_loses_nothing_and_repeats_nothing() -> None:
    api, issuer, good = before_the_pass()
    reference_api, reference_issuer = copy.deepcopy(api), copy.deepcopy(issuer)
    reference_api.fail_at = None
    reconcile_site(
        reference_api, body("d:bad", api.status, "renew-1"), SETTINGS, issuer=reference_issuer
    )
    calls = len(reference_api.calls)
    assert "apply Deployment" in reference_api.calls  # the revert
    assert len(reference_issuer.jobs) == 2  # the order
    assert calls > 20
    for fail_at in range(1, calls + 1):
        faulty, faulty_issuer = copy.deepcopy(api), copy.deepcopy(issuer)
        serial = the_pass_and_after(faulty, faulty_issuer, fail_at)
        what = f"call {fail_at} ({faulty.failed}) failed"
        status = faulty.status
        daedalus = at(status, ("components", "daedalus"))
        assert faulty.bad_applies == 0, f"{what}: the bad version went out again"
        assert version_of(faulty.objects[("Deployment", "ns", "blog-daedalus")]) == good, what
        assert daedalus["lastGoodVersion"] == good, what
        assert daedalus["failedVersion"] not in (None, good), what
        assert daedalus["failedReason"].startswith("PodsFailing"), what
        assert len(faulty_issuer.jobs) == 2, f"{what}: ordered {len(faulty_issuer.jobs) - 1}x"
        assert status is not None
        certificate = status["certificate"]
        assert certificate["renewalRequest"] == renew_request_digest("renew-1"), what
        assert certificate["lastJob"] == faulty_issuer.jobs[-1].id, what
        assert certificate["issuedBy"]["serialNumber"] == serial, what
        assert certificate.get("failedAttempts") is None, what
        reverted = [r for _, r, _ in faulty.events if r == "RolledBack"]
        lost = faulty.failed == "event RolledBack"  # an Event is best effort
        assert len(reverted) == (0 if lost else 1), f"{what}: {len(reverted)} RolledBack Events"


def in_backoff() -> tuple[FaultyApi, FakeIssuer, dict[str, Any]]:
    """A certified site whose asked-for renewal failed with a Retry-After:
    it waits out its backoff, remembering the failure, the CA's renewal
    information and the facts of the certificate it serves."""
    api, issuer = FaultyApi(), FakeIssuer()
    reconcile_site(api, body("d:1", None), SETTINGS, issuer=issuer)
    issuer.finish(api)
    converge(api, issuer, "d:1")
    reconcile_site(api, body("d:1", api.status, "renew-1"), SETTINGS, issuer=issuer)
    job = issuer.running
    assert job is not None
    later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=1)
    error = IssuanceError("RateLimited", "too many certificates", retry_after=later)
    issuer.running, issuer.result = None, JobResult(job, TODAY, error=error)
    converge(api, issuer, "d:1", "renew-1")
    remembered = copy.deepcopy(api.status)
    assert remembered is not None
    for path in ACME_MEMORY + SERVED_FACTS:
        assert at(remembered, path) is not None, path
    api.calls = []
    return api, issuer, remembered


def test_a_failed_pass_erases_no_memory_of_a_site_waiting_out_its_backoff() -> None:
    """Each API call of a pass of a site in backoff fails in turn; after a
    clean pass every memory field (backoff, Retry-After, last failure,
    renewal information, served facts) is what it was, and nothing is ordered."""
    api, issuer, remembered = in_backoff()
    reference = copy.deepcopy(api)
    reconcile_site(reference, body("d:1", api.status, "renew-1"), SETTINGS, issuer=issuer)
    calls = len(reference.calls)
    assert calls > 0
    for fail_at in range(1, calls + 1):
        faulty, faulty_issuer = copy.deepcopy(api), copy.deepcopy(issuer)
        faulty.fail_at = fail_at
        try:
            reconcile_site(
                faulty, body("d:1", faulty.status, "renew-1"), SETTINGS, issuer=faulty_issuer
            )
        except ApiException:
            assert faulty.failed is not None
        faulty.fail_at = None
        converge(faulty, faulty_issuer, "d:1", "renew-1")
        what = f"call {fail_at} ({faulty.failed}) failed"
        for path in ACME_MEMORY + SERVED_FACTS:
            assert at(faulty.status, path) == at(remembered, path), f"{what}: {path}"
        assert len(faulty_issuer.jobs) == 2, f"{what}: ordered during the backoff"
