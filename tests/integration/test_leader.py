"""Leader election on a real API server: one leader at a time, a standby that
takes over, and a leader that stops before anyone else may start."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from blogsite_operator import kube
from blogsite_operator.leader import LeaderElector
from blogsite_operator.policies.lease import LeaseTimings
from tests.acme_faults import AcmeFaultProxy
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.integration.test_acme import DOMAINS, SITE, acme_site, pebble, trust_pebble  # noqa: F401
from tests.integration.test_chaos import issued_certificate
from tests.pebble import ChallengeServer, Pebble
from tests.stalling_proxy import StallingProxy
from tests.support import FIGURES, wait_for

TIMINGS = LeaseTimings(duration=6, renew_deadline=4, retry_period=0.5)
LEASE = "blogsite-operator"
# What a figure may take beyond what the timings allow: a request or two and
# a scheduler delay on a loaded machine, far below any timing it is added to.
SLACK = 2.0
# A standby's next try: within a retry period and its jitter (20 %).
NEXT_TRY = TIMINGS.retry_period * 1.2 + SLACK


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
        # takes it: watch for two lease durations (samples, however slow on
        # a loaded machine, see renewals all along).
        renewals: set[str] = set()
        deadline = time.monotonic() + 2 * TIMINGS.duration
        while time.monotonic() < deadline:
            renewals.add(lease(kubectl, namespace)["renewTime"])
            assert standby.leading_at is None, "the standby took a Lease that was being renewed"
            time.sleep(0.2)
        assert len(renewals) >= 2 * TIMINGS.duration / TIMINGS.renew_deadline, renewals
        assert lease(kubectl, namespace)["holderIdentity"] == "a"

        renewing.set()
        released_at = time.monotonic()
        leader.release()
        leading_at = standby.wait_leading()
        FIGURES.append(f"leader election: takeover after a release {leading_at - released_at:.2f}s")
        # "A standby takes over at its next try", not after the lease runs out.
        assert leading_at - released_at < NEXT_TRY, leading_at - released_at
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
        waited = standby.wait_leading() - started
        FIGURES.append(
            f"leader election: a standby started after a release led after {waited:.2f}s"
        )
        assert waited < SLACK, waited  # at its first try
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
        # Not before the Lease ran out (two leaders), and at the next try after.
        assert TIMINGS.duration <= waited < TIMINGS.duration + NEXT_TRY, waited
        assert lease(kubectl, namespace)["holderIdentity"] == "b"
    finally:
        standby.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An address that takes connections and never answers (a listener
    that never accepts): requests to it hang until their own timeout."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("cut_off", ["refused", "hanging"])
def test_a_leader_cut_off_from_the_api_gives_up_before_its_lease_runs_out(
    kubectl: Kubectl, namespace: str, api: kube.Api, black_hole: str, cut_off: str
) -> None:
    leader = elector(api, namespace, "a")
    assert leader.acquire(threading.Event())
    renewed_at = time.monotonic()
    # From now on every request of the leader fails at once (a closed port)
    # or hangs (a partition): either way it must stop in time.
    nowhere = client.Configuration()
    nowhere.host = "https://127.0.0.1:1" if cut_off == "refused" else black_hole
    nowhere.verify_ssl = False
    leader.api = kube.Api(client.ApiClient(nowhere))
    lost = threading.Event()
    lost_at: list[float] = []

    def on_lost() -> None:
        lost_at.append(time.monotonic())
        lost.set()

    leader.keep_leading(on_lost)
    assert lost.wait(timeout=30), "the cut-off leader never gave up"
    silent = lost_at[0] - renewed_at
    FIGURES.append(f"leader election: a leader cut off ({cut_off}) stopped after {silent:.2f}s")
    # Others may take the Lease `duration` after they last saw it change,
    # which is after `renewed_at`: the leader stopped before that.
    assert TIMINGS.renew_deadline <= silent < TIMINGS.duration, silent
    assert not leader.leading


def through(proxy: StallingProxy, kubectl: Kubectl, directory: Path) -> Kubectl:
    """kubectl (and its kubeconfig, for an operator) reaching the API server
    through the proxy."""
    kubeconfig = yaml.safe_load(Path(kubectl.kubeconfig).read_text(encoding="utf-8"))
    for entry in kubeconfig["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = directory / "kubeconfig-through-proxy.yaml"
    path.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
    return Kubectl(kubectl.binary, str(path))


def api_server_address(kubectl: Kubectl) -> tuple[str, int]:
    kubeconfig = yaml.safe_load(Path(kubectl.kubeconfig).read_text(encoding="utf-8"))
    url = urllib.parse.urlsplit(kubeconfig["clusters"][0]["cluster"]["server"])
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port


def test_an_operator_that_cannot_renew_exits_before_its_lease_runs_out(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """The README: a leader that cannot renew for the renew deadline exits at
    once. The operator process, cut off by a partition (requests hang)."""
    seconds = 6
    timings = LeaseTimings.scaled(seconds)
    env = {
        "BLOGSITE_OPERATOR_LEADER_LEASE": f"{namespace}/{LEASE}",
        "BLOGSITE_OPERATOR_LEADER_LEASE_SECONDS": str(seconds),
    }
    with StallingProxy(*api_server_address(kubectl)) as proxy:
        operator = OperatorProcess(
            through(proxy, kubectl, tmp_path), namespace, tmp_path / "operator.log", extra_env=env
        )
        operator.start()
        assert operator.process is not None
        try:
            wait_for(lambda: "leading: Lease" in operator.logs(), timeout=60, what="leading")
            first_renewal = lease(kubectl, namespace)["renewTime"]
            wait_for(
                lambda: lease(kubectl, namespace)["renewTime"] != first_renewal,
                timeout=30,
                interval=0.1,
                what="a renewal through the proxy",
            )
            proxy.stall()
            stalled_at = time.monotonic()
            code = operator.process.wait(timeout=30)
            exited_after = time.monotonic() - stalled_at
        finally:
            if operator.process.poll() is None:
                operator.process.kill()
                operator.process.wait()
    FIGURES.append(
        f"leader election: an operator cut off from the API exited after {exited_after:.2f}s "
        f"(renew deadline {timings.renew_deadline:.0f} s, lease {seconds} s)"
    )
    assert code == 1, operator.logs()[-3000:]
    assert "leadership lost; exiting" in operator.logs()
    # It renewed within a retry period before the stall; a standby may take
    # over `duration` after the last renewal it saw: the process was gone.
    assert timings.renew_deadline - timings.retry_period <= exited_after, exited_after
    assert exited_after < timings.duration - timings.retry_period, exited_after


def test_of_two_operators_only_the_leader_reconciles_and_the_standby_takes_over(
    kubectl: Kubectl, namespace: str, tmp_path: Path
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
        holder = lease(kubectl, namespace)["holderIdentity"]
        first.process.kill()  # SIGKILL: no release, the Lease must run out
        killed_at = time.monotonic()
        first.process.wait()
        first.process = None
        kubectl.apply(site("v2"), namespace)
        wait_for(
            lambda: lease(kubectl, namespace)["holderIdentity"] != holder,
            timeout=60,
            interval=0.1,
            what="the standby holding the Lease",
        )
        took_over = time.monotonic() - killed_at
        wait_for(
            lambda: deployment_image(kubectl, namespace) == "example.test/daedalus:v2",
            timeout=60,
            interval=0.2,
            what="the change applied by the new leader",
        )
        FIGURES.append(
            f"leader election: operator SIGKILLed, the standby led after {took_over:.1f}s "
            f"and applied a change {time.monotonic() - killed_at:.1f}s after (lease 6 s)"
        )
        assert "leading: Lease" in second.logs()
        # Not before the Lease ran out from the last renewal (at most a retry
        # period before the kill): earlier would be two leaders.
        timings = LeaseTimings.scaled(6)
        assert timings.duration - timings.retry_period <= took_over, took_over
        assert took_over < timings.duration + timings.retry_period * 1.2 + SLACK, took_over
    finally:
        for process in (first, second):
            if process.process is not None:
                assert process.stop() == 0, process.logs()[-3000:]
    assert "released the leader Lease" in second.logs()
    assert "Traceback" not in first.logs() + second.logs()


def test_a_leader_told_to_stop_finishes_its_order_then_releases_the_lease(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    tmp_path: Path,
) -> None:
    """The README: a leader that is told to stop (SIGTERM) finishes its ACME
    order, then releases the Lease."""
    env = {
        "BLOGSITE_OPERATOR_LEADER_LEASE": f"{namespace}/{LEASE}",
        "BLOGSITE_OPERATOR_LEADER_LEASE_SECONDS": "6",
    }
    operator = OperatorProcess(kubectl, namespace, tmp_path / "operator.log", extra_env=env)
    with AcmeFaultProxy(pebble) as ca:
        # A slow CA: the order outlasts the rest of the shutdown, so a release
        # that did not wait for it would come first.
        ca.delay(0.5)
        trust_pebble(kubectl, namespace, pebble)
        operator.start()
        try:
            wait_for(lambda: "leading: Lease" in operator.logs(), timeout=60, what="leading")
            kubectl.apply(acme_site(pebble, server=ca.directory_url), namespace)
            wait_for(ca.orders_in_flight, timeout=60, interval=0.05, what="an order under way")
            told_to_stop = time.monotonic()
            assert operator.stop() == 0  # SIGTERM, as a pod deletion sends
        finally:
            if operator.process is not None:
                operator.process.kill()
                operator.process.wait()
        (span,) = ca.order_spans(DOMAINS[0])
    logs = operator.logs()
    issued = logs.find(f"[{namespace}/{SITE}] issued a certificate")
    released = logs.find("released the leader Lease")
    assert span.end is not None, "the order was not finished"
    assert span.end > told_to_stop, "the order was over before the test could stop it"
    assert 0 <= issued < released, logs[-3000:]
    assert lease(kubectl, namespace).get("holderIdentity") is None
    assert issued_certificate(kubectl, namespace, SITE) is not None


def site(tag: str) -> dict[str, Any]:
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "blog"},
        "spec": {
            "domains": ["blog.example.test"],
            "daedalus": {"image": f"example.test/daedalus:{tag}"},
            "rollout": {"strategy": "RollingUpdate"},  # a new tag: on the Deployment at once
        },
    }


def deployment_image(kubectl: Kubectl, namespace: str) -> str | None:
    if not kubectl.exists("deployment", "blog-daedalus", namespace):
        return None
    body = kubectl.json("get", "deployment", "blog-daedalus", "-n", namespace)
    image: str = body["spec"]["template"]["spec"]["containers"][0]["image"]
    return image
