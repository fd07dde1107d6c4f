"""`nginx -t` before rollout: an invalid configuration never reaches a pod.

The configuration is rendered for checking with local stand-ins (loopback
upstreams, a throwaway certificate, a temporary directory) in place of the
cluster's Service names and mounted Secret: nginx -t resolves upstream names
and opens certificate files, and neither exists where the operator runs. The
server blocks, the routing and the user's `extraConfig` are the same.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from blogsite_operator import certs, models
from blogsite_operator.render.nginx import NginxFacts, render_nginx_conf

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")

# Words of nginx -t failures that may pass by themselves: never remembered
# for good, only for RETRY_SECONDS.
RETRY_SECONDS = 60.0
NOT_DEFINITE = ("host not found", "could not be resolved", "timed out", "Temporary failure")

# "2026/12/05 01:01:55 [emerg] 4197#4197: " before nginx's message.
NGINX_LOG_PREFIX = re.compile(r"^\S+ \S+ (\[\w+\]) \d+#\d+: ")

# Directives that read files or run code: in a snippet they could serve the
# mounted private key, or anything else in the pod, to the internet.
FORBIDDEN_DIRECTIVES = re.compile(
    r"(?:^|[;{}\s])(alias|root|include|load_module|ssl_certificate\w*|ssl_\w*_certificate|"
    r"auth_basic_user_file|\w*_by_lua\w*|lua_\w+|perl\w*|js_\w+|env)\s",
    re.MULTILINE,
)


def snippet_problem(snippet: str) -> str | None:
    """Why a user's extraConfig is refused before nginx even sees it, or None."""
    depth = 0
    for char in snippet:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return "extraConfig closes a block it did not open ('}')"
    if depth:
        return "extraConfig leaves a block open ('{' without '}')"
    match = FORBIDDEN_DIRECTIVES.search(snippet)
    if match:
        return f"extraConfig may not use '{match.group(1)}' (it reads files or runs code)"
    return None


class NginxChecker:
    """Runs the real nginx binary; remembers verdicts by configuration hash."""

    def __init__(self, binary: str | None = None, *, allow_extra_config: bool = False) -> None:
        self.allow_extra_config = allow_extra_config
        self.binary = binary or next(
            (found for c in NGINX_CANDIDATES if (found := shutil.which(c))), None
        )
        self._verdicts: dict[str, str | None] = {}
        # Verdicts that may pass by themselves: asked again after RETRY_SECONDS.
        self._retry_after: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()
        self._workdir: Path | None = None

    def _prepare(self) -> Path:
        if self._workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="blogsite-nginx-check-"))
            cert_pem, key_pem = certs.self_signed_placeholder(["nginx-check.invalid"])
            (workdir / "tls.crt").write_bytes(cert_pem)
            (workdir / "tls.key").write_bytes(key_pem)
            self._workdir = workdir
        return self._workdir

    def check(self, spec: models.BlogSiteSpec) -> str | None:
        """None when nginx accepts the site's configuration, else nginx's own words.

        Only a configuration with user-written `extraConfig` can be invalid:
        everything else is rendered from validated fields (and property-tested
        against nginx -t), so those are not checked at run time.
        """
        snippet = spec.frontend.extra_config
        if not snippet:
            return None
        if not self.allow_extra_config:
            return (
                "frontend.extraConfig is disabled in this operator "
                "(BLOGSITE_OPERATOR_ALLOW_EXTRA_CONFIG=true enables it)"
            )
        problem = snippet_problem(snippet)
        if problem is not None:
            return problem
        with self._lock:
            workdir = self._prepare()
            conf = self._render(spec, workdir)
            key = hashlib.sha256(conf.encode()).hexdigest()
            if key in self._verdicts:
                return self._verdicts[key]
            retry = self._retry_after.get(key)
            if retry is not None and time.monotonic() < retry[0]:
                return retry[1]
            verdict, definite = self._run(conf, workdir)
            if definite:
                if len(self._verdicts) > 1024:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
                self._retry_after.pop(key, None)
            else:
                # Not every pass: a check that times out holds the lock for
                # 30 s, and every other site's check waits on it.
                if len(self._retry_after) > 1024:
                    self._retry_after.clear()
                self._retry_after[key] = (time.monotonic() + RETRY_SECONDS, verdict)
            return verdict

    def check_rendered(self, spec: models.BlogSiteSpec) -> str | None:
        """nginx -t on the site's whole configuration, extraConfig or not, with
        no gate and no memory: how the tests hold the renderer to nginx."""
        with self._lock:
            workdir = self._prepare()
            return self._run(self._render(spec, workdir), workdir)[0]

    @staticmethod
    def _render(spec: models.BlogSiteSpec, workdir: Path) -> str:
        tls = spec.tls is not None
        facts = NginxFacts(
            daedalus_upstream="127.0.0.1:1",
            challenge_upstream="127.0.0.1:1",
            tls_certificate=str(workdir / "tls.crt") if tls else None,
            tls_certificate_key=str(workdir / "tls.key") if tls else None,
            temp_dir=str(workdir),
            pid_file=str(workdir / "nginx.pid"),
        )
        return render_nginx_conf(spec, facts)

    def _run(self, conf: str, workdir: Path) -> tuple[str | None, bool]:
        """nginx's verdict, and whether it is definite: a timeout or a name
        that did not resolve (a typo, or a DNS blip) is asked again next time."""
        if self.binary is None:
            return (
                "cannot check frontend.extraConfig: nginx is not installed where the operator runs"
            ), False
        path = workdir / "nginx.conf"
        path.write_text(conf, encoding="utf-8")
        try:
            result = subprocess.run(
                [self.binary, "-t", "-q", "-e", "stderr", "-p", str(workdir), "-c", str(path)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "nginx -t did not finish within 30s", False
        if result.returncode == 0:
            return None, True
        # Without nginx's time and pid, so the same verdict reads the same.
        lines = [
            NGINX_LOG_PREFIX.sub(r"\1 ", line.replace(str(path), "nginx.conf").strip())
            for line in result.stderr.splitlines()
            if "[emerg]" in line or "[crit]" in line
        ]
        verdict = (
            "; ".join(lines) or result.stderr.strip() or f"nginx -t exited {result.returncode}"
        )
        return verdict, not any(m in result.stderr for m in NOT_DEFINITE)
