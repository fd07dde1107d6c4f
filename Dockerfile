# The operator image. It also runs the cert-refresh challenge server, and
# carries nginx so the operator can `nginx -t` a configuration before rolling
# it out. Non-root, read-only root filesystem friendly.
FROM python:3.11-slim-bookworm AS build
# uv verifies TLS against the system's CA store (ca-certificates), not its own
# bundled roots, so a build behind a TLS-intercepting proxy works once the proxy's
# CA is in that store (hack/images.sh mounts the host's bundle there to build).
ENV UV_SYSTEM_CERTS=true
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
RUN uv export --frozen --no-dev --no-emit-project -o requirements.txt \
 && uv venv /opt/venv \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache -r requirements.txt \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache --no-deps .

FROM python:3.11-slim-bookworm
# A named user for uid 65532: kopf asks the password database who it runs as.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Two glibc malloc arenas instead of one per thread (the operator runs 16
# reconcile workers): 245 against 254 MiB peak RSS at 1000 sites (BENCHMARKS.md).
ENV MALLOC_ARENA_MAX=2
USER 65532:65532
ENTRYPOINT ["blogsite-operator"]
CMD ["run"]
