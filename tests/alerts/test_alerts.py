"""The alert rules, checked and unit-tested by promtool (Debian's prometheus
package; hack/system-deps.sh installs it), and the operator's /metrics
output linted by it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from blogsite_operator.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "blogsite-operator.rules.yaml"
TESTS = Path(__file__).parent / "blogsite-operator.test.yaml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: hack/system-deps.sh installs Debian's prometheus"
    return subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_its_unit_tests_and_only_when_it_should() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    }
    fired = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test") or []
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts without a test that fires them: {alerts - fired}"


def test_the_metrics_output_passes_promtools_lint() -> None:
    metrics = Metrics()
    metrics.observe_site(
        "blogs",
        "lethain",
        {
            "certificate": {"notAfter": "2027-01-01T00:00:00Z"},
            "conditions": [{"type": "CertificateReady", "status": "True"}],
            "components": {"daedalus": {"version": "v1", "lastGoodVersion": "v1"}},
        },
    )
    metrics.reverts.labels("daedalus", "PodsFailing").inc()
    metrics.acme_requests.labels("newOrder", "201").inc()
    metrics.acme_orders.labels("issued").inc()
    metrics.acme_order_duration.observe(1.2)
    metrics.reconciles.labels("success").inc()
    metrics.reconcile_duration.observe(0.05)
    metrics.api_requests.labels("get", "200").inc()
    result = promtool("check", "metrics", stdin=metrics.expose().decode())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout  # no lint findings either
