"""The local control plane's own processes, stopped and started again, for
tests of what the operator does when kube-apiserver or etcd goes away.

`hack/cluster.sh` runs them through kwokctl's binary runtime: one process
each, its pid in <cluster>/pids/<name>.pid, its output in
<cluster>/logs/<name>.log. A component is started again exactly as it ran
(the same argv, environment and directory, read from /proc before it was
stopped), detached the way kwokctl left it, and its new pid written back so
`cluster.sh down` stops it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import wait_for


def _alive(pid: int) -> bool:
    # Gone only once reaped: a killed process's threads may still hold its
    # sockets while its main thread already shows as a zombie.
    return Path(f"/proc/{pid}").exists()


@dataclass(frozen=True)
class Component:
    cluster_dir: Path
    name: str  # "kube-apiserver", "etcd", ...

    @property
    def pid_file(self) -> Path:
        return self.cluster_dir / "pids" / f"{self.name}.pid"

    def pid(self) -> int:
        return int(self.pid_file.read_text(encoding="ascii").strip())

    def argv(self) -> list[str]:
        raw = Path(f"/proc/{self.pid()}/cmdline").read_bytes()
        return [part.decode() for part in raw.split(b"\0")[:-1]]

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """SIGKILL the component (a crash, and no 60 s of draining watches),
        and start it again on leaving the block."""
        pid = self.pid()
        argv = self.argv()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(entry.decode().split("=", 1) for entry in environ if b"=" in entry)
        cwd = str(Path(f"/proc/{pid}/cwd").readlink())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), timeout=60, interval=0.1, what=f"{self.name} stopped")
        try:
            yield
        finally:
            self._start(argv, env, cwd)

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        # Through a shell that exits at once: the component becomes init's
        # child in a session of its own, as kwokctl left it, so neither a
        # Ctrl-C of pytest nor a zombie left with pytest outlives `down`.
        log = self.cluster_dir / "logs" / f"{self.name}.log"
        shell = subprocess.run(
            ["/bin/sh", "-c", 'setsid "$@" </dev/null >>"$0" 2>&1 & echo $!', str(log), *argv],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(shell.stdout.strip())
        self.pid_file.write_text(str(pid), encoding="ascii")
        wait_for(lambda: _alive(pid), timeout=10, what=f"{self.name} started again")


@dataclass(frozen=True)
class ControlPlane:
    cluster_dir: Path

    @property
    def apiserver(self) -> Component:
        return Component(self.cluster_dir, "kube-apiserver")

    @property
    def etcd(self) -> Component:
        return Component(self.cluster_dir, "etcd")

    def etcd_url(self) -> str:
        """The client URL kube-apiserver talks to (loopback)."""
        for arg in self.apiserver.argv():
            if found := re.fullmatch(r"--etcd-servers=(http://127\.0\.0\.1:\d+)", arg):
                return found.group(1)
        raise AssertionError("kube-apiserver has no loopback --etcd-servers")

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision, through its JSON
        gateway (there is no etcdctl here): a watch that resumes from any
        older resourceVersion is told 410 Gone. Returns the revision."""
        url = self.etcd_url()
        key = base64.b64encode(b"/registry/").decode()
        header = _post(f"{url}/v3/kv/range", {"key": key, "limit": 1})["header"]
        revision = int(header["revision"])
        _post(f"{url}/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def _post(url: str, body: dict[str, object]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
