"""/healthz of a real operator process: alive while it works, failing once a
watch has failed for longer than a bound (a lost permission: kopf retries it
for ever, blind meanwhile), so that the kubelet restarts it."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.chart.conftest import CHART, Helm, helm_binary
from tests.integration.conftest import Kubectl, OperatorProcess
from tests.support import free_port, wait_for


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
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


def test_a_watch_that_keeps_failing_for_a_lost_permission_fails_liveness(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    # The chart's namespaced RBAC, for this namespace only.
    rbac = (
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
    kubectl.run("apply", "-f", "-", stdin=rbac)
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
    operator.start()
    try:
        wait_for(lambda: healthz(port) == (200, "ok: leader\n"), timeout=60, what="alive")
        kubectl.run("delete", "rolebinding", "probe-blogsite-operator", "-n", namespace)
        try:
            _, body = wait_for(
                lambda: (answer := healthz(port))[0] == 503 and answer,
                timeout=60,
                interval=0.5,
                what="/healthz failing",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; {healthz(port)}\n{operator.logs()[-4000:]}") from None
        # A watch kopf retries for ever (403s happen in upgrades too) is as
        # good as dead once it has failed without a break for the bound.
        assert "watches failing for" in body, body
        assert f"/namespaces/{namespace}/" in body, body  # names the watch
    finally:
        assert operator.stop() == 0
