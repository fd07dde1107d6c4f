"""`blogsite-operator`: run the operator, print the CRD, render a site offline."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Each command imports what it needs: cert-refresh pods run `challenge-server`
# and the frontend's init container `await-certificate`, and neither should
# pay for pydantic, the models or the kubernetes package in its memory.

if TYPE_CHECKING:
    from blogsite_operator.health import Health
    from blogsite_operator.leader import LeaderElector


class CliError(Exception):
    """A problem with the user's input, reported without a traceback."""


def _load_sites(path: str) -> list[dict[str, Any]]:
    import yaml  # noqa: PLC0415 - see the imports above

    from blogsite_operator import models  # noqa: PLC0415

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as error:
        raise CliError(f"{path}: not valid YAML: {error}") from error
    sites = [d for d in documents if isinstance(d, dict) and d.get("kind") == models.KIND]
    if not sites:
        raise CliError(f"{path}: no {models.KIND} found")
    return sites


def render_command(args: argparse.Namespace) -> int:
    import pydantic  # noqa: PLC0415 - see the imports above
    import yaml  # noqa: PLC0415

    from blogsite_operator import models  # noqa: PLC0415
    from blogsite_operator.render import SiteRef, render_site  # noqa: PLC0415
    from blogsite_operator.settings import OperatorSettings  # noqa: PLC0415

    settings = OperatorSettings.from_env().render
    output: list[dict[str, Any]] = []
    for site in _load_sites(args.file):
        metadata = site.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise CliError(f"{args.file}: a {models.KIND} without metadata.name")
        try:
            spec = models.parse_spec(site.get("spec"))
        except pydantic.ValidationError as error:
            raise CliError(f"{models.KIND} {name}: invalid spec:\n{error}") from error
        namespace = args.namespace or metadata.get("namespace") or "default"
        # The real uid exists only in a cluster; a fixed stand-in keeps output stable.
        ref = SiteRef(name=name, namespace=namespace, uid=metadata.get("uid") or "<uid>")
        output.extend(render_site(ref, spec, settings))
    sys.stdout.write(yaml.safe_dump_all(output, sort_keys=False))
    return 0


def crd_command(_: argparse.Namespace) -> int:
    from blogsite_operator import crd  # noqa: PLC0415 - see the imports above

    sys.stdout.write(crd.crd_yaml())
    return 0


def run_command(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    import kopf  # noqa: PLC0415 - keeps `render` and `crd` free of the heavy import

    from blogsite_operator import handlers, kube, models  # noqa: PLC0415
    from blogsite_operator.health import WATCHING_LOGGER, Health  # noqa: PLC0415
    from blogsite_operator.metrics import METRICS  # noqa: PLC0415
    from blogsite_operator.policies.kubernetes_version import version_problem  # noqa: PLC0415
    from blogsite_operator.settings import OperatorSettings, namespace_names  # noqa: PLC0415

    try:
        settings = OperatorSettings.from_env()
        namespaces = namespace_names(args.namespace) or settings.namespaces
    except ValueError as error:
        raise CliError(str(error)) from error
    _configure_logs(args.log_format or settings.log_format, verbose=args.verbose)
    kube.load_config(args.kubeconfig)
    too_old = version_problem(kube.Api().server_version())
    if too_old is not None:
        raise CliError(too_old)
    if not kube.Api().serves(f"{models.GROUP}/{models.VERSION}", models.PLURAL):
        raise CliError(
            f"the {models.KIND} CRD is not installed: kubectl apply -f crds/ "
            "(or install the Helm chart with crds.install=true)"
        )
    health = Health(watch_dead_after=settings.watch_dead_seconds, metrics=METRICS)
    logging.getLogger("kopf").addHandler(health.watch_failures)
    # kopf says a watch expired only at DEBUG: let those records reach the
    # counting handler while the printing handlers keep the chosen level.
    logging.getLogger(WATCHING_LOGGER).setLevel(logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.getLogger().level)
    if args.health_address:
        health.serve(args.health_address, METRICS if settings.metrics else None)
    elector = None
    if settings.leader_lease is not None:
        elector = _lead(settings.leader_lease, settings.leader_lease_seconds, health)
        if elector is None:
            return 0  # stopped while waiting to lead
    registry = kopf.OperatorRegistry()
    queue = handlers.register(registry, settings, namespaces)
    health.synced = queue.synced
    health.longest_pass = queue.longest_pass
    health.watch_failures.on_expired = queue.relisting

    @kopf.on.startup(registry=registry)
    async def start_heartbeat(**_: Any) -> None:
        health.start_beating()

    health.role = "leader"
    METRICS.leader.set(1)
    try:
        kopf.run(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    finally:
        health.role = "stopping"
        queue.wait_for_acme_jobs()
        if elector is not None:
            elector.release()  # nothing of ours writes any more
    return 0


def _configure_logs(log_format: str, *, verbose: bool) -> None:
    import logging  # noqa: PLC0415 - see the imports above

    import kopf  # noqa: PLC0415

    from blogsite_operator import sitelog  # noqa: PLC0415

    formats = {
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
        "json": kopf.LogFormat.JSON,
    }
    # Plain lines about a site start with [namespace/name]; JSON ones carry it
    # in an `object` field (kopf's formatters, fed by sitelog's filter).
    kopf.configure(verbose=verbose, log_format=formats[log_format], log_prefix=None)
    for handler in logging.getLogger().handlers:
        handler.addFilter(sitelog.SiteReference())
    if not verbose:
        # kopf reports every event handler's success at INFO; keep its warnings.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The `acme` package logs whole requests and responses at DEBUG: noise, and
    # nothing a user of this operator needs (our own log lines say what happened).
    logging.getLogger("acme").setLevel(logging.INFO)


def _lead(lease: tuple[str, str], seconds: float, health: Health) -> LeaderElector | None:
    """Wait for the leader Lease; keep renewing it. None if told to stop first."""
    from blogsite_operator import kube, leader  # noqa: PLC0415
    from blogsite_operator.policies.lease import LeaseTimings  # noqa: PLC0415

    namespace, name = lease
    elector = leader.LeaderElector(
        kube.Api(),
        namespace=namespace,
        name=name,
        identity=kube.PROCESS_IDENTITY,
        timings=LeaseTimings.scaled(seconds),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    health.role = "candidate"
    if not elector.acquire(stop):
        return None
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # kopf installs its own next
    elector.keep_leading(on_lost=_exit_at_once)
    return elector


def _exit_at_once() -> None:
    """Leadership lost: stop every write now, threads included, before
    another replica may start; the kubelet restarts us as a candidate."""
    import logging  # noqa: PLC0415 - loaded by then (kopf's)

    logging.getLogger("blogsite_operator").critical("leadership lost; exiting")
    logging.shutdown()
    os._exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blogsite-operator",
        description="Runs a blog and its domains on Kubernetes from one BlogSite resource.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--log-format", choices=["plain", "full", "json"], help="log format")
    run.add_argument(
        "--health-address",
        default="",
        help="serve /healthz and /readyz on HOST:PORT, e.g. 0.0.0.0:8080; default: off",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=run_command)

    crd_parser = commands.add_parser("crd", help="print the BlogSite CustomResourceDefinition")
    crd_parser.set_defaults(func=crd_command)

    render = commands.add_parser(
        "render", help="print every object the operator would create for a BlogSite (no cluster)"
    )
    render.add_argument("-f", "--file", required=True, help="BlogSite YAML file, or - for stdin")
    render.add_argument("-n", "--namespace", help="namespace when the file names none")
    render.set_defaults(func=render_command)

    challenge = commands.add_parser(
        "challenge-server", help="serve ACME HTTP-01 challenges (runs in the cert-refresh pod)"
    )
    challenge.add_argument("--port", type=int, default=8089, help="port to listen on")
    challenge.add_argument("--address", default="0.0.0.0", help="address to listen on")  # noqa: S104
    challenge.add_argument("--namespace", help="namespace of the ConfigMap(s) (default: all)")
    source = challenge.add_mutually_exclusive_group()
    source.add_argument(
        "--configmap", help="serve the answers in this ConfigMap (needs --namespace)"
    )
    source.add_argument(
        "--selector",
        help="serve the answers of every ConfigMap matching this label selector, e.g. "
        "blog.daedalus.dev/acme-http01-of (for a local ACME server)",
    )
    challenge.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    challenge.add_argument(
        "--traffic-port",
        type=int,
        help="collect the frontends' per-request syslog lines on this UDP port (default: off)",
    )
    challenge.set_defaults(func=challenge_server_command)

    wait = commands.add_parser(
        "await-certificate",
        help="wait until a file holds the certificate with this hash (the frontend's init "
        "container)",
    )
    wait.add_argument("--file", required=True, type=Path, help="the mounted tls.crt")
    wait.add_argument(
        "--sha256",
        default=os.environ.get("BLOGSITE_TLS_CERTIFICATE_SHA256", ""),
        help="hex SHA-256 of the certificate to wait for; empty: do not wait "
        "(default: $BLOGSITE_TLS_CERTIFICATE_SHA256)",
    )
    wait.set_defaults(func=await_certificate_command)
    return parser


def await_certificate_command(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415 - see the imports above

    from blogsite_operator.await_certificate import await_content  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    waited = await_content(args.file, args.sha256.strip().lower())
    logging.getLogger(__name__).info("%s holds the certificate after %.1fs", args.file, waited)
    return 0


def challenge_server_command(args: argparse.Namespace) -> int:
    from blogsite_operator import challenge_server  # noqa: PLC0415

    if args.configmap and not args.namespace:
        raise CliError("--configmap needs --namespace")
    challenge_server.serve(
        args.address,
        args.port,
        namespace=args.namespace,
        config_map=args.configmap,
        selector=args.selector,
        kubeconfig=args.kubeconfig,
        traffic_port=args.traffic_port,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as error:
        sys.stderr.write(f"blogsite-operator: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
