"""Deliberate breakages, each with the tests that must catch it: `make mutants`.

A test is trusted once it has been seen failing against a broken build; this
keeps those broken builds, so the seeing can be done again. Each mutant is
one textual change to one file of the committed tree. It is applied in a
throwaway git worktree (the checkout itself is never touched), its tests run
there against the local test cluster, and the mutant is *caught* when they
fail. Prints caught/missed per mutant; exits 1 if any was missed.

    hack/mutants.py                    # every mutant
    hack/mutants.py leader-takes-early # some, by name
    hack/mutants.py --list
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The test cluster as the integration tests name and find it.
from tests.integration.conftest import TEST_CLUSTER_ENV, cluster_answers  # noqa: E402

REAL_NODE = "tests/integration/test_real_node.py::"
UPGRADE = "tests/integration/test_upgrade.py::"
CRD_CASES = "tests/integration/test_crd_validation.py::test_invalid_blogsite_is_rejected"
CANARY_STEPS = "tests/unit/test_canary_policy.py::TestSteps::"
CANARY_GATE = "tests/unit/test_canary_gate.py::"
CANARY_SPLIT = "tests/nginx/test_canary_split.py::"
GATEWAY = "tests/integration/test_gateway.py::"
GATEWAY_UNIT = "tests/unit/test_gateway.py::"


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # what the breakage stands for
    path: str  # file in the repository
    old: str  # text that must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail
    # Its code runs in the real node's operator image: built for the mutant
    # (the cluster pushes the worktree's images), minutes more.
    in_image: bool = False


MUTANTS = [
    Mutant(
        "probe-trusts-the-annotation",
        "the served-certificate probe takes any certificate a pod presents for the right one",
        "operator/blogsite_operator/policies/served.py",
        "        elif info.serial not in known_serials:",
        "        elif False:",
        (
            "tests/unit/test_served.py::TestServedVerdict::test_a_pod_presenting_another_certificate_is_named",
            REAL_NODE + "test_a_frontend_pod_presenting_another_certificate_is_caught_by_the_probe",
        ),
        in_image=True,
    ),
    Mutant(
        "probe-never-looks-again",
        "the served-certificate probe's first finding stands for ever: renewals go unseen",
        "operator/blogsite_operator/served_probe.py",
        "            about_these = latest is not None and "
        "(latest.targets, latest.names) == (targets, names)\n"
        "            current = latest if about_these else None\n"
        "            age = time.monotonic() - ended\n"
        "            due = current is None or age >= self.interval\n",
        "            current = latest\n"
        "            age = time.monotonic() - ended\n"
        "            due = current is None\n",
        (REAL_NODE + "test_a_real_node_soak_of_compressed_renewals_through_ca_faults",),
        in_image=True,
    ),
    Mutant(
        "probe-without-the-proxy-line",
        "the probe speaks plain TLS to a frontend that expects a load balancer's PROXY line",
        "operator/blogsite_operator/served_probe.py",
        "        if proxy_protocol:  # the listener expects",
        "        if False:  # the listener expects",
        (
            "tests/nginx/test_served_probe.py::test_the_probe_reads_what_nginx_presents_for_every_name",
        ),
    ),
    Mutant(
        "no-preflight",
        "orders sent for names that point elsewhere: failed authorizations spent",
        "operator/blogsite_operator/issuance/issuer.py",
        "        if self.settings.preflight:\n",
        "        if False:\n",
        (
            "tests/integration/test_acme.py::test_a_name_pointing_elsewhere_stops_the_order_before_the_ca_hears_of_it",
        ),
    ),
    Mutant(
        "fallback-never-taken",
        "a CA that keeps failing is kept to the end: the certificate expires",
        "operator/blogsite_operator/policies/certificate.py",
        "    return current + 1 if failing and in_last_part_of_life(served, now) else current",
        "    return current",
        (
            "tests/unit/test_fallback.py::TestChooseServer::test_in_the_last_sixth_a_ca_that_keeps_failing_is_given_up",
            "tests/integration/test_acme.py::test_a_fallback_ca_issues_before_the_certificate_of_a_ca_that_is_down_expires",
        ),
    ),
    Mutant(
        "ledger-never-consulted",
        "orders sent whatever the account's ledger says: the CA refuses the sixth "
        "certificate for one set of names, after the fact",
        "operator/blogsite_operator/issuance/driver.py",
        "    if account_ledger is None:\n        return None",
        "    if True:\n        return None",
        (
            "tests/integration/test_acme.py::test_name_churn_gets_at_most_five_certificates_per_exact_set_across_a_restart",
            "tests/unit/test_acme_driver.py::TestLedger::test_no_order_past_the_limit_and_the_user_is_told_until_when",
        ),
    ),
    Mutant(
        "ledger-never-written",
        "orders never recorded in the account's ledger: nothing is ever held",
        "operator/blogsite_operator/issuance/issuer.py",
        "        if not what.orders and what.certificate_for is None and not what.failed_names:\n",
        "        if True:\n",
        (
            "tests/integration/test_acme.py::test_name_churn_gets_at_most_five_certificates_per_exact_set_across_a_restart",
        ),
    ),
    Mutant(
        "expiry-alert-in-days",
        "BlogSiteCertificateExpiringSoon at 14 days again: fires for ever on 6-day certificates",
        "deploy/prometheus/blogsite-operator.rules.yaml",
        "            < (blogsite_certificate_expiration_timestamp_seconds\n"
        "               - blogsite_certificate_issued_timestamp_seconds) / 6",
        "            < 14 * 24 * 3600",
        (
            "tests/alerts/test_alerts.py::test_every_alert_fires_in_its_unit_tests_and_only_when_it_should",
        ),
    ),
    Mutant(
        "backoff-ignores-the-lifetime",
        "a failing renewal of a 6-day certificate near its end waits the 6-hour cap",
        "operator/blogsite_operator/policies/certificate.py",
        "    if expires is not None:\n        cap = min(",
        "    if False:\n        cap = min(",
        (
            "tests/unit/test_acme_driver.py::TestFailedOrder::test_a_short_lived_certificate_near_its_end_is_retried_within_a_tenth_of_its_time",
        ),
    ),
    Mutant(
        "kept-certificate-relabelled-only-on-return",
        "a certificate an older operator kept keeps the label GitOps tools prune by, until "
        "a site of its name comes back",
        "operator/blogsite_operator/handlers.py",
        "await asyncio.to_thread(relabel_kept_of_gone_site, self.api, namespace, name)",
        "pass",
        (
            UPGRADE
            + "test_helm_upgrade_from_the_previous_release_keeps_the_site_and_its_certificate",
        ),
        in_image=True,
    ),
    Mutant(
        "renewal-without-replaces",
        "renewals that never name the certificate they replace: no rate-limit exemption",
        "operator/blogsite_operator/issuance/driver.py",
        "    replaces = replaced_certificate_id(served, directory_url(acme.server))\n",
        "    replaces = None\n",
        (
            "tests/unit/test_acme_driver.py::TestReplaces::test_a_renewal_names_the_certificate_this_operator_obtained_from_the_same_ca",
            "tests/integration/test_acme.py::test_a_compressed_soak_of_renewals_through_an_outage_and_a_refused_replaces",
        ),
    ),
    Mutant(
        "already-replaced-fails-the-renewal",
        "a CA's alreadyReplaced taken for the renewal's failure: the certificate ages out",
        "operator/blogsite_operator/issuance/protocol.py",
        "        except errors.ConflictError:  # 409",
        "        except ZeroDivisionError:  # 409",
        (
            "tests/integration/test_acme.py::test_a_renewal_names_the_certificate_it_replaces_and_orders_again_when_refused",
        ),
    ),
    Mutant(
        "refusal-names-the-parent",
        "a cross-field rule that names its object, not the field to change: "
        "spec.daedalus instead of spec.daedalus.replicas",
        "crds/blogsite.yaml",
        "                - fieldPath: .replicas\n                  message: 'a ReadWriteOncePod",
        "                - message: 'a ReadWriteOncePod",
        (CRD_CASES + "[read-write-once-pod-with-two-replicas]",),
    ),
    Mutant(
        "selector-changed-across-releases",
        "a release that selects pods by one more label: fresh sites work, but every "
        "Deployment of the previous release refuses the change (selectors are immutable)",
        "operator/blogsite_operator/render/site.py",
        '        "app.kubernetes.io/component": component.value,\n    }\n\n\n# The site of',
        '        "app.kubernetes.io/component": component.value,\n'
        '        "blog.daedalus.dev/site": site_name,\n    }\n\n\n# The site of',
        (
            UPGRADE
            + "test_helm_upgrade_from_the_previous_release_keeps_the_site_and_its_certificate",
        ),
        in_image=True,
    ),
    Mutant(
        "persistent-volume-not-mounted",
        "daedalus.persistentVolume accepted and never mounted: the blog's files go with its pods",
        "operator/blogsite_operator/render/site.py",
        '        mounts.append({"name": "persistent", "mountPath": kept.mount_path})',
        "        pass",
        (
            REAL_NODE
            + "test_a_persistent_volume_keeps_the_blogs_files_across_a_rollout_and_the_site",
        ),
        in_image=True,
    ),
    Mutant(
        "requests-as-before",
        "the frontend's memory request of before the measurement (64Mi): ten sites no longer fit",
        "operator/blogsite_operator/render/site.py",
        '"requests": {"cpu": "20m", "memory": "16Mi"},',
        '"requests": {"cpu": "20m", "memory": "64Mi"},',
        ("tests/integration/test_small_node.py",),
    ),
    Mutant(
        "cert-refresh-ignores-its-watch",
        "cert-refresh's client lists but drops watch events: a new answer waits for a relist",
        "operator/blogsite_operator/challenge_server.py",
        "# an ERROR event raises: the caller relists\n                if event is not None:",
        "# an ERROR event raises: the caller relists\n                if event is None:",
        ("tests/integration/test_challenge_server.py",),
    ),
    Mutant(
        "playground-keeps-an-earlier-pebbles-certificate",
        "make run a second time serves a certificate whose Pebble root is gone",
        "hack/run.sh",
        '    "${kubectl_bin}" delete secret "${name}" -n "${namespace}" --wait=false >/dev/null',
        "    true",
        ("tests/integration/test_playground.py",),
    ),
    Mutant(
        "writable-paths-ignored",
        "daedalus.writablePaths accepted and never mounted: a blog that writes to /tmp crashes",
        "operator/blogsite_operator/render/site.py",
        '{"name": f"writable-{i}", "emptyDir": {}} for i in range(len(daedalus.writable_paths))',
        '{"name": f"writable-{i}", "emptyDir": {}} for i in range(0)',
        (REAL_NODE + "test_a_real_blog_image_from_a_private_registry_runs_as_its_own_user",),
        in_image=True,
    ),
    Mutant(
        "every-peer-trusted",
        "X-Forwarded-Proto and the client address believed from anyone",
        "operator/blogsite_operator/render/nginx.py",
        '"    default 0;",',
        '"    default 1;",',
        ("tests/nginx/test_proxies.py::TestAnUntrustedClient",),
    ),
    Mutant(
        "redirect-loop-behind-a-proxy",
        "http: redirect answers the proxy's plain HTTP with a 301 even when the client used HTTPS",
        "operator/blogsite_operator/render/nginx.py",
        "'    if ($blogsite_scheme = \"http\") {',",
        "'    if ($scheme = \"http\") {',",
        ("tests/nginx/test_proxies.py::TestBehindATrustedProxy",),
    ),
    Mutant(
        "self-check-without-proxy-protocol",
        "the self-check talks plain HTTP to a frontend that expects the PROXY protocol",
        "operator/blogsite_operator/issuance/issuer.py",
        '        self.sock.sendall(b"PROXY UNKNOWN\\r\\n")',
        "        pass",
        (
            "tests/nginx/test_proxies.py::test_the_self_check_speaks_the_proxy_protocol_to_such_a_frontend",
        ),
    ),
    Mutant(
        "field-newer-than-the-floor",
        "a rendered field Kubernetes 1.31 does not know (pod-level resources, 1.32+)",
        "operator/blogsite_operator/render/site.py",
        '"enableServiceLinks": False,\n        "securityContext"',
        '"enableServiceLinks": False,\n        "resources": {"requests": {"memory": "1Gi"}},\n'
        '        "securityContext"',
        ("tests/integration/test_oldest_kubernetes.py",),
    ),
    Mutant(
        "no-http2",
        "HTTP/2 left off: browsers get HTTP/1.1 only",
        "operator/blogsite_operator/render/nginx.py",
        '"http2 on;",',
        '"http2 off;",',
        ("tests/nginx/test_routing.py::TestHttp2",),
    ),
    Mutant(
        "no-gzip",
        "text answers sent uncompressed",
        "operator/blogsite_operator/render/nginx.py",
        '"gzip on;",',
        '"gzip off;",',
        ("tests/nginx/test_routing.py::TestCompression",),
    ),
    Mutant(
        "hsts-ignored",
        "frontend.hsts accepted and never sent",
        "operator/blogsite_operator/render/nginx.py",
        "    if hsts is None:\n        return []",
        "    if hsts is None or hsts:\n        return []",
        ("tests/nginx/test_routing.py::TestHsts",),
    ),
    Mutant(
        "renderer-invalid-nginx",
        "a renderer change nginx refuses, in a site with no extraConfig",
        "operator/blogsite_operator/render/nginx.py",
        '"proxy_set_header Host $host;",',
        '"proxy_set_header Host;",',
        ("tests/integration/test_generated_specs.py",),
    ),
    Mutant(
        "child-the-api-server-refuses",
        "a rendered child the API server refuses (a label value with a colon)",
        "operator/blogsite_operator/render/site.py",
        '"app.kubernetes.io/managed-by": MANAGED_BY}',
        '"app.kubernetes.io/managed-by": MANAGED_BY, "blog.daedalus.dev/x": "a:b"}',
        ("tests/integration/test_generated_specs.py",),
    ),
    Mutant(
        "renew-text-in-status",
        "the user's renew annotation kept in the status as written",
        "operator/blogsite_operator/issuance/driver.py",
        "request = renew_request_digest(renew_request) if renew_request else None",
        "request = renew_request or None",
        (
            "tests/integration/test_hostile_metadata.py",
            "tests/unit/test_acme_driver.py::TestRenewalRequest",
        ),
    ),
    Mutant(
        "leader-takes-early",
        "a standby that takes the Lease after half its duration: two leaders",
        "operator/blogsite_operator/policies/lease.py",
        "return unchanged_for >= duration\n",
        "return unchanged_for >= duration / 2\n",
        (
            "tests/integration/test_leader.py::test_a_silent_leader_keeps_the_lease_for_its_whole_duration",
            "tests/integration/test_leader.py::test_of_two_operators_only_the_leader_reconciles_and_the_standby_takes_over",
        ),
    ),
    Mutant(
        "leader-does-not-exit",
        "a leader that lost its Lease logs it and goes on writing",
        "operator/blogsite_operator/cli.py",
        "    logging.shutdown()\n    os._exit(1)\n",
        "    return\n",
        (
            "tests/integration/test_leader.py::test_an_operator_that_cannot_renew_exits_before_its_lease_runs_out",
        ),
    ),
    Mutant(
        "renewal-waits-past-the-deadline",
        "a renewal request that may hang for 30 s, past the renew deadline",
        "operator/blogsite_operator/leader.py",
        "timeout=max(0.5, min(left, 5.0))",
        "timeout=30.0",
        (
            "tests/integration/test_leader.py::test_a_leader_cut_off_from_the_api_gives_up_before_its_lease_runs_out[hanging]",
        ),
    ),
    Mutant(
        "lease-requests-retried",
        "lease requests that urllib3 tries again after a timeout, past the renew deadline",
        "operator/blogsite_operator/leader.py",
        "self._api = api.without_retries()",
        "self._api = api",
        (
            "tests/integration/test_leader.py::test_a_leader_cut_off_from_the_api_gives_up_before_its_lease_runs_out[hanging]",
            "tests/integration/test_leader.py::test_an_operator_that_cannot_renew_exits_before_its_lease_runs_out",
        ),
    ),
    Mutant(
        "release-before-the-order-ends",
        "a leader told to stop releases the Lease without waiting for its order",
        "operator/blogsite_operator/cli.py",
        "        queue.wait_for_acme_jobs()\n",
        "",
        (
            "tests/integration/test_leader.py::test_a_leader_told_to_stop_finishes_its_order_then_releases_the_lease",
        ),
    ),
    Mutant(
        "self-check-skipped",
        "no self-check: the CA is asked to validate answers the frontend does not serve",
        "operator/blogsite_operator/issuance/issuer.py",
        "        target = self.settings.self_check\n        if target is None:\n",
        "        target = self.settings.self_check\n        if True:\n",
        (
            "tests/integration/test_real_node.py::test_an_answer_the_frontend_does_not_serve_stops_the_order_before_the_ca_is_asked",
        ),
        in_image=True,
    ),
    Mutant(
        "traceback-on-the-way-out",
        "a Traceback logged only by an operator process that stops (a deleted pod)",
        "operator/blogsite_operator/cli.py",
        '        health.role = "stopping"\n',
        '        health.role = "stopping"\n'
        "        try:\n"
        '            raise RuntimeError("mutant")\n'
        "        except RuntimeError:\n"
        '            logging.getLogger("blogsite_operator").exception("stopping")\n',
        (
            "tests/integration/test_real_node.py::test_the_leader_pod_deleted_under_traffic_hands_over_in_seconds",
        ),
        in_image=True,
    ),
    Mutant(
        "order-after-every-restart",
        "every site orders a certificate on its first pass after a restart",
        "operator/blogsite_operator/issuance/driver.py",
        "        or state.failed_attempts > 0\n",
        "        or state.failed_attempts > 0\n"
        "        or (tuple(names) not in drive_acme.__dict__.setdefault('seen', set())"
        " and not drive_acme.__dict__['seen'].add(tuple(names)))\n",
        ("tests/integration/test_chaos.py::test_sigkill_at_random_moments_loses_nothing",),
    ),
    Mutant(
        "fixed-retry",
        "a failed order retried every base interval instead of backing off",
        "operator/blogsite_operator/policies/certificate.py",
        "delay = min(cap, base * (1 << exponent)) * (1 + jitter)",
        "delay = base * (1 + jitter)",
        (
            "tests/integration/test_chaos.py::test_a_ca_that_limits_fails_and_goes_down_gets_no_hot_loop_and_certificates_keep_serving",
        ),
    ),
    Mutant(
        "leaf-without-its-chain",
        "the Secret gets the certificate alone, without the CA's intermediate: "
        "clients that trust only the root refuse it",
        "operator/blogsite_operator/issuance/protocol.py",
        "        fullchain = order.fullchain_pem.encode()\n",
        '        end = b"\\n-----END CERTIFICATE-----\\n"\n'
        "        fullchain = order.fullchain_pem.encode().split(end)[0] + end\n",
        ("tests/integration/test_chaos.py::test_sigkill_at_random_moments_loses_nothing",),
    ),
    Mutant(
        "issued-dropped-when-stopping",
        "a certificate the CA issued while the operator stops is thrown away: the "
        "restarted operator orders it again",
        "operator/blogsite_operator/issuance/issuer.py",
        "        self._check_still_wanted(job)\n",
        "        if self._stopping:\n"
        '            raise IssuanceError("Stopping", "shutting down")\n'
        "        self._check_still_wanted(job)\n",
        (
            "tests/integration/test_chaos.py::test_sigterm_during_an_order_ends_it_cleanly_and_writes_nothing_half",
        ),
    ),
    Mutant(
        "served-names-not-checked",
        "CertificateReady judges the certificate the frontend serves by its dates "
        "alone: True without a domain the spec added (issue 21, defect 2)",
        "operator/blogsite_operator/policies/certificate.py",
        "    missing = [n for n in names if not covers(served_names, n)]\n",
        "    missing: list[str] = []\n",
        (
            "tests/unit/test_certificate_policy.py::TestServedByFrontend::test_a_served_certificate_without_a_name_the_spec_added_is_not_ready",
            "tests/integration/test_acme.py::test_a_domain_added_is_not_certificate_ready_until_a_certificate_with_it_serves",
        ),
    ),
    Mutant(
        "released-lease-renewed-again",
        "releasing the Lease leaves its renewal thread running: the releasing "
        "process takes the Lease back (issue 21, defect 5)",
        "operator/blogsite_operator/leader.py",
        "            stop, thread = self._renewal\n"
        "            stop.set()\n"
        "            thread.join(timeout=self.timings.renew_deadline)\n",
        "            pass\n",
        (
            "tests/integration/test_leader.py::test_a_released_lease_is_not_taken_again_by_the_process_that_released_it",
        ),
    ),
    Mutant(
        "upstream-address-change-ignored",
        "a re-created upstream Service's new address never reaches the frontend: "
        "nginx proxies to the dead one (issue 21, defect 7)",
        "operator/blogsite_operator/reconcile.py",
        "    if seen is not None and seen != current:\n        return current, current\n",
        "    if False:\n        return current, current\n",
        (
            "tests/unit/test_reconcile.py::test_a_service_created_again_with_a_new_address_rolls_the_frontend_as_the_same_version",
            REAL_NODE + "test_a_daedalus_service_created_again_is_reached_again_within_seconds",
        ),
        in_image=True,
    ),
    Mutant(
        "traffic-gap-ignored",
        "the zero-downtime client counts no gap: a window in which no request "
        "completed (a dead or starved client) passes as zero failures",
        "tests/traffic.py",
        "                if later - earlier > STALL_SECONDS:\n",
        "                if False:\n",
        ("tests/unit/test_traffic.py::test_a_window_without_completed_requests_fails",),
    ),
    Mutant(
        "unowned-config-map",
        "the nginx ConfigMap written without its owner reference (an orphan-to-be)",
        "operator/blogsite_operator/render/site.py",
        '    metadata["labels"] = {**metadata["labels"], NGINX_CONFIG_LABEL: site.name}\n',
        '    metadata["labels"] = {**metadata["labels"], NGINX_CONFIG_LABEL: site.name}\n'
        '    del metadata["ownerReferences"]\n',
        (
            "tests/integration/test_chaos.py::test_sigterm_during_passes_ends_in_the_grace_period_and_a_restart_finishes_the_work",
        ),
    ),
    Mutant(
        "resync-writes",
        "a pass over an unchanged site that writes its status every time",
        "operator/blogsite_operator/reconcile.py",
        "    if patch:\n        api.patch_blogsite_status(",
        "    if True:\n        api.patch_blogsite_status(",
        (
            "tests/integration/test_operator.py::test_an_idle_operator_makes_no_api_writes_over_two_resync_periods",
        ),
    ),
    Mutant(
        "stuck-loop-alive",
        "/healthz that says alive however long the event loop has been stuck",
        "operator/blogsite_operator/health.py",
        "if silent > STUCK_AFTER_SECONDS:",
        "if silent > STUCK_AFTER_SECONDS * 1000:",
        (
            "tests/unit/test_health.py::test_healthz_fails_while_the_event_loop_is_stuck_and_recovers_after",
        ),
    ),
    Mutant(
        "rolls-two-at-a-time",
        "an upgrade that surges two operator pods at once",
        "deploy/helm/blogsite-operator/templates/deployment.yaml",
        "      maxSurge: 1\n",
        "      maxSurge: 2\n",
        ("tests/chart/test_chart.py",),
    ),
    Mutant(
        "canary-failures-not-counted",
        "the canary analysis never sees a failed request: a version failing every page goes out",
        "operator/blogsite_operator/policies/canary.py",
        "        llr(canary.failed, canary.requests, baseline.failed_rate, increase),",
        "        llr(0, canary.requests, baseline.failed_rate, increase),",
        (
            CANARY_STEPS + "test_a_failing_canary_is_reverted_at_once",
            CANARY_GATE + "test_a_version_failing_its_requests_is_reverted_with_every_request_"
            "back_on_stable",
            REAL_NODE + "test_a_version_failing_users_behind_a_passing_health_check_is_reverted_"
            "by_its_canary",
        ),
        in_image=True,
    ),
    Mutant(
        "canary-share-kept-on-revert",
        "a reverted canary keeps its share of requests: users still reach the failed version",
        "operator/blogsite_operator/policies/canary_steps.py",
        "CanaryDecision(None, stable, 0, 0, failed=reason",
        "CanaryDecision(None, stable, 0, state.weight, failed=reason",
        (
            CANARY_STEPS + "test_a_failing_canary_is_reverted_at_once",
            CANARY_GATE + "test_a_version_failing_its_requests_is_reverted_with_every_request_"
            "back_on_stable",
        ),
    ),
    Mutant(
        "canary-skipped-after-a-failure",
        "nginx skips a failing canary for 10 s (its default max_fails): failures go uncounted",
        "operator/blogsite_operator/render/nginx.py",
        '        f"    server {_address(facts.canary_upstream)} max_fails=0;",',
        '        f"    server {_address(facts.canary_upstream)};",',
        (CANARY_SPLIT + "test_a_refused_canary_is_counted_failed_while_stable_answers_the_client",),
    ),
    Mutant(
        "weights-follower-never-reloads",
        "the frontend writes the canary's share and never reloads nginx: no share ever moves",
        "deploy/frontend/canary-weights",
        'kill -HUP "${pid}" 2>/dev/null',
        'true "${pid}" 2>/dev/null',
        (
            CANARY_SPLIT
            + "test_the_canary_gets_its_share_by_reload_and_every_request_is_counted_by_pool",
            CANARY_SPLIT + "test_a_revert_reaches_the_frontend_within_a_long_poll_round_trip",
        ),
    ),
    Mutant(
        "canary-share-before-its-service-routes",
        "the frontend sends the canary its first share before its Service answers: requests "
        "sent to it in between stall a second",
        "deploy/frontend/canary-weights",
        " && ! reachable; then",
        " && false; then",
        (CANARY_SPLIT + "test_a_share_waits_until_the_canary_answers_at_its_address",),
    ),
    Mutant(
        "rolling-update-by-default",
        "a spec without rollout settings gets the plain rolling update, not the canary",
        "operator/blogsite_operator/models.py",
        "        default=RolloutStrategy.CANARY,",
        "        default=RolloutStrategy.ROLLING_UPDATE,",
        (
            CANARY_GATE + "test_a_spec_without_rollout_settings_gets_a_canary",
            (
                "tests/integration/test_rollouts.py::"
                "test_a_canary_with_no_counts_to_read_passes_on_health_alone_and_says_so"
            ),
        ),
    ),
    Mutant(
        "gateway-without-tls-route",
        "a site behind a Gateway gets no TLSRoute: HTTPS never reaches its nginx",
        "operator/blogsite_operator/render/routes.py",
        "    return ROUTE_KINDS if spec.tls is not None else (HTTP_ROUTE,)",
        "    return (HTTP_ROUTE,)",
        (
            GATEWAY_UNIT + "TestRoutes::test_every_name_goes_to_the_frontend_by_http_and_by_sni",
            GATEWAY + "test_three_sites_share_one_gateway_address_each_with_its_own_certificate",
        ),
    ),
    Mutant(
        "gateway-verdict-not-read",
        "a route the Gateway refused is reported accepted: status says served, no one is",
        "operator/blogsite_operator/policies/gateway.py",
        "        if status != CONDITION_TRUE:\n            said",
        "        if False:\n            said",
        (
            GATEWAY_UNIT
            + "TestJudgeGateway::test_a_refused_route_carries_the_gateways_reason_and_message",
            GATEWAY
            + "test_a_route_the_gateway_cannot_take_is_shown_with_its_reason_until_fixed"
            + "[refused-by-the-gateway]",
        ),
    ),
    Mutant(
        "gateway-overrides-the-service-type",
        "behind a Gateway the Service is ClusterIP whatever its type: a site cannot move "
        "onto the Gateway (or off it) with its own Service still serving",
        "operator/blogsite_operator/models.py",
        "        if self.service.type is not None:",
        "        if self.service.type is not None and self.gateway is None:",
        (
            "tests/unit/test_models.py::TestTls::test_a_gateway_is_named_and_excludes_the_proxy_protocol",
            GATEWAY + "test_a_site_leaves_the_gateway_and_comes_back_under_traffic_without_a_"
            "failed_request",
        ),
    ),
    Mutant(
        "self-check-past-the-gateway",
        "behind a Gateway the ACME self-check still asks the frontend Service, not the way "
        "the CA comes (from outside the cluster it cannot even reach it)",
        "operator/blogsite_operator/issuance/issuer.py",
        '        if target == "frontend" and gateway is not None:',
        "        if False:",
        (GATEWAY + "test_three_sites_share_one_gateway_address_each_with_its_own_certificate",),
    ),
]


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        raise SystemExit(
            f"{mutant.name}: {mutant.path} must hold the text once, not {text.count(mutant.old)}x"
        )
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def run(mutant: Mutant, log_dir: Path) -> tuple[bool, float]:
    """(caught, seconds)."""
    tree = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.name}-"))
    started = time.monotonic()
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree)], check=True
    )
    try:
        apply(mutant, tree)
        log = log_dir / f"{mutant.name}.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [
                    str(ROOT / ".venv" / "bin" / "pytest"),
                    "-x",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    *mutant.tests,
                ],
                cwd=tree,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **TEST_CLUSTER_ENV,
                    "BLOGSITE_TEST_DURATIONS": str(log_dir / f"{mutant.name}.durations"),
                    # Up already (main brought it up with this tree's images):
                    # only a mutant of the image has the cluster push its own.
                    **({} if mutant.in_image else {"BLOGSITE_TEST_CLUSTER_READY": "1"}),
                },
                check=False,
            )
        # 1: tests failed (caught). 0: passed (missed). Anything else (no
        # tests collected, an error of the run) is neither: report it.
        if result.returncode not in (0, 1):
            raise SystemExit(f"{mutant.name}: pytest exited {result.returncode}, see {log}")
        return result.returncode == 1, time.monotonic() - started
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )
        shutil.rmtree(tree, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name}: {mutant.why}\n    caught by {' '.join(mutant.tests)}")
        return 0
    log_dir = ROOT / "build" / "mutants"
    log_dir.mkdir(parents=True, exist_ok=True)
    # One test cluster for every run (each pytest session would otherwise
    # start and stop its own); stopped at the end if started here. Mutants
    # whose tests need no cluster (tests/nginx, tests/unit) run without one.
    needs_cluster = any(t.startswith("tests/integration/") for m in chosen for t in m.tests)
    started = needs_cluster and not cluster_answers()
    if started:
        subprocess.run([str(ROOT / "hack" / "cluster.sh"), "up"], env=TEST_CLUSTER_ENV, check=True)
    missed = []
    try:
        for mutant in chosen:
            caught, seconds = run(mutant, log_dir)
            verdict = "caught" if caught else "MISSED"
            print(f"{verdict}  {mutant.name} ({seconds:.0f}s): {mutant.why}", flush=True)
            if not caught:
                missed.append(mutant.name)
    finally:
        if started:
            subprocess.run(
                [str(ROOT / "hack" / "cluster.sh"), "down"], env=TEST_CLUSTER_ENV, check=False
            )
    print(f"{len(chosen) - len(missed)} caught, {len(missed)} missed (logs in {log_dir})")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
