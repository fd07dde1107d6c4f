"""A real Pebble ACME server for tests: `hack/pebble.sh` as a child process.

    with running_pebble() as pebble:
        client_for(pebble.directory_url, trusting=pebble.ca_pem)

Pebble answers on fixed ports (see hack/pebble.sh), so one runs at a time.
Its DNS (pebble-challtestsrv) resolves every name to 127.0.0.1, so HTTP-01
validation connects to 127.0.0.1:PEBBLE_HTTP01_PORT (5012 for tests, see DEFAULT_ENV).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.support import wait_for, worker_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "pebble.sh"
# Pebble otherwise sleeps up to 15 s before each validation.
DEFAULT_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",
    # Ports of their own, so a `make run` Pebble (on the defaults) can keep
    # running, and one set per parallel test worker.
    "PEBBLE_PORT": str(worker_port(14010)),
    "PEBBLE_MANAGEMENT_PORT": str(worker_port(15010)),
    "PEBBLE_DNS_PORT": str(worker_port(8063)),
    "PEBBLE_CHALLTESTSRV_PORT": str(worker_port(8065)),
    "PEBBLE_HTTP01_PORT": str(worker_port(5012)),
}
# The first start may build Pebble from source (hack/build-tools.sh).
START_TIMEOUT = 600


def _port(env: dict[str, str], name: str, default: int) -> int:
    return int(env.get(name) or default)


@dataclass
class Pebble:
    """A running `hack/pebble.sh`; `stop()` and `start()` keep its env and ports."""

    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    directory_url: str = field(init=False)
    management_url: str = field(init=False)
    dns_port: int = field(init=False)
    ca_pem: bytes = field(init=False, default=b"")
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.directory_url = f"https://127.0.0.1:{_port(self.env, 'PEBBLE_PORT', 14000)}/dir"
        self.management_url = (
            f"https://127.0.0.1:{_port(self.env, 'PEBBLE_MANAGEMENT_PORT', 15000)}"
        )
        self.dns_port = _port(self.env, "PEBBLE_DNS_PORT", 8053)

    @property
    def log_path(self) -> Path:
        """The script's stdout and stderr (Pebble and challtestsrv log to stdout)."""
        return self.state_dir / "pebble.log"

    def start(self) -> None:
        """Start the script and wait until the directory answers over verified HTTPS."""
        assert self.process is None, "already running"
        self._wait_ports_free()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SCRIPT)],
                env={**os.environ, **self.env, "PEBBLE_STATE_DIR": str(self.state_dir)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        try:
            wait_for(self._ready, timeout=START_TIMEOUT, interval=0.2, what="Pebble to start")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the script's process group, SIGKILL after 5 s; wait for the ports."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        # Whatever is left, including children of a script that did not exit.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._wait_ports_free()

    def root_pem(self) -> bytes:
        """The root Pebble issues under (new on every start), from its management API."""
        return self._get(f"{self.management_url}/roots/0")

    def intermediate_pem(self) -> bytes:
        return self._get(f"{self.management_url}/intermediates/0")

    def set_renewal_info(
        self, cert_pem: bytes, window_start: datetime, window_end: datetime
    ) -> None:
        """Make Pebble's ARI answer `window_start`..`window_end` for a certificate it issued."""
        window = {"start": _rfc3339(window_start), "end": _rfc3339(window_end)}
        body = {
            "Certificate": cert_pem.decode("ascii"),
            "ARIResponse": json.dumps({"suggestedWindow": window}),
        }
        request = urllib.request.Request(
            f"{self.management_url}/set-renewal-info/",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, context=self._tls(), timeout=10):
            pass

    def resolve(self, name: str, address: str) -> None:
        """Make Pebble's DNS (challtestsrv) answer `address`, and only it, for `name`."""
        self._dns("clear-a", {"host": f"{name}."})  # add-a adds to what it answered before
        self._dns("add-a", {"host": f"{name}.", "addresses": [address]})

    def fail_to_resolve(self, name: str, failing: bool = True) -> None:
        """Make Pebble's DNS answer SERVFAIL for `name` (a resolver in trouble),
        over any record it has; with `failing=False`, answer its records again."""
        self._dns("set-servfail" if failing else "clear-servfail", {"host": f"{name}."})

    def _dns(self, path: str, body: dict[str, object]) -> None:
        port = _port(self.env, "PEBBLE_CHALLTESTSRV_PORT", 8055)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._tls(), timeout=10) as response:
            body: bytes = response.read()
        return body

    def _ready(self) -> bool:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            log = self.log_path.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(f"hack/pebble.sh exited with {code}:\n{log[-5000:]}")
        # The script writes root.pem last, once Pebble answers.
        if not (self.state_dir / "root.pem").exists():
            return False
        self.ca_pem = (self.state_dir / "pebble-ca.pem").read_bytes()
        try:
            self._get(self.directory_url)
        except OSError:
            return False
        return True

    def _wait_ports_free(self) -> None:
        tcp = [
            _port(self.env, "PEBBLE_PORT", 14000),
            _port(self.env, "PEBBLE_MANAGEMENT_PORT", 15000),
            _port(self.env, "PEBBLE_CHALLTESTSRV_PORT", 8055),
            self.dns_port,
        ]
        wait_for(
            lambda: (
                all(_free(port, socket.SOCK_STREAM) for port in tcp)
                and _free(self.dns_port, socket.SOCK_DGRAM)
            ),
            timeout=30,
            what=f"Pebble's ports {tcp} to be free",
        )


def _free(port: int, kind: socket.SocketKind) -> bool:
    """Whether a server could bind 127.0.0.1:port (Go sets SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def running_pebble(
    env: dict[str, str] | None = None, state_dir: Path | None = None
) -> Iterator[Pebble]:
    """Pebble for the duration of the block, with `env` over DEFAULT_ENV.

    State (config, pebble-ca.pem, root.pem, pebble.log) goes to `state_dir`,
    by default a temporary directory removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="blogsite-pebble-") as scratch:
        pebble = Pebble(state_dir=state_dir or Path(scratch), env={**DEFAULT_ENV, **(env or {})})
        pebble.state_dir.mkdir(parents=True, exist_ok=True)
        pebble.start()
        try:
            yield pebble
        finally:
            pebble.stop()


@dataclass
class ChallengeServer:
    """The real `challenge-server`, where Pebble's validator connects.

    In a cluster it runs in the cert-refresh pod and watches one ConfigMap
    (`config_map`); by default here it serves every site of the namespace
    (`--selector`).
    """

    kubeconfig: str
    namespace: str
    log_path: Path
    port: int = int(DEFAULT_ENV["PEBBLE_HTTP01_PORT"])
    config_map: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        source = (
            ["--configmap", self.config_map]
            if self.config_map
            else ["--selector", "blog.daedalus.dev/acme-http01-of"]
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "blogsite_operator", "challenge-server"),
                    *("--address", "127.0.0.1", "--port", str(self.port)),
                    *("--namespace", self.namespace, *source),
                    *("--kubeconfig", self.kubeconfig),
                ],
                env={**os.environ, "PYTHONPATH": str(ROOT / "operator"), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._listening, timeout=30, what="the challenge server to listen")

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"challenge-server exited:\n{self.log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
