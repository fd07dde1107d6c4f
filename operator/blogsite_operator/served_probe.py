"""The served-certificate probe: what each Ready frontend pod presents.

One probe asks every Ready frontend pod of a site, on its TLS port (8443 in
the pod, 443 is the Service's), for each of the site's names (SNI), and
reads the certificate nginx presents; it is not verified, only described
(`policies/served.py` judges it). Probes run in their own threads, at most
one per site at a time: after every change of the Ready pods (a rollout, a
restarted pod) and otherwise every `interval` seconds. A finished probe
triggers its site's pass, which turns the result into the CertificateServed
condition.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from blogsite_operator import certs
from blogsite_operator.metrics import METRICS
from blogsite_operator.policies.served import (
    Presented,
    ProbeResult,
    ProbeTarget,
    earliest_expiry,
)
from blogsite_operator.render.site import FRONTEND_HTTPS_PORT

logger = logging.getLogger(__name__)

SiteKey = tuple[str, str]  # (namespace, name)


class ServedProbe:
    def __init__(
        self,
        interval: float,
        on_done: Callable[[str, str], None],
        *,
        port: int = FRONTEND_HTTPS_PORT,
        timeout: float = 3.0,
        workers: int = 4,
    ) -> None:
        self.interval = interval
        self.port = port
        self.timeout = timeout
        self._on_done = on_done
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="served-probe")
        self._lock = threading.Lock()
        self._stopped = False  # set by shutdown: passes still in flight start no probe
        self._latest: dict[SiteKey, tuple[ProbeResult, float]] = {}  # result, monotonic end
        self._running: dict[SiteKey, object] = {}  # the token of the probe that counts

    def look(
        self, key: SiteKey, targets: frozenset[ProbeTarget], names: tuple[str, ...]
    ) -> tuple[ProbeResult | None, float | None]:
        """The latest result if it is about exactly these pods and names, and
        the seconds until the next probe is due. Starts one when it is due:
        none yet for these pods and names, or the last older than `interval`."""
        if not targets or not names:
            self.forget(key)  # nothing served: nothing to report
            return None, None
        with self._lock:
            latest, ended = self._latest.get(key, (None, 0.0))
            about_these = latest is not None and (latest.targets, latest.names) == (targets, names)
            current = latest if about_these else None
            age = time.monotonic() - ended
            due = current is None or age >= self.interval
            if due and key not in self._running and not self._stopped:
                token = self._running[key] = object()
                self._executor.submit(self._probe, key, token, targets, names)
        return current, (None if due else self.interval - age)

    def forget(self, key: SiteKey) -> None:
        with self._lock:
            self._latest.pop(key, None)
            self._running.pop(key, None)  # a probe still running reports nothing
        METRICS.observe_served(*key, None)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _probe(
        self,
        key: SiteKey,
        token: object,
        targets: frozenset[ProbeTarget],
        names: tuple[str, ...],
    ) -> None:
        try:
            presented = tuple(
                self._ask(target, name)
                for target in sorted(targets, key=lambda t: t.pod)
                for name in names
            )
            result = ProbeResult(targets, names, datetime.datetime.now(tz=datetime.UTC), presented)
            with self._lock:
                if self._running.get(key) is not token:
                    return  # forgotten meanwhile (the site, its TLS or its pods went)
                del self._running[key]
                self._latest[key] = (result, time.monotonic())
                METRICS.observe_served(*key, earliest_expiry(result))
        except Exception:
            logger.exception("the served-certificate probe of %s/%s failed", *key)
            with self._lock:
                if self._running.get(key) is token:
                    del self._running[key]
            return
        self._on_done(*key)

    def _ask(self, target: ProbeTarget, name: str) -> Presented:
        try:
            pem = presented_certificate(
                target.address,
                self.port,
                name,
                proxy_protocol=target.proxy_protocol,
                timeout=self.timeout,
            )
            return Presented(target.pod, name, certs.certificate_info(pem))
        except (OSError, ValueError) as error:
            return Presented(target.pod, name, None, str(error) or type(error).__name__)


def presented_certificate(
    address: str, port: int, name: str, *, proxy_protocol: bool = False, timeout: float = 3.0
) -> bytes:
    """The leaf certificate (PEM) a TLS server presents for SNI `name`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Described, not trusted: a wrong certificate is what this looks for.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=timeout) as sock:
        if proxy_protocol:  # the listener expects a load balancer's PROXY line first
            sock.sendall(b"PROXY UNKNOWN\r\n")
        with context.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ValueError("no certificate presented")
    return ssl.DER_cert_to_PEM_cert(der).encode()
