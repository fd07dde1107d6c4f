"""The health endpoints of a real operator process running with the chart's
RBAC: /healthz alive while it works and failing once a watch has failed for
longer than a bound (a lost permission: kopf retries it for ever, blind
meanwhile), so that the kubelet restarts it; /readyz and every pass held back
until each watch has listed once."""

from __future__ import annotations

import copy
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import CHART, Helm, helm_binary
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.support import free_port, wait_for


def probe(port: int, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def service_account_kubeconfig(kubectl: Kubectl, namespace: str, account: str, path: Path) -> str:
    """The cluster's kubeconfig with the ServiceAccount's token as its user."""
    token = kubectl.run("create", "token", account, "-n", namespace).stdout.strip()
    config = yaml.safe_load(Path(kubectl.kubeconfig).read_text(encoding="utf-8"))
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def chart_rbac(namespace: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and namespaced RBAC, for this namespace only."""
    rendered = (
        Helm(helm_binary())
        .run(
            "template",
            "probe",
            str(CHART),
            "-n",
            namespace,
            "--set",
            f"watchNamespaces={{{namespace}}},replicaCount=1,leaderElection.enabled=false",
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        )
        .stdout
    )
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def operator_as_chart_account(
    kubectl: Kubectl, namespace: str, tmp_path: Path, rbac: list[dict[str, Any]]
) -> tuple[OperatorProcess, int]:
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    account_config = service_account_kubeconfig(
        kubectl, namespace, "probe-blogsite-operator", tmp_path / "account.yaml"
    )
    port = free_port()
    operator = OperatorProcess(
        Kubectl(kubectl.binary, account_config),
        namespace,
        tmp_path / "operator.log",
        extra_env={
            # Watch requests end every 3 s, so a lost permission shows at once.
            "BLOGSITE_OPERATOR_WATCH_TIMEOUT_SECONDS": "3",
            "BLOGSITE_OPERATOR_WATCH_DEAD_SECONDS": "2",
        },
        extra_args=[f"--health-address=127.0.0.1:{port}"],
    )
    return operator, port


def test_a_watch_that_keeps_failing_for_a_lost_permission_fails_liveness(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    operator, port = operator_as_chart_account(kubectl, namespace, tmp_path, chart_rbac(namespace))
    operator.start()
    try:
        wait_for(lambda: probe(port) == (200, "ok: leader\n"), timeout=60, what="alive")
        kubectl.run("delete", "rolebinding", "probe-blogsite-operator", "-n", namespace)
        try:
            _, body = wait_for(
                lambda: (answer := probe(port))[0] == 503 and answer,
                timeout=60,
                interval=0.5,
                what="/healthz failing",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; {probe(port)}\n{operator.logs()[-4000:]}") from None
        # A watch kopf retries for ever (403s happen in upgrades too) is as
        # good as dead once it has failed without a break for the bound.
        assert "watches failing for" in body, body
        assert f"/namespaces/{namespace}/" in body, body  # names the watch
        # Each refused request is a watch restart in the metrics.
        _, metrics = probe(port, "/metrics")
        restarts = re.findall(
            r'^blogsite_watch_restarts_total\{reason="failed",resource="([a-z]+)"\} ([0-9.]+)$',
            metrics,
            re.M,
        )
        assert restarts, metrics
        assert all(float(count) >= 1 for _, count in restarts)
    finally:
        assert operator.stop() == 0


def test_no_pass_runs_and_readiness_waits_until_every_watch_has_listed_once(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    rbac = chart_rbac(namespace)
    without_pods = copy.deepcopy(rbac)
    role = next(doc for doc in without_pods if doc["kind"] == "Role")
    role["rules"] = [rule for rule in role["rules"] if rule["resources"] != ["pods"]]
    assert len(role["rules"]) == len(next(d for d in rbac if d["kind"] == "Role")["rules"]) - 1
    operator, port = operator_as_chart_account(kubectl, namespace, tmp_path, without_pods)
    kubectl.apply(SITE, namespace)
    operator.start()
    try:
        # The pod watch cannot list: the process leads, but is not ready and
        # holds back the pass the BlogSite's event asks for.
        wait_for(
            lambda: operator.logs().count("/pods?") >= 3,
            timeout=60,
            what="the pod list refused three times",
        )
        assert probe(port, "/readyz") == (
            503,
            "failing: leader, waiting for every watch to list once\n",
        )
        assert "pass begins" not in operator.logs()
        assert not kubectl.exists("deployment", "ready-daedalus", namespace)

        kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
        wait_for(lambda: probe(port, "/readyz") == (200, "ok: leader\n"), what="ready")
        wait_for(
            lambda: kubectl.exists("deployment", "ready-daedalus", namespace),
            what="the held-back pass ran",
        )
    finally:
        assert operator.stop() == 0


def test_an_operator_with_nothing_to_watch_is_ready(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    operator, port = operator_as_chart_account(kubectl, namespace, tmp_path, chart_rbac(namespace))
    operator.start()
    try:
        wait_for(lambda: probe(port, "/readyz") == (200, "ok: leader\n"), what="ready")
    finally:
        assert operator.stop() == 0


SITE = {
    "apiVersion": "blog.daedalus.dev/v1alpha1",
    "kind": "BlogSite",
    "metadata": {"name": "ready"},
    "spec": {
        "domains": ["ready.example.test"],
        "daedalus": {"image": "registry.example.test/daedalus:1"},
    },
}
