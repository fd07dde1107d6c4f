"""Health-gated rollouts on the real control plane, failures played by KWOK stages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl, OperatorProcess, Watch
from tests.support import wait_for

GOOD = "ghcr.io/example/daedalus:1.0.0"
BETTER = "ghcr.io/example/daedalus:1.1.0"


def blogsite(
    image: str = GOOD,
    auto_revert: bool = True,
    frontend_image: str | None = None,
    strategy: str | None = "RollingUpdate",
) -> dict[str, Any]:
    """The site; `strategy` None leaves it to the default (Canary)."""
    frontend: dict[str, Any] = {"replicas": 2}
    if frontend_image:
        frontend["image"] = frontend_image
    rollout: dict[str, Any] = {
        "autoRevert": auto_revert,
        "maxRestarts": 3,
        "readyTimeoutSeconds": 15,
    }
    if strategy is not None:
        rollout["strategy"] = strategy
    return {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "metadata": {"name": "blog"},
        "spec": {
            "domains": ["blog.example.com"],
            "daedalus": {"image": image, "replicas": 2},
            "frontend": frontend,
            "rollout": rollout,
        },
    }


def site(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl.json("get", "blogsite", "blog", "-n", namespace)
    return result


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in body.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def deployment(kubectl: Kubectl, namespace: str, component: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl.json("get", "deployment", f"blog-{component}", "-n", namespace)
    return result


def image_of(body: dict[str, Any]) -> str:
    return str(body["spec"]["template"]["spec"]["containers"][0]["image"])


def wait_until_healthy(
    kubectl: Kubectl, namespace: str, component: str = "daedalus"
) -> dict[str, Any]:
    def healthy() -> dict[str, Any] | None:
        body = site(kubectl, namespace)
        status = body.get("status", {})
        entry = status.get("components", {}).get(component, {})
        ready = condition(body, "Ready").get("status") == "True"
        # Of the spec as it is now: a status from before the last apply (a
        # revert's, Ready on the last good version) is not the answer.
        current = status.get("observedGeneration") == body["metadata"]["generation"]
        healthy = entry.get("lastGoodVersion") == entry.get("version")
        return body if current and ready and healthy else None

    result: dict[str, Any] = wait_for(healthy, timeout=90, what=f"{component} healthy")
    return result


def wait_for_rollout(
    kubectl: Kubectl, namespace: str, reason: str, timeout: float = 90
) -> dict[str, Any]:
    """The BlogSite once its RolloutHealthy condition has `reason`."""

    def reached() -> dict[str, Any] | None:
        body = site(kubectl, namespace)
        return body if condition(body, "RolloutHealthy").get("reason") == reason else None

    result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"RolloutHealthy {reason}")
    return result


def availability_watch(kubectl: Kubectl, namespace: str, component: str) -> Watch:
    return Watch(kubectl, namespace, f"deployment/blog-{component}", "{.status.availableReplicas}")


def available(watch: Watch) -> list[int]:
    return [int(sample or 0) for sample in watch.samples]


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = kubectl.json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=blog"
    )["items"]
    return [e for e in items if e["reason"] == reason]


@pytest.mark.parametrize("strategy", ["RollingUpdate", None], ids=["rolling", "default-canary"])
@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("crash-loop", "restarted"),
        ("never-ready", "not Ready"),
        ("image-pull-fail", "ImagePullBackOff"),
    ],
)
def test_bad_daedalus_image_is_reverted_to_the_last_good_one(  # noqa: PLR0917
    kubectl: Kubectl,
    namespace: str,
    operator_process: OperatorProcess,
    behaviour: str,
    why: str,
    strategy: str | None,
) -> None:
    kubectl.apply(blogsite(strategy=strategy), namespace)
    good = wait_until_healthy(kubectl, namespace)["status"]["components"]["daedalus"]["version"]

    bad_image = f"ghcr.io/example/daedalus:2.0.0-kwok-{behaviour}"
    started = time.monotonic()
    with availability_watch(kubectl, namespace, "daedalus") as watch:
        kubectl.apply(blogsite(bad_image, strategy=strategy), namespace)

        def rolled_back() -> dict[str, Any] | None:
            body = site(kubectl, namespace)
            return body if condition(body, "RolloutHealthy").get("reason") == "RolledBack" else None

        body = wait_for(rolled_back, timeout=90, what="RolloutHealthy=False/RolledBack")
        wait_for(
            lambda: image_of(deployment(kubectl, namespace, "daedalus")) == GOOD,
            timeout=30,
            what="the Deployment back on the good image",
        )
    elapsed = time.monotonic() - started
    assert min(available(watch)) >= 2, f"available replicas dropped: {watch.samples}"

    entry = body["status"]["components"]["daedalus"]
    assert entry["lastGoodVersion"] == good
    assert entry["failedVersion"] not in (None, good)
    assert why in entry["failedReason"]
    assert entry["failedAt"].endswith("Z")
    rollout = condition(body, "RolloutHealthy")
    assert rollout["status"] == "False"
    assert why in rollout["message"]
    (event, *_) = events(kubectl, namespace, "RolledBack")
    assert event["type"] == "Warning"
    assert why in event["message"]
    print(f"{behaviour}: reverted {elapsed:.1f}s after the bad image was applied")

    # The bad version is not applied again, by later passes or after a restart.
    generation = deployment(kubectl, namespace, "daedalus")["metadata"]["generation"]
    for _ in range(3):
        operator_process.looked_again("blog")
    assert operator_process.stop() == 0
    mark = operator_process.log_size()
    operator_process.start()
    operator_process.wait_for_pass("blog", after=mark)
    after = deployment(kubectl, namespace, "daedalus")
    assert after["metadata"]["generation"] == generation
    assert image_of(after) == GOOD
    if strategy is None:  # the canary ran the bad version, and runs nothing now
        assert deployment(kubectl, namespace, "canary")["spec"]["replicas"] == 0
    table = kubectl.run("get", "blogsite", "blog", "-n", namespace, "--no-headers").stdout
    assert "RolledBack" in table
    # The IMAGE column is what runs, the good image, not the spec's bad one.
    assert GOOD in table.split()
    assert bad_image not in table


def test_a_canary_with_no_counts_to_read_passes_on_health_alone_and_says_so(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    """The default strategy where the traffic collector cannot be read (KWOK's
    pods answer nothing): each step waits maxStepSeconds, then passes on the
    canary's pod health, and status lists it; stable is untouched until the
    bake is over."""
    quick = {"steps": [50], "stepSeconds": 1, "maxStepSeconds": 3, "bakeSeconds": 10}

    def canary_site(image: str) -> dict[str, Any]:
        body = blogsite(image, strategy=None)
        body["spec"]["rollout"]["canary"] = quick
        return body

    kubectl.apply(canary_site(GOOD), namespace)
    wait_until_healthy(kubectl, namespace)
    kubectl.apply(canary_site(BETTER), namespace)

    def baking() -> dict[str, Any] | None:
        canary = site(kubectl, namespace).get("status", {}).get("canary") or {}
        return canary if canary.get("phase") == "Bake" else None

    canary = wait_for(baking, timeout=60, what="the bake")
    assert canary["healthOnlySteps"] == [1], canary
    assert image_of(deployment(kubectl, namespace, "daedalus")) == GOOD
    assert image_of(deployment(kubectl, namespace, "canary")) == BETTER
    wait_for(
        lambda: (
            site(kubectl, namespace).get("status", {}).get("canary") is None
            and image_of(deployment(kubectl, namespace, "daedalus")) == BETTER
        ),
        timeout=60,
        what="the canary promoted",
    )
    wait_until_healthy(kubectl, namespace)
    wait_for(
        lambda: deployment(kubectl, namespace, "canary")["spec"]["replicas"] == 0,
        timeout=30,
        what="the canary scaled to zero",
    )
    assert events(kubectl, namespace, "CanaryBaked")


def test_a_good_rollout_keeps_ready_true_and_shows_in_progressing(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.apply(blogsite(), namespace)
    wait_until_healthy(kubectl, namespace)
    conditions = (
        '{.metadata.generation} {.status.conditions[?(@.type=="Ready")].status} '
        '{.status.conditions[?(@.type=="Progressing")].status} '
        '{.status.conditions[?(@.type=="Progressing")].observedGeneration}'
    )
    with Watch(kubectl, namespace, "blogsite/blog", conditions) as watch:
        kubectl.apply(blogsite(BETTER), namespace)
        generation = str(site(kubectl, namespace)["metadata"]["generation"])
        # Complete: Progressing False at the new generation, the new version good.
        wait_for(
            lambda: f"{generation} True False {generation}" in watch.samples,
            timeout=90,
            what=f"Progressing False at generation {generation}",
        )
        done = site(kubectl, namespace)
    samples = [sample.split() for sample in watch.samples]
    # Ready stayed True in every status written while the new pods came up,
    # which Progressing showed instead.
    assert all(ready == "True" for _, ready, *_ in samples), watch.samples
    assert ["True", generation] in [sample[2:] for sample in samples], watch.samples
    assert image_of(deployment(kubectl, namespace, "daedalus")) == BETTER
    entry = done["status"]["components"]["daedalus"]
    assert entry["lastGoodVersion"] == entry["version"]
    assert condition(done, "Progressing")["reason"] == "Complete"
    assert events(kubectl, namespace, "NotReady") == []


def test_new_image_after_a_revert_rolls_out_and_retry_tries_the_failed_one(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.apply(blogsite(), namespace)
    wait_until_healthy(kubectl, namespace)
    bad = "ghcr.io/example/daedalus:2.0.0-kwok-crash-loop"
    kubectl.apply(blogsite(bad), namespace)
    wait_for(
        lambda: condition(site(kubectl, namespace), "RolloutHealthy").get("reason") == "RolledBack",
        timeout=90,
        what="the revert",
    )

    # A retry request puts the failed version back on trial (and it fails again).
    failed_events = len(events(kubectl, namespace, "RolledBack"))
    kubectl.run(
        "annotate", "blogsite", "blog", "-n", namespace, "blog.daedalus.dev/retry-rollout=1"
    )
    wait_for(
        lambda: image_of(deployment(kubectl, namespace, "daedalus")) == bad,
        timeout=30,
        what="the retried version in the Deployment",
    )
    wait_for(
        lambda: len(events(kubectl, namespace, "RolledBack")) > failed_events,
        timeout=90,
        what="a second revert",
    )
    assert site(kubectl, namespace)["status"]["rolloutRetry"] == "1"

    # A new, healthy image rolls out normally.
    kubectl.apply(blogsite(BETTER), namespace)
    body = wait_until_healthy(kubectl, namespace)
    assert image_of(deployment(kubectl, namespace, "daedalus")) == BETTER
    assert condition(body, "RolloutHealthy")["status"] == "True"
    assert events(kubectl, namespace, "RolloutHealthy")


def test_auto_revert_off_only_reports(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.apply(blogsite(auto_revert=False), namespace)
    wait_until_healthy(kubectl, namespace)
    bad = "ghcr.io/example/daedalus:2.0.0-kwok-image-pull-fail"
    kubectl.apply(blogsite(bad, auto_revert=False), namespace)
    body = wait_for_rollout(kubectl, namespace, "RolloutFailed", timeout=60)
    assert "automatic revert is off" in condition(body, "RolloutHealthy")["message"]
    operator_process.looked_again("blog")
    assert image_of(deployment(kubectl, namespace, "daedalus")) == bad
    assert deployment(kubectl, namespace, "daedalus")["status"]["availableReplicas"] == 2


def test_failing_frontend_image_is_reverted(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    kubectl.apply(blogsite(), namespace)
    wait_until_healthy(kubectl, namespace, "frontend")
    good = image_of(deployment(kubectl, namespace, "frontend"))
    bad = "docker.io/nginxinc/nginx-unprivileged:9.9.9-kwok-crash-loop"
    kubectl.apply(blogsite(frontend_image=bad), namespace)
    wait_for(
        lambda: condition(site(kubectl, namespace), "RolloutHealthy").get("reason") == "RolledBack",
        timeout=90,
        what="the frontend revert",
    )
    wait_for(
        lambda: image_of(deployment(kubectl, namespace, "frontend")) == good,
        timeout=30,
        what="the frontend back on its last good image",
    )


def test_first_deployment_that_fails_is_reported_not_reverted(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    bad = "ghcr.io/example/daedalus:2.0.0-kwok-image-pull-fail"
    kubectl.apply(blogsite(bad), namespace)
    body = wait_for_rollout(kubectl, namespace, "RolloutFailed", timeout=60)
    assert "no known-good version" in condition(body, "RolloutHealthy")["message"]
    assert image_of(deployment(kubectl, namespace, "daedalus")) == bad


def wait_for_invalid_config(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    def invalid() -> dict[str, Any] | None:
        body = site(kubectl, namespace)
        return body if condition(body, "ConfigValid").get("status") == "False" else None

    result: dict[str, Any] = wait_for(invalid, timeout=60, what="ConfigValid=False")
    return result


def test_extra_config_is_refused_by_an_operator_that_does_not_allow_it(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    """Off by default: the test operator runs with the defaults."""
    with_extra = blogsite()
    with_extra["spec"]["frontend"]["extraConfig"] = "add_header X-Blog yes;"
    kubectl.apply(with_extra, namespace)
    body = wait_for_invalid_config(kubectl, namespace)
    assert (
        "frontend.extraConfig is disabled in this operator"
        in (condition(body, "ConfigValid")["message"])
    )
    configs = kubectl.json(
        "get", "configmaps", "-n", namespace, "-l", "blog.daedalus.dev/nginx-config-of=blog"
    )["items"]
    assert not [c for c in configs if "X-Blog" in c["data"]["nginx.conf"]]


def test_invalid_nginx_extra_config_is_refused_before_rollout(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess
) -> None:
    assert operator_process.stop() == 0
    operator_process.extra_env["BLOGSITE_OPERATOR_ALLOW_EXTRA_CONFIG"] = "true"
    operator_process.start()
    kubectl.apply(blogsite(), namespace)
    wait_until_healthy(kubectl, namespace, "frontend")
    before = deployment(kubectl, namespace, "frontend")
    configs = kubectl.json(
        "get", "configmaps", "-n", namespace, "-l", "blog.daedalus.dev/nginx-config-of=blog"
    )

    broken = blogsite()
    broken["spec"]["frontend"]["extraConfig"] = "frobnicate on;"
    kubectl.apply(broken, namespace)
    body = wait_for_invalid_config(kubectl, namespace)
    message = condition(body, "ConfigValid")["message"]
    assert 'unknown directive "frobnicate"' in message
    (event, *_) = events(kubectl, namespace, "NginxConfigInvalid")
    assert event["type"] == "Warning"
    operator_process.looked_again("blog")
    after = deployment(kubectl, namespace, "frontend")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    again = kubectl.json(
        "get", "configmaps", "-n", namespace, "-l", "blog.daedalus.dev/nginx-config-of=blog"
    )
    assert len(again["items"]) == len(configs["items"])

    fixed = blogsite()
    fixed["spec"]["frontend"]["extraConfig"] = "add_header X-Blog yes;"
    kubectl.apply(fixed, namespace)
    wait_for(
        lambda: condition(site(kubectl, namespace), "ConfigValid").get("status") == "True",
        timeout=30,
        what="ConfigValid=True",
    )
    wait_for(
        lambda: (
            deployment(kubectl, namespace, "frontend")["metadata"]["generation"]
            > before["metadata"]["generation"]
        ),
        timeout=30,
        what="the valid configuration to roll out",
    )


VERSION_PATH = r"{.spec.template.metadata.labels.blog\.daedalus\.dev/version}"


def test_a_revert_survives_a_kill_between_its_apply_and_its_status_write(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """The operator pauses there (a test hook) and is SIGKILLed: the next
    process must not apply the failed version again."""
    paused = OperatorProcess(
        kubectl,
        namespace,
        tmp_path / "paused.log",
        extra_env={"BLOGSITE_OPERATOR_TEST_PAUSE_AFTER_REVERT_SECONDS": "600"},
    )
    paused.start()
    try:
        kubectl.apply(blogsite(), namespace)
        good = wait_until_healthy(kubectl, namespace)["status"]["components"]["daedalus"]
        bad_image = "ghcr.io/example/daedalus:2.0.0-kwok-image-pull-fail"
        kubectl.apply(blogsite(bad_image), namespace)
        wait_for(lambda: "pausing" in paused.logs(), timeout=90, what="the pause after the revert")
        # Applied, not yet in status.
        assert image_of(deployment(kubectl, namespace, "daedalus")) == GOOD
        components = site(kubectl, namespace)["status"]["components"]
        assert components["daedalus"].get("failedVersion") is None
    finally:
        assert paused.process is not None
        paused.process.kill()
        paused.process.wait()
    with Watch(kubectl, namespace, "deployment/blog-daedalus", VERSION_PATH) as watch:
        operator = OperatorProcess(kubectl, namespace, tmp_path / "operator.log")
        operator.start()
        body = wait_for_rollout(kubectl, namespace, "RolledBack")
        operator.looked_again("blog")
        assert operator.stop() == 0
    assert set(watch.samples) == {good["version"]}, watch.samples
    daedalus = body["status"]["components"]["daedalus"]
    assert daedalus["lastGoodVersion"] == good["version"]
    assert daedalus["failedVersion"] not in (None, good["version"])
    assert len(events(kubectl, namespace, "RolledBack")) == 1
