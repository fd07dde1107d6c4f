"""The Helm chart, rendered and checked by the real helm (hack/build-tools.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import built_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "blogsite-operator"


def helm_binary() -> str:
    """helm at the pinned version, built if missing (a missing one fails)."""
    return str(built_tool("helm", "HELM_BIN") / "helm")


class Helm:
    """The real helm; with a kubeconfig, against that cluster."""

    def __init__(self, binary: str, kubeconfig: str | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        target = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        result = subprocess.run(
            [self.binary, *target, *args], capture_output=True, text=True, check=False, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template(
        self, *sets: str, release: str = "blogsite-operator", namespace: str = "blogsite-system"
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        for value in sets:
            args += ["--set", value]
        return [d for d in yaml.safe_load_all(self.run(*args).stdout) if d]


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(helm_binary())
