"""Chaos: the operator SIGKILLed at random moments while sites are created,
changed and issued certificates, and started again each time; SIGTERMed in
the middle of orders; and left running while kube-apiserver and etcd restart
and its watches expire.

Bounded in `make test` (20 sites, 6 kills); `make chaos` runs 50 sites and
20 kills (BLOGSITE_CHAOS_SITES, BLOGSITE_CHAOS_KILLS). Afterwards every site
is Ready on its latest spec, nothing is orphaned or duplicated, every change
made while the operator was down is applied, every ACME site holds one valid
certificate, and no site needed more orders than the kills it went through.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from blogsite_operator.certs import CertificateInfo
from blogsite_operator.reconcile import read_served_certificate
from blogsite_operator.render.site import ACME_ACCOUNT_LABEL, MANAGED_BY, site_of
from tests.acme_faults import AcmeFaultProxy, OrderSpan
from tests.control_plane import ControlPlane
from tests.integration.conftest import ACME_TEST_ENV, Kubectl, OperatorProcess
from tests.integration.test_acme import pebble, trust_pebble  # noqa: F401 - the fixture
from tests.integration.test_health import probe
from tests.pebble import ChallengeServer, Pebble
from tests.support import FIGURES, free_port, wait_for

SITES = int(os.environ.get("BLOGSITE_CHAOS_SITES", "20"))
KILLS = int(os.environ.get("BLOGSITE_CHAOS_KILLS", "6"))
# A CA down this long (make chaos: BLOGSITE_CHAOS_CA_DOWN_SECONDS=180) outlasts
# many backoff steps of the test settings.
CA_DOWN_SECONDS = int(os.environ.get("BLOGSITE_CHAOS_CA_DOWN_SECONDS", "40"))
RETRY_AFTER_SECONDS = 6
BACKOFF_SECONDS = float(ACME_TEST_ENV["BLOGSITE_OPERATOR_ACME_BACKOFF_SECONDS"])
MAX_BACKOFF_SECONDS = float(ACME_TEST_ENV["BLOGSITE_OPERATOR_ACME_MAX_BACKOFF_SECONDS"])
RENEWAL_INFO_SECONDS = float(ACME_TEST_ENV["BLOGSITE_OPERATOR_ACME_RENEWAL_INFO_SECONDS"])
IMAGES = ["ghcr.io/example/daedalus:1", "ghcr.io/example/daedalus:2", "ghcr.io/example/daedalus:3"]


def site(index: int, image: str, acme_server: str | None = None) -> dict[str, Any]:
    """Site c<index>; with an ACME server, one that orders its certificate there."""
    spec: dict[str, Any] = {
        "domains": [f"c{index}.chaos.example"],
        "daedalus": {"image": image, "replicas": 1},
        "frontend": {"replicas": 1},
        # Versions change at random under SIGKILLs: each converges as a rolling
        # update (a canary here, with no traffic, would wait out every step).
        "rollout": {"strategy": "RollingUpdate"},
    }
    if acme_server is not None:
        spec["tls"] = {
            "acme": {
                "server": acme_server,
                "email": "ops@chaos.example",
                "caBundleSecretRef": {"name": "pebble-ca", "key": "ca.crt"},
            }
        }
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": f"c{index}"},
        "spec": spec,
    }


def kill(operator: OperatorProcess) -> None:
    assert operator.process is not None
    operator.process.send_signal(signal.SIGKILL)
    operator.process.wait(timeout=30)
    operator.process = None


def converged(
    kubectl: Kubectl, namespace: str, wanted: dict[int, str], acme: Callable[[int], bool]
) -> bool:
    """Every site `wanted` names (index -> image) exists, is Ready and done
    rolling out on its latest spec and image; `acme` ones hold a certificate."""
    sites = kubectl.json("get", "blogsites", "-n", namespace)["items"]
    deployments = {
        d["metadata"]["name"]: d
        for d in kubectl.json("get", "deployments", "-n", namespace)["items"]
    }
    for body in sites:
        index = int(body["metadata"]["name"][1:])
        status = body.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        daedalus = deployments.get(f"c{index}-daedalus")
        if (
            status.get("observedGeneration") != body["metadata"]["generation"]
            or conditions.get("Ready", {}).get("status") != "True"
            or conditions.get("Progressing", {}).get("status") != "False"
            or daedalus is None
            or daedalus["spec"]["template"]["spec"]["containers"][0]["image"] != wanted[index]
        ):
            return False
        if acme(index) and conditions.get("CertificateReady", {}).get("status") != "True":
            return False
    return len(sites) == len(wanted)


# Every kind of object the operator creates for a site.
CHILD_KINDS = (
    "deployments",
    "services",
    "configmaps",
    "secrets",
    "poddisruptionbudgets",
    "serviceaccounts",
    "roles",
    "rolebindings",
)


def children_by_site(kubectl: Kubectl, namespace: str) -> dict[str, Counter[tuple[str, str]]]:
    """The operator's objects per site, as (kind, name without the site's
    name) counted. Each is owned (as controller) by its live BlogSite, UID
    included; the only ones owned by none are kept on purpose (a site's
    certificate, the ACME accounts sites share)."""
    live = {
        body["metadata"]["name"]: body["metadata"]["uid"]
        for body in kubectl.json("get", "blogsites", "-n", namespace)["items"]
    }
    found: dict[str, Counter[tuple[str, str]]] = {name: Counter() for name in live}
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    for kind in CHILD_KINDS:
        for obj in kubectl.json("get", kind, "-n", namespace, "-l", selector)["items"]:
            meta = obj["metadata"]
            labels = meta.get("labels") or {}
            if labels.get(ACME_ACCOUNT_LABEL):
                continue
            owners = [r for r in meta.get("ownerReferences") or [] if r["kind"] == "BlogSite"]
            site_name = site_of(labels) or ""
            if owners:
                (owner,) = owners
                assert owner.get("controller"), (kind, meta["name"], owner)
                assert live.get(owner["name"]) == owner["uid"], f"orphan: {kind} {meta['name']}"
                site_name = owner["name"]
            else:
                assert meta["name"] == f"{site_name}-tls", f"unowned: {kind} {meta['name']}"
                assert site_name in live, f"orphan: {kind} {meta['name']}"
            # Named by content (the nginx configuration's hash): one kind of child.
            shape = re.sub(r"-[0-9a-f]{10}$", "-HASH", meta["name"].removeprefix(site_name))
            found[site_name][(kind, shape)] += 1
    return found


def assert_children_owned_and_single(
    kubectl: Kubectl, namespace: str, sites: int, acme: Callable[[int], bool]
) -> None:
    """Nothing orphaned or duplicated, of any kind: every site has one of each
    child its kind of site has (four Deployments and four Services among
    them: frontend, daedalus, canary, cert-refresh), the same as every
    other site of its kind."""
    found = children_by_site(kubectl, namespace)
    assert sorted(found) == sorted(f"c{i}" for i in range(sites)), sorted(found)
    shapes: dict[bool, Counter[tuple[str, str]]] = {}
    for index in range(sites):
        children = found[f"c{index}"]
        assert set(children.values()) == {1}, (index, children)
        for kind in ("deployments", "services"):
            assert sum(1 for k, _ in children if k == kind) == 4, (index, children)
        expected = shapes.setdefault(acme(index), children)
        assert children == expected, (index, children, expected)


def assert_issued_by(root_pem: bytes, chain_pem: bytes, name: str) -> None:
    """The chain verifies up to this Pebble's root for `name` (not only an
    issuer that says Pebble)."""
    root = x509.load_pem_x509_certificate(root_pem)
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(DNSName(name))
    verifier.verify(leaf, intermediates)


def passes_under_way(operator: OperatorProcess, namespace: str) -> list[str]:
    """Sites whose pass began and has not ended, in the current process's log."""
    pass_line = re.compile(rf"\[{re.escape(namespace)}/(c\d+)\] pass (begins|ends)")
    running: set[str] = set()
    for found in pass_line.finditer(operator.logs()[operator.started_at :]):
        if found.group(2) == "begins":
            running.add(found.group(1))
        else:
            running.discard(found.group(1))
    return sorted(running)


# After an order became valid, the certificate is downloaded and written to
# the Secret: a kill in that moment interrupts the order too.
ORDER_WRITE_GRACE = 2.0


def interrupted(span: OrderSpan, kills: list[float]) -> bool:
    end = span.end + ORDER_WRITE_GRACE if span.end is not None else float("inf")
    return any(span.start < kill < end for kill in kills)


def test_sigkill_at_random_moments_loses_nothing(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    # Random moments, repeatable: the seed is printed with the figures.
    seed = os.environ.get("BLOGSITE_CHAOS_SEED") or str(random.SystemRandom().randrange(10**6))
    chance = random.Random(seed)  # noqa: S311 - timing, not secrecy
    trust_pebble(kubectl, namespace, pebble)
    # The ACME sites order through a pass-through proxy: the CA's own count
    # of orders, which a kill's lost log lines cannot hide.
    with AcmeFaultProxy(pebble) as ca:

        def acme(index: int) -> str | None:
            return ca.directory_url if index % 2 == 0 else None

        wanted: dict[int, str] = {}  # site -> the image its spec asks for now
        kills: list[float] = []  # time.monotonic() of each
        in_pass: list[bool] = []  # whether it landed while a pass ran
        started = restarted = time.monotonic()
        created = 0
        for _ in range(KILLS):
            # Work for the operator: new sites and new images for old ones.
            for _ in range(max(1, SITES // KILLS)):
                if created < SITES:
                    wanted[created] = IMAGES[0]
                    kubectl.apply(site(created, IMAGES[0], acme(created)), namespace)
                    created += 1
            for index in chance.sample(sorted(wanted), k=min(2, len(wanted))):
                wanted[index] = chance.choice(IMAGES)
                kubectl.apply(site(index, wanted[index], acme(index)), namespace)
            # Killed at a random moment of that work; every third kill once
            # an order is under way at the CA, every third while a pass runs.
            if len(kills) % 3 == 1:
                wait_for(
                    functools.partial(ca.orders_in_flight, since=restarted),
                    timeout=60,
                    interval=0.05,
                    what="an order by this process",
                )
            elif len(kills) % 3 == 2:
                wait_for(
                    lambda: passes_under_way(operator_process, namespace),
                    timeout=60,
                    interval=0.01,
                    what="a pass under way",
                )
            else:
                time.sleep(chance.uniform(0.2, 3.0))
            in_pass.append(bool(passes_under_way(operator_process, namespace)))
            kill(operator_process)
            kills.append(time.monotonic())
            # A change while it is down must not be lost.
            index = chance.choice(sorted(wanted))
            wanted[index] = chance.choice(IMAGES)
            kubectl.apply(site(index, wanted[index], acme(index)), namespace)
            operator_process.start()
            restarted = time.monotonic()
        while created < SITES:
            wanted[created] = IMAGES[0]
            kubectl.apply(site(created, IMAGES[0], acme(created)), namespace)
            created += 1

        wait_for(
            lambda: converged(kubectl, namespace, wanted, acme=lambda index: index % 2 == 0),
            timeout=300,
            interval=1,
            what=f"{SITES} sites converged, {KILLS} kills, seed {seed}",
        )
        elapsed = time.monotonic() - started

        assert_children_owned_and_single(
            kubectl, namespace, SITES, acme=lambda index: index % 2 == 0
        )

        # Every ACME site serves one certificate for its name, from this
        # CA. Each order after a site's first follows a kill that landed
        # during the order before it: a kill outside an order orders nothing.
        orders: Counter[int] = Counter()
        root = pebble.root_pem()
        in_orders = set()
        for index in range(0, SITES, 2):
            name = f"c{index}.chaos.example"
            secret = kubectl.json("get", "secret", f"c{index}-tls", "-n", namespace)
            chain = base64.b64decode(secret["data"]["tls.crt"])
            assert_issued_by(root, chain, name)
            leaf = x509.load_pem_x509_certificate(chain)
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert names.value.get_values_for_type(x509.DNSName) == [name]
            spans = ca.order_spans(name)
            orders[index] = len(spans)
            assert spans, f"{name}: no order"
            for before, after in itertools.pairwise(spans):
                between = [kill for kill in kills if kill < after.start]
                assert interrupted(before, between), (index, spans, kills)
            in_orders |= {kill for span in spans for kill in kills if interrupted(span, [kill])}
        assert in_orders, "no kill landed during an order"
        assert any(in_pass), "no kill landed during a pass"

        # Killed once more with every site settled: no order, no change.
        settled_orders = ca.count("newOrder")
        kill(operator_process)
        mark = operator_process.log_size()
        operator_process.start()
        for index in range(SITES):
            operator_process.wait_for_pass(f"c{index}", mark, timeout=120)
        assert converged(kubectl, namespace, wanted, acme=lambda index: index % 2 == 0)
        assert ca.count("newOrder") == settled_orders, "a kill outside any order ordered"
    logs = operator_process.logs()
    assert "Traceback" not in logs, logs[-5000:]
    FIGURES.append(
        f"chaos (seed {seed}): {SITES} sites, {KILLS} SIGKILLs ({len(in_orders)} during an "
        f"order, {sum(in_pass)} during a pass), converged {elapsed:.0f}s after the first; "
        f"orders per ACME site, as the CA counts them: {dict(Counter(orders.values()))} "
        "(count: sites)"
    )


def test_sigterm_during_an_order_ends_it_cleanly_and_writes_nothing_half(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    trust_pebble(kubectl, namespace, pebble)
    sites = range(0, 8, 2)  # ACME sites, ordering at once
    # Through the pass-through proxy: certificates counted as the CA issues them.
    with AcmeFaultProxy(pebble) as ca:
        for index in sites:
            kubectl.apply(site(index, IMAGES[0], ca.directory_url), namespace)

        # An order is half-way: the CA has created it and not issued yet.
        wait_for(ca.orders_in_flight, timeout=60, interval=0.05, what="an order under way")
        stopping = time.monotonic()
        assert operator_process.stop() == 0  # SIGTERM; fails past 30 s
        stopped = time.monotonic() - stopping
        # Nothing half-written: each TLS Secret is a placeholder or a chain
        # whose key is its own.
        for index in sites:
            secret = kubectl.json("get", "secret", f"c{index}-tls", "-n", namespace)
            served = read_served_certificate(f"c{index}-tls", secret)
            assert served.info is not None, served.problem
        # Started again, it finishes the work with no second certificate.
        operator_process.start()
        wait_for(
            lambda: all(
                conditions_true(kubectl, namespace, f"c{i}", "CertificateReady") for i in sites
            ),
            timeout=120,
            what="every site certified after the restart",
        )
        issued = {
            index: sum(1 for span in ca.order_spans(f"c{index}.chaos.example") if span.end)
            for index in sites
        }
    assert issued == dict.fromkeys(sites, 1), issued
    FIGURES.append(f"chaos: SIGTERM during {len(sites)} orders: stopped in {stopped:.1f}s, exit 0")


def watch_restarts(port: int, reason: str) -> float:
    """blogsite_watch_restarts_total{reason=...} over every resource."""
    status, metrics = probe(port, "/metrics")
    assert status == 200, metrics
    counts = re.findall(
        rf'^blogsite_watch_restarts_total\{{reason="{reason}",resource="[a-z]+"\}} ([0-9.]+)$',
        metrics,
        re.M,
    )
    return sum(float(count) for count in counts)


def api_ready(kubectl: Kubectl) -> bool:
    return kubectl.run("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


@pytest.mark.exclusive
def test_api_server_and_etcd_restarts_and_expired_watches_lose_nothing(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    if os.environ.get("BLOGSITE_TEST_KUBECONFIG"):
        reason = "restarts the processes of hack/cluster.sh's control plane; this is another"
        if os.environ.get("CI"):  # CI runs on that cluster: another one is a broken set-up
            pytest.fail(f"{reason}, and CI must run this test")
        pytest.skip(reason)
    control_plane = ControlPlane(Path(kubectl.kubeconfig).parent)
    port = free_port()
    operator = OperatorProcess(
        kubectl,
        namespace,
        tmp_path / "operator.log",
        extra_args=["--health-address", f"127.0.0.1:{port}"],
    )
    wanted = dict.fromkeys(range(6), IMAGES[0])

    def change(*indexes: int) -> None:
        for index in indexes:
            wanted[index] = IMAGES[(IMAGES.index(wanted.get(index, IMAGES[0])) + 1) % 3]
            kubectl.apply(site(index, wanted[index]), namespace)

    def settled(what: str, since: float) -> str:
        wait_for(
            lambda: converged(kubectl, namespace, wanted, acme=lambda _: False),
            timeout=180,
            interval=1,
            what=what,
        )
        return f"{what}: converged {time.monotonic() - since:.0f}s after the fault began"

    for index in wanted:
        kubectl.apply(site(index, wanted[index]), namespace)
    operator.start()
    figures = []
    try:
        settled("the sites at the start", time.monotonic())
        process = operator.process
        assert process is not None

        # kube-apiserver goes away and comes back; the changes that follow apply.
        began, failed = time.monotonic(), watch_restarts(port, "failed")
        with control_plane.apiserver.stopped():
            wait_for(
                lambda: watch_restarts(port, "failed") > failed,
                timeout=60,
                what="the operator's watches failing",
            )
        wait_for(lambda: api_ready(kubectl), timeout=120, what="kube-apiserver back")
        change(0, 1)
        wanted[6] = IMAGES[0]
        kubectl.apply(site(6, IMAGES[0]), namespace)
        figures.append(settled("kube-apiserver restarted", began))

        # etcd goes away under the API server and comes back.
        began = time.monotonic()
        with control_plane.etcd.stopped():
            wait_for(lambda: not api_ready(kubectl), timeout=60, what="the API server unready")
        wait_for(lambda: api_ready(kubectl), timeout=120, what="etcd back")
        change(2)
        figures.append(settled("etcd restarted", began))

        # The watches expire. The operator is frozen; the API server restarts
        # under it, so its streams end with no event in flight; then children
        # go, a spec changes, and etcd forgets that history. Every watch
        # resumes into 410 Gone and lists again, and a list sends no DELETED:
        # the operator must not go on trusting what it had.
        began, expired = time.monotonic(), watch_restarts(port, "expired")
        process.send_signal(signal.SIGSTOP)
        try:
            with control_plane.apiserver.stopped():
                pass
            wait_for(lambda: api_ready(kubectl), timeout=120, what="kube-apiserver back")
            kubectl.run("delete", "deployment", "c3-daedalus", "-n", namespace)
            kubectl.run("delete", "service", "c4-frontend", "-n", namespace)
            change(5)
            revision = control_plane.compact_etcd()
        finally:
            process.send_signal(signal.SIGCONT)
        figures.append(settled(f"watches expired (etcd compacted at {revision})", began))
        assert_children_owned_and_single(kubectl, namespace, len(wanted), acme=lambda _: False)
        assert watch_restarts(port, "expired") > expired, "no watch saw 410 Gone"

        # All of it in the one process: nothing restarted the operator.
        assert operator.process is process
        assert process.poll() is None
    finally:
        code = operator.stop()
    assert code == 0
    assert "Traceback" not in operator.logs(), operator.logs()[-5000:]
    FIGURES.extend(f"chaos: {figure}" for figure in figures)


def backoff_steps(within: float) -> Iterator[float]:
    """When the operator's backoff tries again, within `within` seconds of a first failure."""
    at, wait = 0.0, BACKOFF_SECONDS
    while at + wait <= within:
        at += wait
        yield at
        wait = min(2 * wait, MAX_BACKOFF_SECONDS)


def issued_certificate(kubectl: Kubectl, namespace: str, site: str) -> CertificateInfo | None:
    """What SITE-tls holds, when a CA issued it (not a placeholder)."""
    secret = kubectl.run("get", "secret", f"{site}-tls", "-n", namespace, "-o", "json", check=False)
    if secret.returncode != 0:
        return None
    info = read_served_certificate(f"{site}-tls", json.loads(secret.stdout)).info
    return info if info is not None and not info.is_placeholder else None


def conditions_true(kubectl: Kubectl, namespace: str, site: str, *types: str) -> bool:
    body = kubectl.json("get", "blogsite", site, "-n", namespace)
    conditions = {
        c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []
    }
    return all(conditions.get(kind) == "True" for kind in types)


def test_a_ca_that_limits_fails_and_goes_down_gets_no_hot_loop_and_certificates_keep_serving(
    kubectl: Kubectl,
    namespace: str,
    pebble: Pebble,  # noqa: F811 - the fixture imported above
    challenge_server: ChallengeServer,
    operator_process: OperatorProcess,
) -> None:
    """Backoff 2 s doubling to 8 s and renewal info every 3 s (ACME_TEST_ENV):
    hours scaled to seconds, so a CA down for CA_DOWN_SECONDS is a long outage."""
    trust_pebble(kubectl, namespace, pebble)
    figures = []
    with AcmeFaultProxy(pebble) as ca:

        def apply(index: int) -> None:
            kubectl.apply(site(index, IMAGES[0], ca.directory_url), namespace)

        def issued(*indexes: int) -> dict[int, CertificateInfo] | None:
            found = {i: issued_certificate(kubectl, namespace, f"c{i}") for i in indexes}
            if all(found.values()) and all(
                conditions_true(kubectl, namespace, f"c{i}", "CertificateReady") for i in found
            ):
                return {i: info for i, info in found.items() if info is not None}
            return None

        # Rate limited: each order answered 429 with a Retry-After is tried
        # again only once that has passed.
        ca.rate_limit_orders(RETRY_AFTER_SECONDS)
        for index in (0, 1):
            apply(index)
        wait_for(
            lambda: all(len(ca.orders_for(f"c{i}.chaos.example")) >= 3 for i in (0, 1)),
            timeout=60,
            what="three rate-limited orders of each site",
        )
        ca.pass_through()
        first = wait_for(lambda: issued(0, 1), timeout=60, what="c0 and c1 issued")
        # After each 429: a badNonce (400) is sent again at once, rightly.
        gaps = [
            later.time - earlier.time
            for i in (0, 1)
            for earlier, later in itertools.pairwise(ca.orders_for(f"c{i}.chaos.example"))
            if earlier.fault == "rateLimited"
        ]
        assert min(gaps) >= RETRY_AFTER_SECONDS - 0.5, gaps
        figures.append(
            f"CA rate-limiting orders (Retry-After {RETRY_AFTER_SECONDS}s): "
            f"{len(gaps)} waits, the shortest {min(gaps):.1f}s"
        )

        # Down for a long while: c0 must renew, c2 is new; c1 needs nothing.
        # Nobody loses the certificate they serve, and nobody hammers the CA.
        ca.down()
        down_since = time.monotonic()
        kubectl.run(
            "annotate", "blogsite", "c0", "-n", namespace, "blog.daedalus.dev/renew-certificate=1"
        )
        apply(2)
        while time.monotonic() - down_since < CA_DOWN_SECONDS:
            for index in (0, 1):
                assert issued_certificate(kubectl, namespace, f"c{index}") == first[index]
                assert conditions_true(kubectl, namespace, f"c{index}", "CertificateReady"), (
                    f"c{index} while the CA is down"
                )
            time.sleep(1)  # the outage lasts this long whatever happens: sample it
        during = ca.requests(since=down_since)
        ca.up()
        # At most one try per backoff step for each site that wants an order,
        # and one renewal-info poll per interval for each site with a
        # certificate, each a single request that fails: never a hot loop.
        tries = 1 + sum(1 for _ in backoff_steps(CA_DOWN_SECONDS))
        polls = 1 + int(CA_DOWN_SECONDS / RENEWAL_INFO_SECONDS)
        bound = 2 * tries + 2 * polls
        assert 0 < len(during) <= bound, Counter(r.endpoint for r in during)
        # Both a try and a poll begin with the directory, so the CA cannot
        # tell them apart; each site's own count of failed tries can. A
        # fixed retry every BACKOFF_SECONDS would try twice as often.
        assert tries * 2 <= CA_DOWN_SECONDS / BACKOFF_SECONDS, "too short to tell them apart"
        for index in (0, 2):
            certificate = kubectl.json("get", "blogsite", f"c{index}", "-n", namespace)["status"][
                "certificate"
            ]
            assert 1 <= certificate["failedAttempts"] <= tries, (index, certificate)
        # c2's order may finish before c0's next try: wait for both.
        after = wait_for(
            lambda: (found := issued(0, 1, 2)) and found[0].serial != first[0].serial and found,
            timeout=60,
            what="c2 issued and c0 renewed once the CA is back",
        )
        assert after[1] == first[1], "c1 needed nothing"
        figures.append(
            f"CA down {CA_DOWN_SECONDS}s: {len(during)} requests from 3 sites "
            f"(bound {bound}; {dict(Counter(r.endpoint for r in during))}); "
            "the valid certificates served throughout"
        )

        # A flaky CA: some requests fail with 5xx, many nonces are rejected.
        began = time.monotonic()
        ca.fail_randomly(0.05, seed=int(began))
        ca.reject_nonces(0.3, seed=int(began))
        for index in (3, 4, 5):
            apply(index)
        wait_for(lambda: issued(3, 4, 5), timeout=180, what="issued from a flaky CA")
        faults = Counter(r.fault for r in ca.requests(since=began) if r.fault)
        ca.pass_through()
        figures.append(
            f"CA flaky (5% 5xx, 30% badNonce): 3 sites issued in {time.monotonic() - began:.0f}s, "
            f"{len(ca.requests(since=began))} requests, faults {dict(faults)}"
        )

    logs = operator_process.logs()
    issued_counts = {i: logs.count(f"[{namespace}/c{i}] issued a certificate") for i in range(6)}
    assert issued_counts == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, issued_counts
    FIGURES.extend(f"chaos: {figure}" for figure in figures)


def test_sigterm_during_passes_ends_in_the_grace_period_and_a_restart_finishes_the_work(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    sites = 12
    wanted = dict.fromkeys(range(sites), IMAGES[0])
    for index in wanted:
        kubectl.apply(site(index, IMAGES[0]), namespace)
    in_flight = wait_for(
        lambda: passes_under_way(operator_process, namespace),
        timeout=60,
        interval=0.01,
        what="a pass under way",
    )
    stopping = time.monotonic()
    assert operator_process.stop() == 0  # SIGTERM; fails past 30 s
    stopped = time.monotonic() - stopping
    # Started again, it finishes what the stopped one left, with nothing
    # orphaned or made twice.
    operator_process.start()
    wait_for(
        lambda: converged(kubectl, namespace, wanted, acme=lambda _: False),
        timeout=180,
        interval=1,
        what=f"{sites} sites converged after the restart",
    )
    assert_children_owned_and_single(kubectl, namespace, sites, acme=lambda _: False)
    FIGURES.append(
        f"chaos: SIGTERM during passes over {', '.join(in_flight)}: stopped in {stopped:.1f}s, "
        "exit 0"
    )
