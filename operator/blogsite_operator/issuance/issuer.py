"""ACME work off the reconcile path: at most one job per site, in a few threads.

An order takes seconds to minutes (the CA validates, polls, signs), so the
reconciler only asks for one (`submit`) and goes on; when the job ends its
result waits in `take_result` and the site is triggered again, and the next
pass folds the result into status. Status is still written by the reconciler
alone. A job writes three things: the site's account key Secret (once), the
HTTP-01 answers ConfigMap (published, then cleared) and, on success only, the
TLS Secret; a failed job changes nothing that serves.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.client
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from blogsite_operator import certs, kube, models, sitelog
from blogsite_operator.issuance.preflight import check_names, resolver
from blogsite_operator.issuance.protocol import (
    AccountConfig,
    IssuanceError,
    OrderRequest,
    Session,
    directory_url,
)
from blogsite_operator.metrics import METRICS
from blogsite_operator.policies.certificate import RenewalInfo
from blogsite_operator.policies.ledger import LEDGER_ANNOTATION, Ledger, Recorded, record
from blogsite_operator.render.site import (
    ACME_ACCOUNT_LABEL,
    Component,
    SiteRef,
    acme_account_secret_name,
    challenges_config_map_name,
    child_name,
    may_write_tls_secret,
    render_acme_account_secret,
    render_tls_secret,
    tls_secret_name_for,
)
from blogsite_operator.settings import AcmeSettings

logger = logging.getLogger("blogsite_operator.issuance")

SiteKey = tuple[str, str]  # namespace, name


LEDGER_WRITE_ATTEMPTS = 5


def account_secret_name(acme: models.Acme) -> str:
    """The Secret of the ACME account a site's orders use (and its ledger)."""
    eab_kid = acme.external_account_binding.key_id if acme.external_account_binding else ""
    return acme_account_secret_name(directory_url(acme.server), acme.email, eab_kid)


class IssuerApi(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...


def new_job_id() -> str:
    """Names one job: status records the last one folded, the Secret the one
    that wrote it."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class IssueJob:
    site: SiteRef
    names: tuple[str, ...]
    acme: models.Acme
    id: str = field(default_factory=new_job_id, compare=False)  # written on the Secret it issues
    # The renew annotation's value this order answers: taken into status with
    # the result, so an order whose first status write failed is not repeated.
    renewal_request: str | None = field(default=None, compare=False)
    # The frontend's port 80 expects the PROXY protocol: so does the self-check.
    proxy_protocol: bool = field(default=False, compare=False)
    # ARI identifier of the certificate this order renews, named in the order.
    replaces: str | None = field(default=None, compare=False)
    # It renews a certificate for exactly these names: with `replaces` taken,
    # an ARI renewal, which the CA's limits (and the ledger) exempt.
    renewal: bool = field(default=False, compare=False)
    # Where the names must resolve for the preflight (the frontend Service's
    # external addresses); empty: anywhere, as long as the fetch gets here.
    expected_addresses: tuple[str, ...] = field(default=(), compare=False)
    # Behind a shared Gateway: its address, through which the self-check
    # fetches the answers (the way the CA comes), instead of the Service.
    gateway_address: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RenewalInfoJob:
    site: SiteRef
    acme: models.Acme
    cert_pem: bytes
    serial: str
    id: str = field(default_factory=new_job_id, compare=False)


@dataclass(frozen=True)
class JobResult:
    job: IssueJob | RenewalInfoJob
    finished_at: datetime.datetime
    error: IssuanceError | None = None
    serial: str | None = None  # of the certificate issued
    not_after: datetime.datetime | None = None
    renewal_info: RenewalInfo | None = None
    acme_requests: int = 0
    seconds: float = 0.0
    replaced: str | None = None  # the ARI identifier the order replaced
    replaces_refused: str | None = None  # why the CA would not take `replaces`


class CertificateIssuer:
    def __init__(
        self,
        api: IssuerApi,
        settings: AcmeSettings,
        notify: Callable[[str, str], None],
        workers: int = 8,  # orders mostly wait on the CA; threads are cheap here
    ) -> None:
        self.api = api
        self.settings = settings
        self.notify = notify
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acme")
        self._lock = threading.Lock()
        self._running: set[SiteKey] = set()
        self._results: dict[SiteKey, JobResult] = {}
        self._forgotten: set[SiteKey] = set()  # deleted while their job ran
        self._account_lock = threading.Lock()
        self._stopping = False

    def state(self, key: SiteKey) -> tuple[bool, JobResult | None]:
        """(a job runs for this site, the last finished job's result), read at once.

        The result stays until `acknowledge`d: a pass that fails before its
        status write folds it again next time, so nothing it says is lost.
        """
        with self._lock:
            return key in self._running, self._results.get(key)

    def acknowledge(self, key: SiteKey, result: JobResult) -> None:
        """The result is in status now; forget it (unless a newer one replaced it)."""
        with self._lock:
            if self._results.get(key) is result:
                del self._results[key]

    def forget(self, key: SiteKey) -> None:
        """The site is gone: drop its result, and the one of a job still running."""
        with self._lock:
            self._results.pop(key, None)
            if key in self._running:
                self._forgotten.add(key)

    def submit(self, job: IssueJob | RenewalInfoJob) -> bool:
        """Start `job` unless one runs for its site already; True when started."""
        key = (job.site.namespace, job.site.name)
        with self._lock:
            if key in self._running or self._stopping:
                return False  # stopping: the next leader (or start) orders
            self._running.add(key)
            self._pool.submit(self._run, key, job)
        return True

    def shutdown(self, *, wait: bool = False) -> None:
        """Drop jobs not yet started, start no more; with `wait`, also let
        running ones end."""
        with self._lock:
            self._stopping = True
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _run(self, key: SiteKey, job: IssueJob | RenewalInfoJob) -> None:
        with sitelog.about(*key):
            self._run_job(key, job)

    def _run_job(self, key: SiteKey, job: IssueJob | RenewalInfoJob) -> None:
        started = time.monotonic()
        try:
            if isinstance(job, IssueJob):
                result = self._issue(job)
            else:
                result = self._check_renewal_info(job)
        except IssuanceError as error:
            result = JobResult(job, _now(), error=error)
            if isinstance(job, IssueJob) and error.reason != "Superseded":
                # At the default level, with the CA's problem document: the
                # status says it too, but a log is what many read first.
                logger.warning("the ACME order failed: %s: %s", error.reason, error.message)
        except Exception as error:  # reported on the site, never lost
            logger.exception("the ACME job failed unexpectedly")
            result = JobResult(
                job, _now(), error=IssuanceError("InternalError", kube.describe_error(error))
            )
        seconds = time.monotonic() - started
        if isinstance(job, IssueJob):
            METRICS.acme_orders.labels(result.error.reason if result.error else "issued").inc()
            METRICS.acme_order_duration.observe(seconds)
        self._finish(key, dataclasses.replace(result, seconds=round(seconds, 3)))

    def _finish(self, key: SiteKey, result: JobResult) -> None:
        with self._lock:
            self._running.discard(key)
            if key in self._forgotten:
                self._forgotten.discard(key)
                return
            self._results[key] = result
        self.notify(*key)

    # --- one order ---------------------------------------------------------

    def _issue(self, job: IssueJob) -> JobResult:
        site = job.site
        if self.settings.preflight:
            self._preflight(job)
        with tempfile.TemporaryDirectory(prefix="acme-") as scratch:
            account = self._account(site, job.acme, scratch)
            session = Session(account)
            try:
                session.register()
                issued = session.order(
                    OrderRequest(
                        names=job.names,
                        key_algorithm=str(job.acme.key_algorithm),
                        profile=job.acme.profile,
                        timeout=datetime.timedelta(seconds=self.settings.order_timeout_seconds),
                        replaces=job.replaces,
                    ),
                    publish=lambda answers: self._publish(site, answers),
                    self_check=self._self_checker(
                        site, proxy_protocol=job.proxy_protocol, gateway=job.gateway_address
                    ),
                )
            except IssuanceError as error:
                error.message = f"{error.message} ({session.counter.requests} ACME requests)"
                self._record(
                    job,
                    Recorded(
                        orders=session.orders_created, failed_names=error.failed_names, now=_now()
                    ),
                )
                raise
            finally:
                self._publish(site, {}, clear=True)
        # The CA issued it, whatever happens to it next: it counts.
        self._record(
            job,
            Recorded(
                orders=session.orders_created,
                certificate_for=job.names,
                exempt=job.renewal and issued.replaced is not None,
                now=_now(),
            ),
        )
        self._check_still_wanted(job)
        self.api.apply(
            render_tls_secret(
                site,
                issued.fullchain_pem,
                issued.key_pem,
                placeholder=False,
                issued_by=(job.id, directory_url(job.acme.server)),
            )
        )
        info = certs.certificate_info(issued.fullchain_pem)
        logger.info(
            "issued a certificate: %d names, serial %s, valid until %s; %d ACME requests",
            len(job.names),
            info.serial,
            info.not_after.isoformat(),
            session.counter.requests,
        )
        return JobResult(
            job,
            _now(),
            serial=info.serial,
            not_after=info.not_after,
            acme_requests=session.counter.requests,
            replaced=issued.replaced,
            replaces_refused=issued.replaces_refused,
        )

    def _record(self, job: IssueJob, what: Recorded) -> None:
        """Into the account's ledger (its Secret's annotation), read, changed
        and written back with its resourceVersion: sites sharing the account
        record at once. A ledger that cannot be written is logged, never the
        order's failure (the CA's own limits still hold)."""
        if not what.orders and what.certificate_for is None and not what.failed_names:
            return
        site, acme = job.site, job.acme
        name = account_secret_name(acme)
        limits = self.settings.limits_for(directory_url(acme.server))
        for _ in range(LEDGER_WRITE_ATTEMPTS):
            try:
                secret = self.api.get("Secret", site.namespace, name)
                if secret is None:
                    return
                annotations = secret["metadata"].get("annotations") or {}
                ledger = record(
                    Ledger.from_annotation(annotations.get(LEDGER_ANNOTATION)), what, limits
                )
                patch = {
                    "metadata": {
                        "resourceVersion": secret["metadata"]["resourceVersion"],
                        "annotations": {LEDGER_ANNOTATION: ledger.to_annotation()},
                    }
                }
                self.api.merge_patch("Secret", site.namespace, name, patch)
            except ApiException as error:
                if error.status != 409:
                    logger.warning(
                        "cannot write the rate-limit ledger: %s", kube.describe_error(error)
                    )
                    return
            else:
                return
        logger.warning("cannot write the rate-limit ledger: it kept changing under us")

    def _check_still_wanted(self, job: IssueJob) -> None:
        """The spec may have moved on while we ordered: never write a certificate
        for names the site no longer has over one it may need."""
        site = job.site
        live = self.api.get(models.KIND, site.namespace, site.name)
        if live is None or live["metadata"].get("uid") != site.uid:
            raise IssuanceError("Superseded", "the BlogSite is gone")
        spec = live.get("spec") or {}
        names = {*(spec.get("domains") or []), *(spec.get("redirectDomains") or [])}
        if names != set(job.names):
            raise IssuanceError(
                "Superseded", "the names changed during the order; ordering for the new ones"
            )
        name = tls_secret_name_for(site.name)
        secret = self.api.get("Secret", site.namespace, name)
        if secret is not None and not may_write_tls_secret(secret, site):
            raise IssuanceError("NameConflict", f"Secret {name} belongs to someone else")

    def _account(self, site: SiteRef, acme: models.Acme, scratch: str) -> AccountConfig:
        """The account key (created on first use), EAB and CA trust, read from Secrets.

        Sites of one namespace that use the same CA, email and EAB key id share
        one account: CAs limit how many accounts one address may create
        (Let's Encrypt: 10 per 3 hours), and 200 sites must not need 200.
        """
        server = directory_url(acme.server)
        name = account_secret_name(acme)
        with self._account_lock:  # two sites' first orders must not make two keys
            secret = self.api.get("Secret", site.namespace, name)
            key_pem = _secret_value(secret, "key.pem")
            if secret is not None and not _is_account_secret(secret):
                raise IssuanceError(
                    "NameConflict", f"Secret {name} exists and is not an ACME account key"
                )
            if key_pem is None:
                key_pem = certs.generate_private_key("ECDSAP256")  # ES256
                self.api.apply(
                    render_acme_account_secret(site.namespace, name, server, acme.email, key_pem)
                )
                logger.info("created the ACME account key Secret %s/%s", site.namespace, name)
        ca_bundle_path = None
        if acme.ca_bundle_secret_ref is not None:
            bundle = self._user_secret(site, acme.ca_bundle_secret_ref, "caBundleSecretRef")
            ca_bundle = Path(scratch) / "ca.pem"
            ca_bundle.write_bytes(bundle)
            ca_bundle_path = str(ca_bundle)
        eab_key_id = eab_hmac = None
        if acme.external_account_binding is not None:
            eab = acme.external_account_binding
            eab_key_id = eab.key_id
            hmac = self._user_secret(
                site, eab.hmac_key_secret_ref, "externalAccountBinding.hmacKeySecretRef"
            )
            eab_hmac = hmac.decode("ascii", "replace").strip()
        return AccountConfig(
            server=server,
            email=acme.email,
            key_pem=key_pem,
            ca_bundle_path=ca_bundle_path,
            eab_key_id=eab_key_id,
            eab_hmac_key=eab_hmac,
        )

    def _user_secret(self, site: SiteRef, ref: models.SecretKeyRef, field: str) -> bytes:
        secret = self.api.get("Secret", site.namespace, ref.name)
        value = _secret_value(secret, ref.key)
        if value is None:
            what = "does not exist" if secret is None else f"has no key {ref.key!r}"
            raise IssuanceError(
                "ConfigurationError", f"spec.tls.acme.{field}: Secret {ref.name} {what}"
            )
        return value

    def _publish(self, site: SiteRef, answers: dict[str, str], *, clear: bool = False) -> None:
        """Put answers where the cert-refresh server reads them (or take them all away)."""
        name = challenges_config_map_name(site.name)
        try:
            if clear:
                # Only the answers (tokens never hold a dot): the canary's
                # settings share this ConfigMap.
                live = self.api.get("ConfigMap", site.namespace, name) or {}
                tokens = [key for key in live.get("data") or {} if "." not in key]
                if not tokens:
                    return
                self.api.merge_patch(
                    "ConfigMap", site.namespace, name, {"data": dict.fromkeys(tokens)}
                )
            else:
                self.api.merge_patch("ConfigMap", site.namespace, name, {"data": answers})
        except Exception as error:  # noqa: BLE001 - any API failure means the same here
            if clear:  # the order is over either way; a leftover answer is harmless
                logger.warning(
                    "could not clear the challenge answers: %s",
                    kube.describe_error(error),
                )
                return
            raise IssuanceError(
                "PublishFailed",
                f"cannot write the challenge answers to ConfigMap {name}: "
                f"{kube.describe_error(error)}",
            ) from None

    def _self_checker(
        self, site: SiteRef, *, proxy_protocol: bool = False, gateway: str | None = None
    ) -> Callable[[list[tuple[str, str, str]]], None] | None:
        target = self.settings.self_check
        if target is None:
            return None
        if target == "frontend" and gateway is not None:
            # Through the Gateway's HTTP listener: its route, not only nginx.
            target = f"[{gateway}]:80" if ":" in gateway else f"{gateway}:80"
        elif target == "frontend":
            target = f"{child_name(site.name, Component.FRONTEND)}.{site.namespace}.svc:80"
        address = target

        def check(answers: list[tuple[str, str, str]]) -> None:
            for name, token, expected in answers:
                _wait_for_answer(address, name, token, expected, proxy_protocol=proxy_protocol)

        return check

    def _preflight(self, job: IssueJob) -> None:
        """Each name leads to this site, or nothing is sent to the CA (see
        preflight.py). The fetch goes where the CA's would: the name's own
        address, port 80 (the load balancer adds any PROXY line itself)."""
        token = f"blogsite-preflight-{job.id}"
        answer = uuid.uuid4().hex
        self._publish(job.site, {token: answer})
        port = self.settings.preflight_http_port

        def reaches_this_site(address: str, name: str) -> str | None:
            host = f"[{address}]" if ":" in address else address
            try:
                _wait_for_answer(f"{host}:{port}", name, token, answer, deadline_seconds=8)
            except IssuanceError as error:
                return error.message.rsplit(" (", 1)[-1].split(")", 1)[0]
            return None

        try:
            checks = check_names(
                job.names,
                expected=job.expected_addresses,
                resolve=resolver(self.settings.preflight_resolver),
                reaches_this_site=reaches_this_site,
            )
        finally:
            self._publish(job.site, {}, clear=True)
        unchecked = [c.name for c in checks if not c.checked]
        if unchecked:
            logger.info(
                "the preflight's resolver did not answer for %s: ordering without checking them",
                ", ".join(unchecked),
            )
        problems = [c.problem for c in checks if c.problem]
        if problems:
            raise IssuanceError(
                "PreflightFailed",
                "not ordering, no authorization spent: " + "; ".join(problems),
                failed_names=(),
            )

    # --- renewal information --------------------------------------------------

    def _check_renewal_info(self, job: RenewalInfoJob) -> JobResult:
        with tempfile.TemporaryDirectory(prefix="acme-") as scratch:
            account = self._account(job.site, job.acme, scratch)
            session = Session(account)
            renew_at, next_check = session.renewal_info(job.cert_pem)
        now = _now()
        most = now + datetime.timedelta(seconds=self.settings.renewal_info_seconds)
        # Never sooner than a minute (or the configured interval, if shorter):
        # a Retry-After of 0 must not turn into a check on every pass.
        least = now + datetime.timedelta(seconds=min(60.0, self.settings.renewal_info_seconds))
        info = RenewalInfo(job.serial, renew_at, max(min(next_check, most), least))
        return JobResult(job, now, renewal_info=info, acme_requests=session.counter.requests)


class _ProxyProtocolConnection(http.client.HTTPConnection):
    """HTTP after a PROXY protocol v1 line that names no client ("UNKNOWN"):
    a frontend behind a load balancer that sends it refuses anything else."""

    def connect(self) -> None:
        super().connect()
        self.sock.sendall(b"PROXY UNKNOWN\r\n")


def _wait_for_answer(
    address: str,
    name: str,
    token: str,
    expected: str,
    *,
    proxy_protocol: bool = False,
    deadline_seconds: float = 15,
) -> None:
    """Fetch the answer the way the CA will (port 80, Host: name); a few seconds' grace."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    path = f"/.well-known/acme-challenge/{token}"
    connection_class = _ProxyProtocolConnection if proxy_protocol else http.client.HTTPConnection
    deadline = time.monotonic() + deadline_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        connection = connection_class(host, int(port), timeout=3)
        try:
            connection.request("GET", path, headers={"Host": name})
            response = connection.getresponse()
            body = response.read(4096).decode("ascii", "replace").strip()
            if response.status == 200 and body == expected:
                return
            last = f"HTTP {response.status}" if response.status != 200 else "a different answer"
        except (http.client.HTTPException, OSError) as error:
            last = str(error) or type(error).__name__
        finally:
            connection.close()
        time.sleep(0.2)
    raise IssuanceError(
        "SelfCheckFailed",
        f"http://{name}/.well-known/acme-challenge/ did not serve the answer through "
        f"{address} ({last}); not asking the CA to validate",
    )


def _secret_value(secret: dict[str, Any] | None, key: str) -> bytes | None:
    if secret is None:
        return None
    encoded = (secret.get("data") or {}).get(key)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded)
    except ValueError:
        return None


def _is_account_secret(secret: dict[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(ACME_ACCOUNT_LABEL) == "true"


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)
