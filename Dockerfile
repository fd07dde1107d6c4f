# Two images from one Dockerfile, so the nginx that checks a configuration is
# the nginx that serves it:
#
#   docker build --target frontend -t REGISTRY/blogsite-frontend:TAG .   every site's nginx
#   docker build -t REGISTRY/blogsite-operator:TAG .                     the operator (also
#                                                                        cert-refresh)
#
# The operator image is the frontend image plus Python: its `nginx -t` runs
# the very binary, modules and OpenSSL the frontends run. FRONTEND_IMAGE
# builds the operator on an already built frontend image (what
# hack/images.sh does), so the two share nginx byte for byte even when
# Debian's mirror moved on between the two builds.
ARG FRONTEND_IMAGE=frontend

# Debian trixie's nginx 1.26 (HTTP/2, gzip, realip, stream), no third-party
# modules. Non-root (uid 65532), read-only root filesystem friendly: the
# operator mounts the configuration at /etc/blogsite/nginx, the certificate
# at /etc/blogsite/tls, and an emptyDir at /tmp for nginx's temporary files.
FROM debian:trixie-slim AS frontend
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /var/log/nginx/* /etc/nginx/sites-enabled/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin nonroot \
 && mkdir -p /etc/blogsite/nginx /etc/blogsite/tls \
 && nginx -V
# The canary weights follower, run beside nginx in each frontend pod.
COPY --chmod=0755 deploy/frontend/canary-weights /usr/local/bin/canary-weights
USER 65532:65532
EXPOSE 8080 8081 8443
# nginx's graceful stop: open connections finish, keepalives close.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-e", "stderr", "-c", "/etc/blogsite/nginx/nginx.conf", "-g", "daemon off;"]

# The operator's Python environment, built with uv from the lock file.
FROM frontend AS build
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates
# uv verifies TLS against the system's CA store (ca-certificates), not its own
# bundled roots, so a build behind a TLS-intercepting proxy works once the proxy's
# CA is in that store (hack/images.sh mounts the host's bundle there to build).
ENV UV_SYSTEM_CERTS=true
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv==0.13.8
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
RUN /opt/uv/bin/uv export --frozen --no-dev --no-emit-project -o requirements.txt \
 && /opt/uv/bin/uv venv --python /usr/bin/python3 /opt/venv \
 && VIRTUAL_ENV=/opt/venv /opt/uv/bin/uv pip install --no-cache -r requirements.txt \
 && VIRTUAL_ENV=/opt/venv /opt/uv/bin/uv pip install --no-cache --no-deps .

FROM ${FRONTEND_IMAGE} AS operator
USER root
# Debian's Python (3.13 on trixie); the operator needs >= 3.11.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Two glibc malloc arenas instead of one per thread (the operator runs 16
# reconcile workers): 245 against 254 MiB peak RSS at 1000 sites (BENCHMARKS.md).
ENV MALLOC_ARENA_MAX=2
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["blogsite-operator"]
CMD ["run"]
