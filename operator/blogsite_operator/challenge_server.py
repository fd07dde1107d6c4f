"""The cert-refresh process: answers ACME HTTP-01 challenges, and is the
site's traffic desk (the canary's share for the frontends, and the
collector of what users got: traffic_collector.py).

The operator publishes each answer (token -> key authorization) in a
ConfigMap; this server watches that ConfigMap through the API, so a new
answer is served within a watch event's latency, not after a mounted
volume's minute-long refresh. In the cert-refresh pod it watches its site's
one ConfigMap by name (all its Role allows); run locally, `--selector` serves
every site's answers at once, which is how `make run` and the tests let a
local ACME server validate.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from blogsite_operator.traffic_collector import Collector, listen
from blogsite_operator.watch_stream import watch_event, watch_query


def _log(level: str, message: str) -> None:
    """One line on stderr, as the logging package would print it: that
    package alone is about a megabyte of this pod's twelve (BENCHMARKS.md)."""
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{now} {level} blogsite_operator.challenge_server: {message}\n")
    sys.stderr.flush()


CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# Keys of the ConfigMap that are not answers (tokens never hold a dot): the
# canary's share of requests, and the version each pool runs (for metrics).
CANARY_WEIGHT_KEY = "canary.weight"
POOL_VERSION_KEYS = {"daedalus": "stable.version", "daedalus_canary": "canary.version"}
# How long GET /canary-weight?known=N waits for a change before answering anyway.
LONG_POLL_SECONDS = 20.0
# RFC 8555 §8.3: tokens are base64url, so nothing else is ever looked up.
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


class Answers:
    """token -> key authorization, merged over every watched ConfigMap."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._by_source: dict[tuple[str, str], dict[str, str]] = {}
        self.synced = threading.Event()

    def replace(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        with self._lock:
            self._by_source[(namespace, name)] = dict(data or {})
            self._lock.notify_all()

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._by_source.pop((namespace, name), None)
            self._lock.notify_all()

    def reset(self, sources: dict[tuple[str, str], dict[str, str]]) -> None:
        with self._lock:
            self._by_source = sources
            self._lock.notify_all()

    def setting(self, key: str) -> str | None:
        with self._lock:
            return self._setting(key)

    def _setting(self, key: str) -> str | None:
        for data in self._by_source.values():
            if key in data:
                return data[key]
        return None

    def canary_weight(self, known: int | None = None, wait: float = 0.0) -> int:
        """The canary's share (0-100; anything else is 0), once it differs
        from `known` or `wait` seconds have passed."""
        with self._lock:
            self._lock.wait_for(lambda: self._weight() != known, timeout=wait)
            return self._weight()

    def _weight(self) -> int:
        raw = self._setting(CANARY_WEIGHT_KEY) or "0"
        return int(raw) if raw.isdigit() and int(raw) <= 100 else 0

    def lookup(self, token: str) -> str | None:
        with self._lock:
            for answers in self._by_source.values():
                if token in answers:
                    return answers[token]
        return None


def make_handler(
    answers: Answers,
    ready: Callable[[], bool] = lambda: True,
    collector: Collector | None = None,
    long_poll: float = LONG_POLL_SECONDS,
) -> type[BaseHTTPRequestHandler]:
    """`ready`: whether /healthz says 200 (the answers have been listed once)."""

    class ChallengeHandler(BaseHTTPRequestHandler):
        server_version = "blogsite-challenge-server"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                if ready():
                    self._reply(200, b"ok\n")
                else:
                    self._reply(503, b"the challenge answers have not been read yet\n")
                return
            if path == "/canary-weight":
                self._canary_weight()
                return
            if path in ("/traffic", "/metrics") and collector is not None:
                if path == "/traffic":
                    body = json.dumps(collector.snapshot()).encode()
                    self._reply(200, body, "application/json")
                else:
                    versions = {p: answers.setting(k) or "" for p, k in POOL_VERSION_KEYS.items()}
                    body = collector.metrics(versions).encode()
                    self._reply(200, body, "text/plain; version=0.0.4")
                return
            if not path.startswith(CHALLENGE_PREFIX):
                self._reply(404, b"not found\n")
                return
            token = path[len(CHALLENGE_PREFIX) :]
            answer = answers.lookup(token) if TOKEN.fullmatch(token) else None
            if answer is None:
                self._reply(404, b"no such challenge token\n")
            else:
                self._reply(200, answer.encode("ascii"), "application/octet-stream")

        def _canary_weight(self) -> None:
            """The share as a number; with ?known=N, held until it is not N
            (the frontends' weights followers long-poll: a revert reaches
            them at once)."""
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            known = (query.get("known") or [""])[0]
            if known.isdigit():
                weight = answers.canary_weight(int(known), wait=long_poll)
            else:
                weight = answers.canary_weight()
            self._reply(200, f"{weight}\n".encode())

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # The client went away (a follower stopped during its long poll).
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
            pass  # no access log: the CA's fetches are in the operator's own log

    return ChallengeHandler


class ConfigMapApi(Protocol):
    def list_raw(
        self, kind: str, namespace: str | None, query: list[tuple[str, str]]
    ) -> dict[str, Any]: ...
    def watch(
        self,
        kind: str,
        namespace: str | None,
        query: list[tuple[str, str]],
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[dict[str, Any]]: ...


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class InClusterApi:
    """List and watch ConfigMaps as the pod's ServiceAccount, with the
    standard library only: in the cert-refresh pod, the kubernetes package
    (and urllib3, and this operator's models) would be most of its memory."""

    def __init__(self, service_account: Path = SERVICE_ACCOUNT) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        self.host = f"[{host}]" if ":" in host else host
        self.port = int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        self.token_file = service_account / "token"
        self.context = ssl.create_default_context(cafile=str(service_account / "ca.crt"))

    def _get(self, path: str, query: list[tuple[str, str]], timeout: float) -> Any:
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, context=self.context
        )
        # Read at every request: the kubelet rotates a projected token.
        token = self.token_file.read_text(encoding="ascii").strip()
        target = f"{path}?{urllib.parse.urlencode(query)}" if query else path
        connection.request("GET", target, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        if response.status != 200:
            body = response.read(4096).decode("utf-8", "replace")
            connection.close()
            raise OSError(f"GET {path}: HTTP {response.status}: {body}")
        return connection, response

    @staticmethod
    def _only_config_maps(kind: str) -> None:
        if kind != "ConfigMap":
            raise ValueError(f"the challenge server reads ConfigMaps only, not {kind}")

    @staticmethod
    def _path(namespace: str | None) -> str:
        if namespace is None:
            return "/api/v1/configmaps"
        return f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/configmaps"

    def list_raw(
        self, kind: str, namespace: str | None, query: list[tuple[str, str]]
    ) -> dict[str, Any]:
        self._only_config_maps(kind)
        connection, response = self._get(self._path(namespace), query, timeout=30)
        try:
            listed: dict[str, Any] = json.loads(response.read())
            return listed
        finally:
            connection.close()

    def watch(
        self,
        kind: str,
        namespace: str | None,
        query: list[tuple[str, str]],
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) until the server ends the watch;
        an ERROR event (410 Gone: relist) is raised."""
        self._only_config_maps(kind)
        params = watch_query(query, resource_version, timeout_seconds)
        connection, response = self._get(
            self._path(namespace), params, timeout=timeout_seconds + 30
        )
        try:
            for line in response:  # chunked: one JSON event per line
                event = watch_event(line)  # an ERROR event raises: the caller relists
                if event is not None:
                    yield event
        finally:
            connection.close()


def watch_answers(
    answers: Answers,
    *,
    namespace: str | None,
    config_map: str | None,
    selector: str | None,
    stop: threading.Event,
    api: ConfigMapApi,
) -> None:
    """List, then watch; relist when the watch expires or fails. Runs until `stop`."""
    query: list[tuple[str, str]] = []
    if config_map is not None:
        query.append(("fieldSelector", f"metadata.name={config_map}"))
    if selector is not None:
        query.append(("labelSelector", selector))
    delay = 1.0
    while not stop.is_set():
        try:
            listed = api.list_raw("ConfigMap", namespace, query)
            answers.reset(
                {
                    (cm["metadata"]["namespace"], cm["metadata"]["name"]): dict(
                        cm.get("data") or {}
                    )
                    for cm in listed.get("items") or []
                }
            )
            answers.synced.set()
            version = listed["metadata"]["resourceVersion"]
            for event in api.watch("ConfigMap", namespace, query, version, timeout_seconds=300):
                obj = event["object"]
                where = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if event["type"] == "DELETED":
                    answers.remove(*where)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    answers.replace(*where, obj.get("data"))
                if stop.is_set():
                    return
            delay = 1.0
        except Exception as error:  # noqa: BLE001 - keep serving what we have; relist
            _log(
                "WARNING", f"watching challenge answers failed, relisting in {delay:.0f}s: {error}"
            )
            stop.wait(delay)
            delay = min(delay * 2, 30.0)


def serve(
    address: str,
    port: int,
    *,
    namespace: str | None = None,
    config_map: str | None = None,
    selector: str | None = None,
    kubeconfig: str | None = None,
    traffic_port: int | None = None,
) -> None:
    answers = Answers()
    stop = threading.Event()
    collector = None
    if traffic_port is not None:
        collector = Collector()
        listen(collector, address, traffic_port, stop)
    watching = config_map is not None or selector is not None
    if watching:
        api: ConfigMapApi
        if kubeconfig is None and (SERVICE_ACCOUNT / "token").exists():
            api = InClusterApi()
        else:  # `make run`, the tests: a kubeconfig, through the operator's client
            from blogsite_operator import kube  # noqa: PLC0415

            kube.load_config(kubeconfig)
            api = kube.Api()
        threading.Thread(
            target=watch_answers,
            kwargs={
                "answers": answers,
                "namespace": namespace,
                "config_map": config_map,
                "selector": selector,
                "stop": stop,
                "api": api,
            },
            name="watch-answers",
            daemon=True,
        ).start()
        answers.synced.wait(timeout=30)
    ready = answers.synced.is_set if watching else (lambda: True)
    server = ThreadingHTTPServer((address, port), make_handler(answers, ready, collector))
    server.daemon_threads = True  # long polls must not hold a stopping server
    serving = (
        f"ConfigMap {namespace}/{config_map}"
        if config_map
        else f"ConfigMaps labelled {selector}"
        if selector
        else "nothing (no ConfigMap given)"
    )
    _log("INFO", f"challenge server listening on {address}:{port}, serving {serving}")
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()
