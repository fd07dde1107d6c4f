"""CertificateServed: what the Ready frontend pods present, judged against
what status and the Secret say (policies/served.py), and how a pass asks
the probe and carries its finding."""

from __future__ import annotations

import datetime
from typing import Any

from blogsite_operator import certs
from blogsite_operator.certs import CertificateInfo
from blogsite_operator.policies.served import (
    Presented,
    ProbeResult,
    ProbeTarget,
    earliest_expiry,
    served_verdict,
)
from blogsite_operator.reconcile import reconcile_site
from blogsite_operator.render import RenderSettings
from blogsite_operator.render.site import render_tls_secret
from blogsite_operator.served_probe import ServedProbe
from tests.unit.test_acme_driver import ca_signed
from tests.unit.test_reconcile import REF, MemoryApi, site

NOW = datetime.datetime(2026, 12, 5, 12, tzinfo=datetime.UTC)
NAMES = ("blog.example.com", "www.example.com")


def info(serial: str, names: tuple[str, ...] = NAMES, days_left: float = 30) -> CertificateInfo:
    not_after = NOW + datetime.timedelta(days=days_left)
    return CertificateInfo(
        dns_names=names,
        not_before=not_after - datetime.timedelta(days=90),
        not_after=not_after,
        serial=serial,
        issuer="Tiny CA",
    )


def probed(*presented: Presented) -> ProbeResult:
    pods = {p.pod for p in presented}
    targets = frozenset(ProbeTarget(pod, f"198.18.0.{i}") for i, pod in enumerate(sorted(pods)))
    return ProbeResult(targets, NAMES, NOW, presented)


def every_name(pod: str, certificate: CertificateInfo | None, error: str = "") -> list[Presented]:
    return [Presented(pod, name, certificate, error or None) for name in NAMES]


KNOWN = {"a1": "status.certificate", "b2": "Secret blog-tls"}


class TestServedVerdict:
    def test_every_pod_presenting_a_known_certificate_is_served(self) -> None:
        """Mid-rollout, old pods present status's certificate and new pods the
        Secret's: both are what the operator says is served."""
        result = probed(*every_name("old", info("a1")), *every_name("new", info("b2")))
        verdict = served_verdict(result, known_serials=KNOWN, now=NOW)
        assert (verdict.status, verdict.reason) == ("True", "Served")
        assert "2 Ready frontend pods present serial a1 and b2" in verdict.message

    def test_a_pod_presenting_another_certificate_is_named(self) -> None:
        result = probed(*every_name("good", info("a1")), *every_name("stale", info("0ld")))
        verdict = served_verdict(result, known_serials=KNOWN, now=NOW)
        assert (verdict.status, verdict.reason) == ("False", "ServesOther")
        assert "pod stale for blog.example.com presents serial 0ld" in verdict.message
        assert "Secret blog-tls (serial b2)" in verdict.message
        assert "good" not in verdict.message

    def test_a_known_certificate_that_misses_a_name_is_wrong_for_that_name(self) -> None:
        narrow = info("a1", names=("blog.example.com",))
        verdict = served_verdict(probed(*every_name("p", narrow)), known_serials=KNOWN, now=NOW)
        assert (verdict.status, verdict.reason) == ("False", "ServesOther")
        assert "for www.example.com presents serial a1, which does not cover" in verdict.message
        assert "for blog.example.com" not in verdict.message

    def test_an_expired_certificate_is_wrong_even_when_known(self) -> None:
        expired = info("a1", days_left=-1)
        verdict = served_verdict(probed(*every_name("p", expired)), known_serials=KNOWN, now=NOW)
        assert (verdict.status, verdict.reason) == ("False", "ServesOther")
        assert "expired" in verdict.message

    def test_an_unknown_certificate_says_first_that_it_expired_and_else_until_when(
        self,
    ) -> None:
        expired = info("0ld", days_left=-1)
        verdict = served_verdict(probed(*every_name("p", expired)), known_serials=KNOWN, now=NOW)
        assert "presents serial 0ld, expired" in verdict.message
        valid = served_verdict(probed(*every_name("p", info("0ld"))), known_serials=KNOWN, now=NOW)
        assert "presents serial 0ld (valid until" in valid.message

    def test_a_pod_that_does_not_answer_is_unknown_not_fine(self) -> None:
        result = probed(*every_name("good", info("a1")), *every_name("mute", None, "timed out"))
        verdict = served_verdict(result, known_serials=KNOWN, now=NOW)
        assert (verdict.status, verdict.reason) == ("Unknown", "Unreachable")
        assert "pod mute for blog.example.com: timed out" in verdict.message

    def test_a_wrong_certificate_outweighs_a_pod_that_does_not_answer(self) -> None:
        result = probed(*every_name("mute", None, "refused"), *every_name("p", info("0ld")))
        assert served_verdict(result, known_serials=KNOWN, now=NOW).status == "False"

    def test_many_problems_are_summed_up(self) -> None:
        result = probed(*(p for i in range(4) for p in every_name(f"p{i}", info("0ld"))))
        verdict = served_verdict(result, known_serials=KNOWN, now=NOW)
        assert verdict.message.endswith("; and 5 more")

    def test_the_first_expiry_is_the_earliest_presented(self) -> None:
        soon, later = info("a1", days_left=2), info("b2", days_left=40)
        result = probed(*every_name("a", later), *every_name("b", soon), *every_name("c", None))
        assert earliest_expiry(result) == soon


class StandInProbe:
    """Answers `look` with a result prepared by the test; records what it was asked."""

    def __init__(self) -> None:
        self.result: ProbeResult | None = None
        self.asked: list[tuple[frozenset[ProbeTarget], tuple[str, ...]]] = []

    def look(
        self, key: tuple[str, str], targets: frozenset[ProbeTarget], names: tuple[str, ...]
    ) -> tuple[ProbeResult | None, float | None]:
        self.asked.append((targets, names))
        if self.result is None or (self.result.targets, self.result.names) != (targets, names):
            return None, None
        return self.result, 300.0


def ready_frontend_pod(api: MemoryApi, name: str, address: str) -> None:
    template = api.objects[("Deployment", "ns", "blog-frontend")]["spec"]["template"]
    api.objects[("Pod", "ns", name)] = {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"].get("annotations", {}),
        },
        "status": {"podIP": address, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def condition(api: MemoryApi, kind: str) -> dict[str, Any] | None:
    assert api.status is not None
    return next((c for c in api.status["conditions"] if c["type"] == kind), None)


class TestAPassAsksTheProbe:
    def served_site(self) -> tuple[MemoryApi, StandInProbe, CertificateInfo]:
        api, probe = MemoryApi(), StandInProbe()
        pem, key = ca_signed(["blog.example.com"], not_before=NOW)
        api.objects[("Secret", "ns", "mine")] = {
            "kind": "Secret",
            "metadata": {"name": "mine", "namespace": "ns"},
            "data": render_tls_secret(REF, pem, key)["data"],
        }
        reconcile_site(api, site(tls={"secretName": "mine"}), RenderSettings(), probe=probe)
        ready_frontend_pod(api, "frontend-a", "198.18.0.7")
        return api, probe, certs.certificate_info(pem)

    def again(self, api: MemoryApi, probe: StandInProbe) -> None:
        body = site(tls={"secretName": "mine"}, status=api.status)
        reconcile_site(api, body, RenderSettings(), probe=probe)

    def test_it_asks_about_each_ready_pod_and_name_and_reports_the_finding(self) -> None:
        api, probe, served = self.served_site()
        self.again(api, probe)
        target = ProbeTarget("frontend-a", "198.18.0.7")
        assert probe.asked[-1] == (frozenset({target}), ("blog.example.com",))
        assert condition(api, "CertificateServed") is None  # nothing probed yet

        presented = (Presented("frontend-a", "blog.example.com", served),)
        probe.result = ProbeResult(frozenset({target}), ("blog.example.com",), NOW, presented)
        self.again(api, probe)
        found = condition(api, "CertificateServed")
        assert found is not None
        assert (found["status"], found["reason"]) == ("True", "Served")

        other = certs.certificate_info(certs.self_signed_placeholder(["blog.example.com"])[0])
        presented = (Presented("frontend-a", "blog.example.com", other),)
        probe.result = ProbeResult(frozenset({target}), ("blog.example.com",), NOW, presented)
        self.again(api, probe)
        found = condition(api, "CertificateServed")
        assert found is not None
        assert (found["status"], found["reason"]) == ("False", "ServesOther")
        # CertificateReady, inferred from the pod's hash annotation, cannot see it.
        ready = condition(api, "CertificateReady")
        assert ready is not None
        assert ready["status"] == "True"

    def test_the_last_finding_stands_until_the_new_pods_are_probed(self) -> None:
        api, probe, served = self.served_site()
        target = ProbeTarget("frontend-a", "198.18.0.7")
        presented = (Presented("frontend-a", "blog.example.com", served),)
        probe.result = ProbeResult(frozenset({target}), ("blog.example.com",), NOW, presented)
        self.again(api, probe)
        ready_frontend_pod(api, "frontend-b", "198.18.0.8")  # not probed yet
        self.again(api, probe)
        assert len(probe.asked[-1][0]) == 2
        found = condition(api, "CertificateServed")
        assert found is not None
        assert found["reason"] == "Served"

    def test_without_tls_or_ready_pods_nothing_is_probed_or_reported(self) -> None:
        api, probe = MemoryApi(), StandInProbe()
        reconcile_site(api, site(), RenderSettings(), probe=probe)
        ready_frontend_pod(api, "frontend-a", "198.18.0.7")
        reconcile_site(api, site(status=api.status), RenderSettings(), probe=probe)
        assert probe.asked[-1] == (frozenset(), ())
        assert condition(api, "CertificateServed") is None


def test_a_pass_in_flight_when_the_probe_shuts_down_starts_no_probe() -> None:
    """The operator stopping: a pass still running must not fail on the
    probe's stopped executor (its traceback was in a real-node run's log)."""
    probe = ServedProbe(interval=60, on_done=lambda namespace, name: None)
    probe.shutdown()
    target = frozenset({ProbeTarget("frontend-0", "198.18.0.9")})
    assert probe.look(("ns", "blog"), target, ("blog.example",)) == (None, None)
