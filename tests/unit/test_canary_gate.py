"""The canary rollout through whole passes: Deployments, the share written for
the frontends, status and Events (Kubernetes modelled by PodsApi, the
traffic collector by readings the test writes)."""

from __future__ import annotations

from typing import Any

from blogsite_operator.challenge_server import CANARY_WEIGHT_KEY
from blogsite_operator.policies.canary import PoolCounts
from blogsite_operator.policies.canary_steps import Reading
from blogsite_operator.reconcile import Outcome, reconcile_site
from blogsite_operator.render import RenderSettings, SiteRef
from blogsite_operator.render.site import version_of
from blogsite_operator.rollouts import COMMAND_ANNOTATION
from tests.unit.test_reconcile import ROLLING, RollingApi, site

CANARY = {
    "strategy": "Canary",
    "canary": {"steps": [10, 50], "stepSeconds": 0, "maxStepSeconds": 3600, "bakeSeconds": 0},
}


class PodsApi(RollingApi):
    """RollingApi, and each Deployment of a good image runs its replicas as
    Ready pods of its version (the ones before are gone)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = super().apply(obj)
        if obj["kind"] != "Deployment" or "d:bad" in str(obj["spec"]["template"]):
            return live
        name = obj["metadata"]["name"]
        for key in [k for k in self.objects if k[0] == "Pod" and k[2].startswith(f"{name}-p")]:
            del self.objects[key]
        for index in range(int(obj["spec"]["replicas"])):
            self.objects[("Pod", "ns", f"{name}-p{index}")] = {
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-p{index}",
                    "labels": dict(obj["spec"]["template"]["metadata"]["labels"]),
                },
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        return live


class Collector:
    """Readings as the site's collector would give them: each read, `per_read`
    more requests in each pool, `failing` of the canary's failed."""

    def __init__(self) -> None:
        self.stable = PoolCounts()
        self.canary = PoolCounts()
        self.failing = 0.0
        self.reads = 0

    def __call__(self, ref: SiteRef) -> Reading:
        self.reads += 1
        self.stable = self._more(self.stable, 300, 0)
        self.canary = self._more(self.canary, 200, int(200 * self.failing))
        return Reading("boot", self.stable, self.canary)

    @staticmethod
    def _more(counts: PoolCounts, requests: int, failed: int) -> PoolCounts:
        return PoolCounts(
            counts.requests + requests,
            counts.failed + failed,
            tuple(n + requests for n in counts.latency),
        )


def passes(api: PodsApi, collector: Collector, count: int, **spec: Any) -> list[Outcome]:
    outcomes = []
    for _ in range(count):
        body = site(status=api.status, rollout=CANARY, **spec)
        outcomes.append(reconcile_site(api, body, RenderSettings(), read_traffic=collector))
    return outcomes


def weight(api: PodsApi) -> str:
    data = api.objects[("ConfigMap", "ns", "blog-acme-http01")].get("data") or {}
    return str(data.get(CANARY_WEIGHT_KEY, "0"))


def deployed(api: PodsApi, name: str) -> tuple[str | None, int]:
    deployment = api.objects[("Deployment", "ns", name)]
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"], int(
        deployment["spec"]["replicas"]
    )


def status_of(api: PodsApi) -> dict[str, Any]:
    assert api.status is not None
    return api.status


def events(outcomes: list[Outcome]) -> list[str]:
    return [event.reason for outcome in outcomes for event in outcome.events]


def a_site_at_version_one() -> tuple[PodsApi, Collector]:
    api, collector = PodsApi(), Collector()
    passes(api, collector, 2)
    assert deployed(api, "blog-daedalus") == ("d:1", 2)
    assert deployed(api, "blog-canary")[1] == 0
    assert collector.reads == 0  # nothing to judge, nothing read
    return api, collector


def test_a_good_version_goes_through_every_step_to_stable() -> None:
    api, collector = a_site_at_version_one()
    shares, outcomes = [], []
    for _ in range(12):
        outcomes += passes(api, collector, 1, daedalus={"image": "d:2"})
        shares.append(weight(api))
        if (
            api.status
            and api.status.get("canary") is None
            and shares[-1] == "0"
            and len(shares) > 2
        ):
            break
    assert shares[:6] == ["0", "10", "10", "50", "50", "100"], shares
    assert deployed(api, "blog-daedalus") == ("d:2", 2)
    assert deployed(api, "blog-canary")[1] == 0
    assert weight(api) == "0"
    daedalus = status_of(api)["components"]["daedalus"]
    assert daedalus["lastGoodVersion"] == version_of(
        api.objects[("Deployment", "ns", "blog-daedalus")]
    )
    assert daedalus.get("failedVersion") is None
    assert "CanaryStarted" in events(outcomes)
    assert events(outcomes).count("CanaryStep") == 3  # two steps and the bake
    assert "CanaryPromoted" in events(outcomes)
    assert "RolledBack" not in events(outcomes)


def test_a_version_failing_its_requests_is_reverted_with_every_request_back_on_stable() -> None:
    api, collector = a_site_at_version_one()
    collector.failing = 1.0
    outcomes: list[Outcome] = []
    while "RolledBack" not in events(outcomes):
        assert len(outcomes) < 5, events(outcomes)
        outcomes += passes(api, collector, 1, daedalus={"image": "d:2"})
        shared = weight(api)
    # The very pass that reverts takes every request back.
    assert shared == "0"
    assert deployed(api, "blog-canary")[1] == 0
    assert weight(api) == "0"
    assert deployed(api, "blog-daedalus") == ("d:1", 2)
    assert deployed(api, "blog-canary")[1] == 0
    daedalus = status_of(api)["components"]["daedalus"]
    assert daedalus["failedReason"].startswith("AnalysisFailed: ")
    assert "RolledBack" in events(outcomes)
    rollout = next(c for c in status_of(api)["conditions"] if c["type"] == "RolloutHealthy")
    assert rollout["reason"] == "RolledBack"
    # The spec still asks for it: no second canary (no flip-flop).
    more = passes(api, collector, 3, daedalus={"image": "d:2"})
    assert deployed(api, "blog-canary")[1] == 0
    assert "CanaryStarted" not in events(more)


def test_a_version_whose_pods_crash_never_gets_a_request() -> None:
    api, collector = a_site_at_version_one()
    outcomes = passes(api, collector, 3, daedalus={"image": "d:bad"})
    assert weight(api) == "0"
    assert deployed(api, "blog-daedalus") == ("d:1", 2)
    assert "RolledBack" in events(outcomes)
    assert status_of(api)["components"]["daedalus"]["failedReason"].startswith("PodsFailing")


def test_pause_holds_the_step_and_status_says_so() -> None:
    api, collector = a_site_at_version_one()
    passes(api, collector, 2, daedalus={"image": "d:2"})
    assert weight(api) == "10"
    paused = {"metadata": {"annotations": {COMMAND_ANNOTATION: "pause 1"}}}
    outcomes = []
    for _ in range(3):
        body = site(status=api.status, rollout=CANARY, daedalus={"image": "d:2"})
        body["metadata"]["annotations"] = paused["metadata"]["annotations"]
        outcomes.append(reconcile_site(api, body, RenderSettings(), read_traffic=collector))
    assert weight(api) == "10"
    assert status_of(api)["canary"]["paused"] is True
    assert status_of(api)["rolloutCommand"] == "pause 1"
    assert events(outcomes).count("CanaryPaused") == 1
    progressing = next(c for c in status_of(api)["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Canary")
    assert "(paused)" in progressing["message"]


def test_no_canary_for_a_rolling_update() -> None:
    api, collector = PodsApi(), Collector()
    for image in ("d:1", "d:1", "d:2", "d:2"):
        reconcile_site(
            api,
            site(status=api.status, daedalus={"image": image}, rollout=ROLLING),
            RenderSettings(),
            read_traffic=collector,
        )
    assert deployed(api, "blog-daedalus") == ("d:2", 2)
    assert deployed(api, "blog-canary") == ("d:2", 0)  # empty, mirroring stable
    assert collector.reads == 0


def test_a_spec_without_rollout_settings_gets_a_canary() -> None:
    api, collector = PodsApi(), Collector()
    for image in ("d:1", "d:1", "d:2", "d:2"):
        reconcile_site(
            api,
            site(status=api.status, daedalus={"image": image}),
            RenderSettings(),
            read_traffic=collector,
        )
    assert deployed(api, "blog-daedalus") == ("d:1", 2)  # stable keeps every request
    assert deployed(api, "blog-canary") == ("d:2", 1)  # 5 % of 2 replicas: one pod
    assert status_of(api)["canary"]["phase"] == "Step"
    assert collector.reads > 0
