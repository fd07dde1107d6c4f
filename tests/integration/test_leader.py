"""Leader election on a real API server: one leader at a time, a standby that
takes over, and a leader that stops before anyone else may start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from blogsite_operator import kube
from blogsite_operator.leader import LeaderElector
from blogsite_operator.policies.lease import LeaseTimings
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.support import FIGURES, wait_for

TIMINGS = LeaseTimings(duration=6, renew_deadline=4, retry_period=0.5)
LEASE = "blogsite-operator"


@pytest.fixture
def api(kubectl: Kubectl) -> Iterator[kube.Api]:
    api_client = config.new_client_from_config(config_file=kubectl.kubeconfig)  # type: ignore[no-untyped-call]
    yield kube.Api(api_client)
    api_client.close()


def elector(api: kube.Api, namespace: str, identity: str) -> LeaderElector:
    return LeaderElector(api, namespace=namespace, name=LEASE, identity=identity, timings=TIMINGS)


def lease(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = kubectl.json("get", "lease", LEASE, "-n", namespace)["spec"]
    return spec


class Candidate:
    """An elector waiting in a thread, as a standby replica does."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self.stop = threading.Event()
        self.leading_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self.elector.acquire(self.stop):
            self.leading_at = time.monotonic()

    def wait_leading(self) -> float:
        """When (monotonic) it began to lead."""
        leading_at: float = wait_for(
            lambda: self.leading_at, timeout=60, interval=0.1, what="the standby leading"
        )
        return leading_at

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_a_standby_waits_while_the_leader_renews_and_takes_over_when_it_lets_go(
    kubectl: Kubectl, namespace: str, api: kube.Api
) -> None:
    leader = elector(api, namespace, "a")
    assert leader.acquire(threading.Event())
    renewing = leader.keep_leading(on_lost=lambda: None)
    standby = Candidate(elector(api, namespace, "b"))
    try:
        # The standby sees the Lease change with every renewal and never
        # takes it: watch renewals for more than a lease duration.
        renewals: set[str] = set()

        def renewed_for_two_durations() -> bool:
            renewals.add(lease(kubectl, namespace)["renewTime"])
            assert standby.leading_at is None, "the standby took a Lease that was being renewed"
            return len(renewals) * TIMINGS.retry_period > 2 * TIMINGS.duration

        wait_for(renewed_for_two_durations, timeout=60, interval=0.2, what="renewals")
        assert lease(kubectl, namespace)["holderIdentity"] == "a"

        renewing.set()
        released_at = time.monotonic()
        leader.release()
        leading_at = standby.wait_leading()
        FIGURES.append(f"leader election: takeover after a release {leading_at - released_at:.2f}s")
        spec = lease(kubectl, namespace)
        assert spec["holderIdentity"] == "b"
        assert spec["leaseTransitions"] == 1
    finally:
        renewing.set()
        standby.close()


def test_a_released_lease_is_not_taken_again_by_the_process_that_released_it(
    kubectl: Kubectl, namespace: str, api: kube.Api
) -> None:
    """As the operator does: renewing is never stopped by hand before the
    release, and no standby is there to take the Lease at once."""
    leader = elector(api, namespace, "a")
    assert leader.acquire(threading.Event())
    leader.keep_leading(on_lost=lambda: None)
    wait_for(
        lambda: lease(kubectl, namespace)["renewTime"] != lease(kubectl, namespace)["acquireTime"],
        timeout=30,
        interval=0.2,
        what="a renewal",
    )
    leader.release()
    released = lease(kubectl, namespace)
    assert released.get("holderIdentity") is None
    # Several renewal periods: the old renewal thread must not write again.
    seen = set()
    deadline = time.monotonic() + 6 * TIMINGS.retry_period
    while time.monotonic() < deadline:
        spec = lease(kubectl, namespace)
        seen.add((spec.get("holderIdentity"), spec["renewTime"]))
        time.sleep(0.1)
    assert seen == {(None, released["renewTime"])}
    started = time.monotonic()
    standby = Candidate(elector(api, namespace, "b"))
    try:
        FIGURES.append(
            "leader election: a standby started after a release leads "
            f"{standby.wait_leading() - started:.2f}s after it starts"
        )
        assert lease(kubectl, namespace)["holderIdentity"] == "b"
    finally:
        standby.close()


def test_a_silent_leader_keeps_the_lease_for_its_whole_duration(
    kubectl: Kubectl, namespace: str, api: kube.Api
) -> None:
    leader = elector(api, namespace, "a")
    assert leader.acquire(threading.Event())
    silent_from = time.monotonic()  # killed: it never renews nor releases
    standby = Candidate(elector(api, namespace, "b"))
    try:
        waited = standby.wait_leading() - silent_from
        FIGURES.append(f"leader election: takeover from a dead leader {waited:.2f}s")
        assert waited >= TIMINGS.duration, waited
        assert lease(kubectl, namespace)["holderIdentity"] == "b"
    finally:
        standby.close()


def test_a_leader_cut_off_from_the_api_gives_up_before_its_lease_runs_out(
    kubectl: Kubectl, namespace: str, api: kube.Api
) -> None:
    leader = elector(api, namespace, "a")
    assert leader.acquire(threading.Event())
    renewed_at = time.monotonic()
    # From now on every request of the leader fails, as in a partition.
    nowhere = client.Configuration()
    nowhere.host = "https://127.0.0.1:1"
    leader.api = kube.Api(client.ApiClient(nowhere))
    lost = threading.Event()
    lost_at: list[float] = []

    def on_lost() -> None:
        lost_at.append(time.monotonic())
        lost.set()

    leader.keep_leading(on_lost)
    assert lost.wait(timeout=30), "the cut-off leader never gave up"
    silent = lost_at[0] - renewed_at
    FIGURES.append(f"leader election: a cut-off leader stopped after {silent:.2f}s")
    # Others may take the Lease `duration` after they last saw it change,
    # which is after `renewed_at`: the leader stopped before that.
    assert TIMINGS.renew_deadline <= silent < TIMINGS.duration, silent
    assert not leader.leading


def test_of_two_operators_only_the_leader_reconciles_and_the_standby_takes_over(
    kubectl: Kubectl, namespace: str, tmp_path: Any
) -> None:
    env = {
        "BLOGSITE_OPERATOR_LEADER_LEASE": f"{namespace}/{LEASE}",
        "BLOGSITE_OPERATOR_LEADER_LEASE_SECONDS": "6",
    }
    first = OperatorProcess(kubectl, namespace, tmp_path / "first.log", extra_env=env)
    second = OperatorProcess(kubectl, namespace, tmp_path / "second.log", extra_env=env)
    first.start()
    wait_for(lambda: "leading: Lease" in first.logs(), timeout=60, what="the first leading")
    second.start()
    try:
        wait_for(lambda: "waiting to lead" in second.logs(), timeout=60, what="the second waiting")
        kubectl.apply(site("v1"), namespace)
        wait_for(
            lambda: deployment_image(kubectl, namespace) == "example.test/daedalus:v1",
            timeout=60,
            what="the site's Deployment from the leader",
        )
        wait_for(lambda: "reconciled" in first.logs(), what="the leader's pass logged")
        assert "reconciled" not in second.logs()

        assert first.process is not None
        first.process.kill()  # SIGKILL: no release, the Lease must run out
        killed_at = time.monotonic()
        first.process.wait()
        first.process = None
        kubectl.apply(site("v2"), namespace)
        wait_for(
            lambda: deployment_image(kubectl, namespace) == "example.test/daedalus:v2",
            timeout=60,
            interval=0.2,
            what="the change applied by the new leader",
        )
        FIGURES.append(
            "leader election: operator SIGKILLed, change applied by the standby after "
            f"{time.monotonic() - killed_at:.1f}s (lease 6 s)"
        )
        assert "leading: Lease" in second.logs()
    finally:
        for process in (first, second):
            if process.process is not None:
                assert process.stop() == 0, process.logs()[-3000:]
    assert "released the leader Lease" in second.logs()
    assert "Traceback" not in first.logs() + second.logs()


def site(tag: str) -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "blog"},
        "spec": {
            "domains": ["blog.example.test"],
            "daedalus": {"image": f"example.test/daedalus:{tag}"},
        },
    }


def deployment_image(kubectl: Kubectl, namespace: str) -> str | None:
    if not kubectl.exists("deployment", "blog-daedalus", namespace):
        return None
    body = kubectl.json("get", "deployment", "blog-daedalus", "-n", namespace)
    image: str = body["spec"]["template"]["spec"]["containers"][0]["image"]
    return image
