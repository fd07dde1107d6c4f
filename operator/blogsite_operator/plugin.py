"""`kubectl blogsite`: day-2 commands for BlogSites (kubectl finds this
program on PATH as `kubectl-blogsite`).

  kubectl blogsite status NAME [-n NS]   conditions, certificate, rollouts, Events
  kubectl blogsite renew NAME [-n NS]    order a new certificate now
  kubectl blogsite retry NAME [-n NS]    try a reverted version again
  kubectl blogsite render -f FILE        what the operator would create (no cluster)
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import Any

import urllib3
from kubernetes import config
from kubernetes.client.exceptions import ApiException

from blogsite_operator import kube, models
from blogsite_operator.cli import CliError, render_command
from blogsite_operator.issuance.driver import RENEW_ANNOTATION
from blogsite_operator.rollouts import COMMAND_ANNOTATION, RETRY_ANNOTATION

EVENTS_SHOWN = 8


def connect(args: argparse.Namespace) -> tuple[kube.Api, str]:
    """The API and the namespace to use: -n, else the context's, else default."""
    try:
        contexts, current = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context
        )
    except (config.ConfigException, FileNotFoundError) as error:
        raise CliError(f"no usable kubeconfig: {error}") from error
    context = next((c for c in contexts if c["name"] == args.context), current)
    namespace = args.namespace or context.get("context", {}).get("namespace") or "default"
    api_client.configuration.retries = 0
    return kube.Api(api_client), namespace


def fetch_site(api: kube.Api, namespace: str, name: str) -> dict[str, Any]:
    try:
        site = api.get(models.KIND, namespace, name)
    except urllib3.exceptions.HTTPError as error:
        raise CliError(f"the cluster at {api.host} does not answer: {error}") from error
    except ApiException as error:
        raise CliError(kube.describe_error(error)) from error
    if site is None:
        raise CliError(f'blogsite "{name}" not found in namespace "{namespace}"')
    return site


def status_command(args: argparse.Namespace) -> int:
    api, namespace = connect(args)
    site = fetch_site(api, namespace, args.name)
    events = api.events_of(namespace, args.name)
    sys.stdout.write(status_screen(site, events))
    return 0


def _canary_lines(canary: dict[str, Any] | None) -> list[str]:
    if not canary:
        return []
    paused = ", paused" if canary.get("paused") else ""
    where = f"{canary.get('phase')} {canary.get('step')}/{canary.get('steps')}"
    share = f"{canary.get('weight')}% of requests{paused}"
    lines = [f"  canary        {canary.get('version')}: {where}, {share}"]
    if canary.get("canaryRequests") is not None:
        lines.append(
            f"  {'':<13} {canary.get('canaryFailed')} of {canary['canaryRequests']} canary "
            f"requests failed (stable {canary.get('stableFailedRate', '?')})"
        )
    return lines


def _reached_lines(status: dict[str, Any]) -> list[str]:
    """Where the site is reached: its addresses, and the Gateway's routes."""
    addresses = ", ".join(status.get("externalAddresses") or []) or "none outside the cluster"
    gateway = status.get("gateway")
    lines = ["", "Reached at:", f"  {addresses}"]
    if gateway:
        lines.append(f"  through Gateway {gateway.get('namespace')}/{gateway.get('name')}")
        for route in gateway.get("routes") or []:
            said = f"  {route['message']}" if route.get("message") else ""
            lines.append(
                f"    {route.get('kind')} {route.get('name')}: accepted "
                f"{route.get('accepted')}, refs resolved {route.get('resolvedRefs')}{said}"
            )
    return lines


def status_screen(site: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """One screen about a site: pure, for tests."""
    metadata, spec = site["metadata"], site.get("spec") or {}
    status = site.get("status") or {}
    lines = [
        (
            f"BlogSite {metadata['namespace']}/{metadata['name']}  "
            f"(generation {metadata.get('generation')}, "
            f"observed {status.get('observedGeneration')})"
        ),
        f"  domains:  {', '.join(spec.get('domains') or [])}",
    ]
    if spec.get("redirectDomains"):
        lines.append(f"  redirect: {', '.join(spec['redirectDomains'])}")
    lines += ["", "Conditions:"]
    conditions = status.get("conditions") or []
    width = max((len(c["type"]) for c in conditions), default=0)
    for condition in conditions:
        lines.append(
            f"  {condition['type']:<{width}} {condition.get('status', '?'):<7} "
            f"{condition.get('reason', ''):<22} {condition.get('message', '')}"
        )
    lines += _reached_lines(status)
    certificate = status.get("certificate")
    lines += ["", "Certificate:"]
    if not certificate:
        lines.append("  none (plain HTTP)" if not spec.get("tls") else "  none yet")
    else:
        kind = "placeholder (self-signed)" if certificate.get("placeholder") else "issued"
        lines.append(f"  {kind}, serial {certificate.get('serialNumber', '?')}")
        lines.append(
            f"  valid    {certificate.get('notBefore', '?')} .. {certificate.get('notAfter', '?')}"
        )
        if certificate.get("issuer") and not certificate.get("placeholder"):
            test = "  (a staging or test CA: browsers refuse it)"
            lines.append(
                f"  issuer   {certificate['issuer']}{test if certificate.get('testIssuer') else ''}"
            )
        if certificate.get("renewalTime"):
            lines.append(f"  renewal  planned {certificate['renewalTime']}")
        failure = certificate.get("lastFailure")
        if failure:
            lines.append(
                f"  last failure: {failure.get('reason')}: {failure.get('message')} "
                f"({certificate.get('failedAttempts', 1)} attempt(s); "
                f"next {certificate.get('nextAttempt', '?')})"
            )
    lines += ["", "Rollouts:"]
    for component, entry in sorted((status.get("components") or {}).items()):
        lines.append(
            f"  {component:<13} {entry.get('image', '?')}  "
            f"{entry.get('availableReplicas', 0)}/{entry.get('replicas', '?')} available"
        )
        line = (
            f"  {'':<13} version {entry.get('version') or '?'}, "
            f"last good {entry.get('lastGoodVersion') or '-'}"
        )
        if entry.get("failedVersion"):
            line += f", failed {entry['failedVersion']} ({entry.get('failedReason', '')})"
        lines.append(line)
    lines += _canary_lines(status.get("canary"))
    lines += ["", "Events:"]
    recent = sorted(events, key=lambda e: e.get("lastTimestamp") or "")[-EVENTS_SHOWN:]
    if not recent:
        lines.append("  none")
    for event in recent:
        lines.append(
            f"  {event.get('lastTimestamp', '?')}  {event.get('type', ''):<8} "
            f"{event.get('reason', ''):<20} {event.get('message', '')}"
        )
    return "\n".join(lines) + "\n"


def annotate_command(annotation: str, what: str, prefix: str = "") -> Any:
    """A command that sets `annotation` to a new value (`prefix` and the time)."""

    def command(args: argparse.Namespace) -> int:
        api, namespace = connect(args)
        fetch_site(api, namespace, args.name)  # a clear error for a missing site
        now = datetime.datetime.now(datetime.UTC)
        value = prefix + now.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if prefix else "%Y-%m-%dT%H:%M:%SZ")
        patch = {"metadata": {"annotations": {annotation: value}}}
        api.merge_patch(models.KIND, namespace, args.name, patch)
        sys.stdout.write(f"blogsite {namespace}/{args.name}: {what} ({annotation}={value})\n")
        return 0

    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl blogsite", description="Day-2 commands for BlogSites."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_site(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("name", help="the BlogSite")
        sub.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
        sub.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
        sub.add_argument("--context", help="kubeconfig context (default: the current one)")
        return sub

    with_site("status", "conditions, certificate, rollouts and recent Events").set_defaults(
        func=status_command
    )
    with_site("renew", "order a new certificate now").set_defaults(
        func=annotate_command(RENEW_ANNOTATION, "a new certificate is ordered")
    )
    with_site("retry", "try a reverted version again").set_defaults(
        func=annotate_command(RETRY_ANNOTATION, "the failed version is tried again")
    )
    for verb, help_text, what in (
        ("promote", "end a canary rollout now: its version becomes stable", "promoted"),
        ("abort", "revert a canary rollout now", "aborted"),
        ("pause", "hold a canary rollout at its step (a failure still reverts)", "paused"),
        ("resume", "let a paused canary rollout go on", "resumed"),
    ):
        with_site(verb, help_text).set_defaults(
            func=annotate_command(COMMAND_ANNOTATION, f"the canary is {what}", f"{verb} ")
        )
    render = commands.add_parser("render", help="print what the operator would create")
    render.add_argument("-f", "--file", required=True, help="BlogSite YAML file, or - for stdin")
    render.add_argument("-n", "--namespace", help="namespace when the file names none")
    render.set_defaults(func=render_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as error:
        sys.stderr.write(f"kubectl blogsite: {error}\n")
        return 1
