"""`kubectl blogsite`, found by the project's kubectl on PATH, against the
local cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration.conftest import ROOT, Kubectl, OperatorProcess
from tests.support import wait_for

EXAMPLE = ROOT / "deploy" / "examples" / "blogsite.yaml"
BIN = Path(sys.executable).parent  # where the package installed kubectl-blogsite


def plugin(
    kubectl: Kubectl, *args: str, kubeconfig: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": kubeconfig or kubectl.kubeconfig,
    }
    return subprocess.run(
        [kubectl.binary, "blogsite", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_status_renew_and_retry_on_a_running_site(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_for(
        lambda: re.search(
            r"^  Ready +True ", plugin(kubectl, "status", "lethain", "-n", namespace).stdout, re.M
        ),
        timeout=90,
        what="kubectl blogsite status showing Ready",
    )
    shown = plugin(kubectl, "status", "lethain", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    screen = shown.stdout
    # One column for every condition type, the longest included.
    assert re.search(r"^  CertRefreshAvailable True ", screen, re.M), screen
    assert re.search(r"^  Ready {16}True ", screen, re.M), screen
    assert f"BlogSite {namespace}/lethain" in screen
    assert "domains:  lethain.com, www.lethain.com" in screen
    assert "Certificate:\n  none (plain HTTP)" in screen
    assert "daedalus      registry.blogsite.test/daedalus-standin:local  2/2 available" in screen
    assert "Created" in screen.split("Events:", 1)[1]

    renewed = plugin(kubectl, "renew", "lethain", "-n", namespace)
    assert renewed.returncode == 0, renewed.stderr
    retried = plugin(kubectl, "retry", "lethain", "-n", namespace)
    assert retried.returncode == 0, retried.stderr
    annotations = kubectl.json("get", "blogsite", "lethain", "-n", namespace)["metadata"][
        "annotations"
    ]
    assert annotations["blog.daedalus.dev/renew-certificate"].endswith("Z")
    assert annotations["blog.daedalus.dev/retry-rollout"].endswith("Z")
    assert "blog.daedalus.dev/retry-rollout=" in retried.stdout


def test_a_missing_site_and_a_silent_cluster_are_named_in_the_error(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    missing = plugin(kubectl, "status", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr == (
        f'kubectl blogsite: blogsite "nope" not found in namespace "{namespace}"\n'
    )
    # A kubeconfig whose server answers nothing (a closed port on loopback).
    config = yaml.safe_load(Path(kubectl.kubeconfig).read_text(encoding="utf-8"))
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"
    silent = tmp_path / "silent.yaml"
    silent.write_text(yaml.safe_dump(config), encoding="utf-8")
    unreachable = plugin(kubectl, "renew", "lethain", "-n", namespace, kubeconfig=str(silent))
    assert unreachable.returncode == 1
    assert "the cluster at https://127.0.0.1:1 does not answer" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_render_needs_no_cluster(kubectl: Kubectl, tmp_path: Path) -> None:
    rendered = plugin(kubectl, "render", "-f", str(EXAMPLE), kubeconfig=str(tmp_path / "none"))
    assert rendered.returncode == 0, rendered.stderr
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {"lethain-frontend", "lethain-daedalus", "lethain-cert-refresh"} <= names
